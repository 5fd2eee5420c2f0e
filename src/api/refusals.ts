/**
 * Answers the Connect adapter gives before keygate's own handler runs (undecodable bytes, a body
 * over the size limit, unknown JSON fields). The adapter reports a binary decode failure as
 * INTERNAL and a size overrun as RESOURCE_EXHAUSTED, with no ErrorDetail; keygate answers
 * INVALID_ARGUMENT with a reason instead, in the wire format of the caller's protocol.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { encodeEnvelope, type UniversalServerResponse } from "@connectrpc/connect/protocol";
import {
  codeFromHttpStatus,
  codeToHttpStatus,
  endStreamFlag,
  endStreamFromJson,
  endStreamToJson,
  errorFromJsonBytes,
  errorToJsonBytes,
} from "@connectrpc/connect/protocol-connect";
import { findTrailerError, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { trailerFlag, trailerParse, trailerSerialize } from "@connectrpc/connect/protocol-grpc-web";
import { errorDetail } from "./error-mapping.js";

export type Protocol = "connect" | "connect-stream" | "grpc" | "grpc-web";

export function protocolOf(contentType: string | undefined): Protocol {
  const ct = (contentType ?? "").toLowerCase();
  if (ct.startsWith("application/grpc-web")) return "grpc-web";
  if (ct.startsWith("application/grpc")) return "grpc";
  if (ct.startsWith("application/connect+")) return "connect-stream";
  return "connect";
}

/** Caller input quoted in a message: short and printable. */
export function printable(s: string, max = 160): string {
  const clean = s.replace(/[^\x20-\x7e]/g, "?");
  return clean.length > max ? `${clean.slice(0, max)}…` : clean;
}

/**
 * What an adapter error becomes when keygate's handler never saw the request; undefined keeps it
 * (e.g. UNIMPLEMENTED for an unknown compression, DEADLINE_EXCEEDED).
 */
export function reclassify(err: ConnectError, maxRequestBytes: number): ConnectError | undefined {
  switch (err.code) {
    case Code.ResourceExhausted:
      return refusal(
        "REQUEST_TOO_LARGE",
        `the request message is larger than ${maxRequestBytes} bytes (as sent or decompressed)`,
        err,
      );
    case Code.Internal:
    case Code.InvalidArgument:
    case Code.Unknown:
      return refusal("MALFORMED_REQUEST", `malformed request: ${printable(err.rawMessage)}`, err);
    case Code.Unimplemented:
      // No message, or two, for a unary method; an unsupported encoding stays UNIMPLEMENTED (the
      // protocols say so, and clients fall back on it).
      return err.rawMessage.startsWith("protocol error:")
        ? refusal("MALFORMED_REQUEST", `malformed request: ${printable(err.rawMessage)}`, err)
        : undefined;
    default:
      return undefined;
  }
}

function refusal(reason: string, message: string, cause: ConnectError): ConnectError {
  return new ConnectError(message, Code.InvalidArgument, undefined, [errorDetail(reason)], cause);
}

/** The final status of a call: undefined when OK. */
type Final = ConnectError | undefined;

export interface RewriteHooks {
  /** A replacement for an error status, or undefined to send it as is. */
  replace(err: ConnectError): ConnectError | undefined;
  /** Called once when the response is complete: the status sent, and the one the adapter made. */
  done(sent: Final, original: Final): void;
}

/** Wraps a response so error statuses pass through `hooks.replace`, whatever the protocol. */
export async function rewriteStatus(
  res: UniversalServerResponse,
  protocol: Protocol,
  hooks: RewriteHooks,
): Promise<UniversalServerResponse> {
  if (protocol === "connect") return rewriteUnary(res, hooks);
  if (!res.body) {
    hooks.done(undefined, undefined);
    return res;
  }
  let sent: Final;
  let original: Final;
  const swap = (err: ConnectError) => {
    original = err;
    sent = hooks.replace(err) ?? err;
    return sent === err ? undefined : sent;
  };
  const body = res.body;
  const trailer = res.trailer;
  async function* wrapped(): AsyncGenerator<Uint8Array> {
    let finished = false;
    try {
      for await (const chunk of body) {
        yield protocol === "grpc" ? chunk : rewriteEnvelopes(chunk, protocol, swap);
      }
      finished = true;
      if (protocol === "grpc" && trailer) {
        const err = findTrailerError(trailer);
        const next = err ? swap(err) : undefined;
        if (next) {
          for (const h of ["grpc-status", "grpc-message", "grpc-status-details-bin"]) trailer.delete(h);
          setTrailerStatus(trailer, next);
        }
        respellGrpcMessage(trailer);
      }
    } finally {
      hooks.done(
        finished ? sent : (sent ?? new ConnectError("response not completed", Code.Canceled)),
        original,
      );
    }
  }
  return { ...res, body: wrapped() };
}

