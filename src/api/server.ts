import { readFileSync } from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { Duplex } from "node:stream";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, createConnectRouter, createContextValues } from "@connectrpc/connect";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  compressionBrotli,
  compressionGzip,
  universalRequestFromNodeRequest,
  universalResponseToNodeResponse,
} from "@connectrpc/connect-node";
import type { UniversalHandler } from "@connectrpc/connect/protocol";
import type { AuditEntry } from "../core/ports.js";
import { ServerReflection as ServerReflectionV1 } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { Health } from "../gen/health/v1/health_pb.js";
import { ErrorDetailSchema, KeyPairService } from "../gen/keygate/v1/keygate_pb.js";
import { createCors } from "./cors.js";
import { peerIdentities } from "./credentials.js";
import { createReflection } from "./reflection.js";
import { clampDeadline } from "./deadline.js";
import { peerKey, type RequestInfo, requestIdFrom, requestInfoKey } from "./keypair-service.js";
import { errorResponse, printable, protocolOf, reclassify, rewriteStatus } from "./refusals.js";

/**
 * A duplex that yields `prefix` and then whatever `socket` receives; writes go to `socket`.
 * `admit` sees every chunk first; when it says no, the socket is cut before http2 parses it.
 */
class PrefixedStream extends Duplex {
  constructor(
    private readonly socket: net.Socket,
    prefix: Buffer,
    admit: (chunk: Buffer) => boolean,
  ) {
    super();
    if (!admit(prefix)) {
      socket.destroy();
      return;
    }
    this.push(prefix);
    socket.on("data", (chunk: Buffer) => {
      if (!admit(chunk)) socket.destroy();
      else if (!this.push(chunk)) socket.pause();
    });
    socket.once("end", () => this.push(null));
    socket.once("close", () => this.destroy());
    socket.once("error", (err) => this.destroy(err));
  }
  override _read(): void {
    this.socket.resume();
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.socket.write(chunk, cb);
  }
  override _final(cb: () => void): void {
    this.socket.end(cb);
  }
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.socket.destroy(err ?? undefined);
    cb(err);
  }
  get remoteAddress(): string | undefined {
    return this.socket.remoteAddress;
  }
  get remotePort(): number | undefined {
    return this.socket.remotePort;
  }
}

/**
 * Counts the RST_STREAM frames a client sends by reading only frame headers (9 bytes each) as
 * they pass, so a rapid-reset flood is cut before nghttp2 and the handlers spend work on it.
 */
export class ResetMeter {
  private skip: number;
  private head: Buffer = Buffer.alloc(0);
  private windowStart = 0;
  private resets = 0;
  constructor(
    private readonly perSecond: number,
    private readonly now: () => number = Date.now,
    prefaceBytes = H2_PREFACE.length,
  ) {
    this.skip = prefaceBytes;
  }
  /** False once more than `perSecond` resets arrived within one second. */
  admit(chunk: Buffer): boolean {
    let o = 0;
    while (o < chunk.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - o);
        this.skip -= n;
        o += n;
        continue;
      }
      const take = chunk.subarray(o, o + 9 - this.head.length);
      o += take.length;
      this.head = this.head.length === 0 ? take : Buffer.concat([this.head, take]);
      if (this.head.length < 9) break;
      this.skip = this.head.readUIntBE(0, 3);
      const isReset = this.head[3] === 0x3;
      this.head = Buffer.alloc(0);
      if (isReset && !this.count()) return false;
    }
    return true;
  }
  private count(): boolean {
    const t = this.now();
    if (t - this.windowStart >= 1_000) {
      this.windowStart = t;
      this.resets = 0;
    }
    return ++this.resets <= this.perSecond;
  }
}

const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
/** A stream still open this long after its deadline is ended by the server. */
const DEADLINE_GRACE_MS = 1_000;
/** Peer-reset streams one HTTP/2 connection may cause per second before it is cut (rapid reset). */
const MAX_RESETS_PER_SECOND = 200;

export interface TransportLimits {
  maxRequestBytes: number;
  maxHeaderBytes: number;
  maxConnections: number;
  maxStreamsPerConnection: number;
  idleTimeoutMs: number;
  headersTimeoutMs: number;
}