async function rewriteUnary(
  res: UniversalServerResponse,
  hooks: RewriteHooks,
): Promise<UniversalServerResponse> {
  if (res.status === 200) {
    hooks.done(undefined, undefined);
    return res;
  }
  const header = res.header ?? new Headers();
  const isJson = (header.get("content-type") ?? "").startsWith("application/json");
  const bytes = await readAll(res.body);
  const fallback = new ConnectError(`HTTP ${res.status}`, codeFromHttpStatus(res.status));
  const original =
    isJson && !header.has("content-encoding") ? errorFromJsonBytes(bytes, undefined, fallback) : fallback;
  const replaced = hooks.replace(original);
  hooks.done(replaced ?? original, original);
  if (!replaced) return { ...res, body: single(bytes) };
  const out = errorToJsonBytes(replaced, {});
  const h = new Headers(header);
  h.set("content-type", "application/json");
  h.delete("content-encoding");
  h.set("content-length", String(out.byteLength));
  return { status: codeToHttpStatus(replaced.code), header: h, body: single(out) };
}

/** Rewrites the end-of-stream envelope (gRPC-Web trailers, Connect end-stream) inside a chunk. */
function rewriteEnvelopes(
  chunk: Uint8Array,
  protocol: Protocol,
  swap: (err: ConnectError) => ConnectError | undefined,
): Uint8Array {
  const endFlag = protocol === "grpc-web" ? trailerFlag : endStreamFlag;
  const parts: Uint8Array[] = [];
  let changed = false;
  let o = 0;
  while (o + 5 <= chunk.length) {
    const flags = chunk[o] ?? 0;
    const len = new DataView(chunk.buffer, chunk.byteOffset + o + 1, 4).getUint32(0);
    if (o + 5 + len > chunk.length) return chunk; // not a whole envelope: leave it alone
    const data = chunk.subarray(o + 5, o + 5 + len);
    let part = chunk.subarray(o, o + 5 + len);
    if ((flags & endFlag) === endFlag && (flags & 1) === 0) {
      const next = protocol === "grpc-web" ? webTrailer(data, swap) : connectEnd(data, swap);
      if (next) {
        part = encodeEnvelope(flags, next);
        changed = true;
      }
    }
    parts.push(part);
    o += 5 + len;
  }
  if (!changed || o !== chunk.length) return chunk;
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function webTrailer(data: Uint8Array, swap: (err: ConnectError) => ConnectError | undefined) {
  const err = findTrailerError(trailerParse(data));
  const next = err ? swap(err) : undefined;
  return next ? trailerSerialize(setTrailerStatus(new Headers(), next)) : undefined;
}

function connectEnd(data: Uint8Array, swap: (err: ConnectError) => ConnectError | undefined) {
  const end = endStreamFromJson(data);
  const next = end.error ? swap(end.error) : undefined;
  return next ? new TextEncoder().encode(JSON.stringify(endStreamToJson(end.metadata, next, {}))) : undefined;
}

/**
 * Re-encodes `grpc-message` the way the gRPC HTTP/2 spec asks: only bytes outside printable
 * ASCII, and `%` itself, are percent-encoded. The adapter encodes like encodeURIComponent
 * (`:` becomes `%3A`), and grpc-js decodes with decodeURI, which leaves `%3A` as it is, so
 * its callers saw escaped messages (docs/decisions/clients.md, "grpc-message spelling").
 */
export function respellGrpcMessage(trailer: Headers): Headers {
  const sent = trailer.get("grpc-message");
  if (sent === null) return trailer;
  let text: string;
  try {
    text = decodeURIComponent(sent);
  } catch {
    return trailer;
  }
  trailer.set("grpc-message", grpcPercentEncode(text));
  return trailer;
}

/** The spec's Percent-Encoded form of `text`: UTF-8 bytes 0x20..0x7E except `%` stay as they are. */
export function grpcPercentEncode(text: string): string {
  let out = "";
  for (const byte of new TextEncoder().encode(text)) {
    out +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x25
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** An error answer in the caller's protocol, for failures that happen outside the adapter. */
export function errorResponse(protocol: Protocol, err: ConnectError): UniversalServerResponse {
  if (protocol === "grpc") {
    return {
      status: 200,
      header: new Headers({ "content-type": "application/grpc" }),
      trailer: respellGrpcMessage(setTrailerStatus(new Headers(), err)),
      body: single(new Uint8Array(0)),
    };
  }
  if (protocol === "grpc-web") {
    const trailer = trailerSerialize(setTrailerStatus(new Headers(), err));
    return {
      status: 200,
      header: new Headers({ "content-type": "application/grpc-web+proto" }),
      body: single(encodeEnvelope(trailerFlag, trailer)),
    };
  }
  if (protocol === "connect-stream") {
    const end = new TextEncoder().encode(JSON.stringify(endStreamToJson(new Headers(), err, {})));
    return {
      status: 200,
      header: new Headers({ "content-type": "application/connect+json" }),
      body: single(encodeEnvelope(endStreamFlag, end)),
    };
  }
  const body = errorToJsonBytes(err, {});
  return {
    status: codeToHttpStatus(err.code),
    header: new Headers({ "content-type": "application/json", "content-length": String(body.byteLength) }),
    body: single(body),
  };
}

async function readAll(body: AsyncIterable<Uint8Array> | undefined): Promise<Uint8Array> {
  if (!body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  for await (const c of body) chunks.push(c);
  return Buffer.concat(chunks);
}

async function* single(bytes: Uint8Array): AsyncGenerator<Uint8Array> {
  await Promise.resolve();
  yield bytes;
}