export interface TransportLog {
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface ApiServerOptions {
  host: string;
  port: number;
  keyPairService: ServiceImpl<typeof KeyPairService>;
  health: ServiceImpl<typeof Health>;
  /** PEM file paths; with `clientCa`, client certificates are requested and mapped to tenants. */
  tls?: { cert: string; key: string; clientCa?: string | undefined } | undefined;
  limits: TransportLimits;
  /** Caller deadlines above this are lowered to it; calls without one get it. */
  maxDeadlineMs: number;
  /** Browser origins allowed to call (KEYGATE_CORS_ORIGINS); empty or absent = CORS off. */
  corsOrigins?: readonly string[] | undefined;
  /** One line for each AssociateKeyPairs call refused before keygate's handler saw it. */
  audit?: ((entry: AuditEntry) => void) | undefined;
  log?: TransportLog | undefined;
}

type NodeRequest = http.IncomingMessage | http2.Http2ServerRequest;
type NodeResponse = http.ServerResponse | http2.Http2ServerResponse;

/**
 * One port for gRPC (h2c), Connect (HTTP/1.1 and h2c, JSON and binary) and gRPC-Web. Node's
 * plain-text http2 server cannot speak HTTP/1.1, so a tiny TCP front peeks at the first bytes
 * for the HTTP/2 preface and hands the socket to the matching server. Every limit on the port
 * is applied here, before a request is parsed (docs/decisions.md, "Limits on the API port").
 */
export function createApiServer(opts: ApiServerOptions) {
  const L = opts.limits;
  const router = createConnectRouter({
    readMaxBytes: L.maxRequestBytes,
    acceptCompression: [compressionGzip, compressionBrotli],
    jsonOptions: { ignoreUnknownFields: false },
  });
  router.service(KeyPairService, opts.keyPairService);
  router.service(Health, opts.health);
  const reflection = createReflection([KeyPairService, Health]);
  router.service(ServerReflectionV1, reflection.v1);
  router.service(ServerReflectionV1alpha, reflection.v1alpha);
  const routes = new Map<string, UniversalHandler>(router.handlers.map((h) => [h.requestPath, h]));
  const cors = createCors(opts.corsOrigins ?? []);

  const handler = (req: NodeRequest, res: NodeResponse): void => {
    try {
      serve(req, res);
    } catch (err) {
      fail(err, req, res);
    }
  };

  function serve(req: NodeRequest, res: NodeResponse): void {
    // Streams already buffered from a connection that was cut: no work for them at all.
    if ("stream" in req && (req.stream.session?.destroyed ?? true)) {
      req.stream.destroy();
      return;
    }
    const started = Date.now();
    // One id per request, echoed to the caller on every answer (refusals too) and in the audit line.
    const given = req.headers["x-request-id"];
    const requestId = requestIdFrom(typeof given === "string" ? given : null);
    res.setHeader("x-request-id", requestId);
    // HTTP/1.0 may omit Host; the adapter cannot build a URL without one (and used to throw).
    const authority = "authority" in req ? req.authority : req.headers.host;
    if (!authority) return plain(res, 400, "a Host header is required\n");
    // Node enforces maxHeaderSize on HTTP/1.1, but over HTTP/2 only its own 64 KiB default.
    if ("stream" in req && headerListSize(req.rawHeaders) > L.maxHeaderBytes)
      return plain(res, 431, "request headers too large\n");
    const uHandler = routes.get((req.url ?? "").split("?", 1)[0] ?? "");
    if (!uHandler) return plain(res, 404, "");
    const origin = req.headers.origin;
    const requested = req.headers["access-control-request-method"];
    const corsAnswer = cors.check(req.method, origin, typeof requested === "string" ? requested : undefined);
    if (corsAnswer?.kind === "refused") return plain(res, corsAnswer.status, corsAnswer.text);
    if (corsAnswer?.kind === "preflight") {
      res.writeHead(corsAnswer.status, { ...corsAnswer.headers, "content-length": "0" });
      res.end();
      return;
    }
    if (corsAnswer) for (const [k, v] of Object.entries(corsAnswer.headers)) res.setHeader(k, v);

    const deadlineMs = clampDeadline(req.headers, opts.maxDeadlineMs);
    const overdue = setTimeout(() => endStream(req, res), deadlineMs + DEADLINE_GRACE_MS);
    res.once("close", () => clearTimeout(overdue));

    const info: RequestInfo = {
      reached: false,
      authorizationHeaders: countHeader(req.rawHeaders, "authorization"),
      requestId,
    };
    const protocol = protocolOf(req.headers["content-type"]);
    const isDecision = uHandler.service.typeName === KeyPairService.typeName;
    const uReq = universalRequestFromNodeRequest(
      req,
      res,
      undefined,
      createContextValues().set(peerKey, peerIdentities(req.socket)).set(requestInfoKey, info),
    );
    uHandler(uReq)
      .then((uRes) =>
        rewriteStatus(uRes, protocol, {
          replace: (err) => (info.reached ? undefined : reclassify(err, L.maxRequestBytes)),
          done: (sent, original) => {
            if (!isDecision || info.reached || !sent) return;
            opts.audit?.(refusedEntry(requestId, sent, original, Date.now() - started));
          },
        }),
      )
      .catch((err: unknown) => errorResponse(protocol, unexpected(err, req)))
      .then((uRes) => universalResponseToNodeResponse(uRes, res))
      .catch((err: unknown) => {
        // Writing failed. When the client went away (or the stream was ended at its deadline)
        // that is expected and not worth a line each (a reset flood would flood the log too).
        const gone = "stream" in req ? req.stream.destroyed : req.socket.destroyed;
        if (!res.writableEnded) endStream(req, res);
        const code = ConnectError.from(err).code;
        if (!gone && code !== Code.Aborted && code !== Code.Canceled) unexpected(err, req);
      });
  }

  /** Logs an error that escaped the adapter with its cause; the caller gets a bare INTERNAL. */
  function unexpected(err: unknown, req: NodeRequest): ConnectError {
    opts.log?.error(
      {
        err: err instanceof Error ? err.message : String(err),
        stack: (err as Error)?.stack,
        path: printable(req.url ?? "", 100),
      },
      "request handler failed",
    );
    return new ConnectError("internal error", Code.Internal);
  }

  function fail(err: unknown, req: NodeRequest, res: NodeResponse): void {
    unexpected(err, req);
    try {
      if (!res.headersSent) plain(res, 500, "internal error\n");
      else endStream(req, res);
    } catch {
      endStream(req, res);
    }
  }

  const sockets = new Set<net.Socket>();
  const sessions = new Set<http2.Http2Session>();
  let front: net.Server;
  let h1: http.Server | undefined;
  let h2: http2.Http2Server | http2.Http2SecureServer;
  const h2Options: http2.ServerOptions = {
    settings: { maxConcurrentStreams: L.maxStreamsPerConnection, maxHeaderListSize: L.maxHeaderBytes },
    maxSessionRejectedStreams: 100,
    maxSessionInvalidFrames: 100,
  };

  if (opts.tls) {
    h2 = http2.createSecureServer(
      {
        ...h2Options,
        cert: readFileSync(opts.tls.cert),
        key: readFileSync(opts.tls.key),
        allowHTTP1: true,
        handshakeTimeout: L.headersTimeoutMs,
        ...(opts.tls.clientCa
          ? { ca: readFileSync(opts.tls.clientCa), requestCert: true, rejectUnauthorized: false }
          : {}),
      },
      handler,
    );
    // HTTP/1.1 over TLS (allowHTTP1) is tracked by Node like a plain http.Server: same timeouts.
    Object.assign(h2, {
      headersTimeout: L.headersTimeoutMs,
      requestTimeout: L.headersTimeoutMs * 2,
      keepAliveTimeout: L.idleTimeoutMs,
      connectionsCheckingInterval: Math.min(1_000, L.headersTimeoutMs / 2),
    });
    front = h2;
  } else {
    h1 = http.createServer(
      {
        maxHeaderSize: L.maxHeaderBytes,
        headersTimeout: L.headersTimeoutMs,
        requestTimeout: L.headersTimeoutMs * 2,
        keepAliveTimeout: L.idleTimeoutMs,
        connectionsCheckingInterval: Math.min(1_000, L.headersTimeoutMs / 2),
      },
      handler,
    );
    // Node checks header and request timeouts only on a server that emitted "listening"; this one
    // never listens itself (the front hands it sockets), so start those checks by hand.
    h1.emit("listening");
    h2 = http2.createServer(h2Options, handler);
    const h1s = h1;
    const h2s = h2;
    front = net.createServer((socket) => {
      let seen = Buffer.alloc(0);
      // A connection that never sends its first bytes.
      socket.setTimeout(L.headersTimeoutMs, () => socket.destroy());
      const onData = (chunk: Buffer) => {
        seen = Buffer.concat([seen, chunk]);
        const n = Math.min(seen.length, H2_PREFACE.length);
        const isH2 = seen.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
        if (isH2 && seen.length < H2_PREFACE.length) return; // need more bytes to be sure
        socket.off("data", onData);
        socket.setTimeout(0);
        socket.pause();
        if (isH2) {
          // http2 reads the native handle directly and would miss the bytes we already took,
          // so it gets a stream that replays them first.
          const meter = new ResetMeter(MAX_RESETS_PER_SECOND);
          const admit = (chunk: Buffer) => {
            if (meter.admit(chunk)) return true;
            opts.log?.warn(
              { limit: MAX_RESETS_PER_SECOND },
              "HTTP/2 connection cut: too many reset streams per second",
            );
            return false;
          };
          h2s.emit("connection", new PrefixedStream(socket, seen, admit));
        } else {
          socket.unshift(seen);
          h1s.emit("connection", socket);
          socket.resume();
        }
      };
      socket.on("data", onData);
    });
  }
  front.maxConnections = L.maxConnections;
  let lastDropLog = 0;
  front.on("drop", () => {
    if (Date.now() - lastDropLog < 10_000) return;
    lastDropLog = Date.now();
    opts.log?.warn(
      { maxConnections: L.maxConnections },
      "connection refused: KEYGATE_MAX_CONNECTIONS reached",
    );
  });
  front.on("connection", (s: net.Socket) => {
    sockets.add(s);
    s.on("error", () => s.destroy());
    s.once("close", () => sockets.delete(s));
  });
  h2.on("session", (session: http2.Http2Session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    guardSession(session);
  });

  /**
   * Closes a session that holds no stream for the idle timeout (a connection that sends nothing,
   * or never completes a header block), and cuts one that resets streams faster than any client
   * would (rapid reset): the handler work each reset stream costs is what slowed everyone else.
   */
  function guardSession(session: http2.Http2Session): void {
    session.on("error", () => session.destroy());
    let active = 0;
    let idle: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(idle);
      idle = setTimeout(() => {
        // GOAWAY first, so a client that is about to send knows to reconnect; cut if it lingers.
        session.close();
        setTimeout(() => session.destroy(), 1_000).unref();
      }, L.idleTimeoutMs);
    };
    arm();
    let windowStart = Date.now();
    let resets = 0;
    session.on("stream", (stream: http2.ServerHttp2Stream) => {
      active++;
      clearTimeout(idle);
      stream.on("error", () => undefined);
      stream.once("close", () => {
        if (--active === 0 && !session.destroyed) arm();
        if (stream.rstCode === http2.constants.NGHTTP2_NO_ERROR || session.destroyed) return;
        const now = Date.now();
        if (now - windowStart > 1_000) {
          windowStart = now;
          resets = 0;
        }
        if (++resets > MAX_RESETS_PER_SECOND) {
          opts.log?.warn({ resets }, "HTTP/2 connection cut: too many reset streams per second");
          session.goaway(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
          session.destroy();
        }
      });
    });
    session.once("close", () => clearTimeout(idle));
  }

  return {
    async listen(): Promise<AddressInfo> {
      await new Promise<void>((resolve, reject) => {
        front.once("error", reject);
        front.listen(opts.port, opts.host, () => {
          front.off("error", reject);
          resolve();
        });
      });
      return front.address() as AddressInfo;
    },
    address: () => front.address() as AddressInfo,
    /** Stops accepting connections and asks clients to go away once their calls finish. */
    stopAccepting(): Promise<void> {
      const closed = new Promise<void>((resolve) => front.close(() => resolve()));
      for (const s of sessions) if (!s.closed) s.close();
      h1?.closeIdleConnections();
      return closed;
    },
    /** Waits (at most `ms`) for the connections to close by themselves after `stopAccepting`. */
    async settle(ms: number): Promise<void> {
      const until = Date.now() + ms;
      while (sockets.size > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    },
    /** Cuts whatever is still open. */
    destroy(): void {
      for (const s of sessions) s.destroy();
      for (const s of sockets) s.destroy();
      h1?.closeAllConnections();
      h1?.close();
    },
    openConnections: () => sockets.size,
  };
}

/** Ends one call without an answer: its deadline passed or its handler failed mid-response. */
function endStream(req: NodeRequest, res: NodeResponse): void {
  if ("stream" in req) {
    if (!req.stream.destroyed) req.stream.close(http2.constants.NGHTTP2_CANCEL);
  } else {
    res.destroy();
    req.socket.destroy();
  }
}

function plain(res: NodeResponse, status: number, text: string): void {
  const headers = { "content-type": "text/plain", "content-length": String(Buffer.byteLength(text)) };
  if (res instanceof http.ServerResponse) res.setHeader("connection", "close");
  res.writeHead(status, headers);
  res.end(text);
}

/** The HTTP/2 header list size as SETTINGS_MAX_HEADER_LIST_SIZE counts it (RFC 9113, 6.5.2). */
function headerListSize(raw: string[]): number {
  let n = 0;
  for (const part of raw) n += part.length;
  return n + (raw.length / 2) * 32;
}

function countHeader(raw: string[], name: string): number {
  let n = 0;
  for (let i = 0; i < raw.length; i += 2) if (raw[i]?.toLowerCase() === name) n++;
  return n;
}

function refusedEntry(
  requestId: string,
  sent: ConnectError,
  original: ConnectError | undefined,
  durationMs: number,
): AuditEntry {
  const reason = sent.findDetails(ErrorDetailSchema)[0]?.reason;
  return {
    requestId,
    tenant: undefined,
    region: "",
    instances: [],
    keys: [],
    forceStop: false,
    decision: "denied",
    rule: "request",
    reason: reason ?? Code[sent.code],
    error: printable((original ?? sent).rawMessage, 200),
    deduplicated: false,
    limiterWaitMs: 0,
    leaseWaitMs: 0,
    attempts: 0,
    durationMs,
  };
}
