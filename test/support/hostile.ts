/**
 * Raw clients for the hostile-input tests: bytes on a socket (HTTP/1.x), hand-made HTTP/2 frames
 * (duplicate headers and reset floods that Node's own client refuses to produce), and the three
 * RPC protocols with their status read back from the wire.
 */
import { readFileSync } from "node:fs";
import http from "node:http";
import type http2 from "node:http2";
import net from "node:net";

/** Resident memory of a process in MB, from /proc. */
export function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) / 1024;
}

/** Samples a process's RSS every 50 ms until stopped; returns the peak. */
export function watchRss(pid: number): { stop(): number } {
  let peak = rssMb(pid);
  const t = setInterval(() => {
    try {
      peak = Math.max(peak, rssMb(pid));
    } catch {
      /* exited: the test's own liveness assertion reports it */
    }
  }, 50);
  return {
    stop() {
      clearInterval(t);
      return peak;
    },
  };
}

/** Sends `bytes` on a fresh TCP connection; resolves with everything received until the server closes (or `waitMs`). */
export function rawExchange(port: number, bytes: Buffer | string, waitMs = 5_000): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    let got = "";
    const t = setTimeout(() => s.destroy(), waitMs);
    s.on("data", (d: Buffer) => (got += d.toString("latin1")));
    s.on("error", () => undefined);
    s.on("close", () => {
      clearTimeout(t);
      resolve(got);
    });
    s.write(bytes);
  });
}

/** Connect JSON health check over HTTP/1.1: ms taken and whether it said SERVING. */
export async function healthCheck(port: number): Promise<{ ms: number; serving: boolean }> {
  const t0 = performance.now();
  const res = await post(port, "/grpc.health.v1.Health/Check", { "content-type": "application/json" }, "{}");
  return { ms: performance.now() - t0, serving: res.status === 200 && res.body.includes('"SERVING"') };
}

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  raw: Buffer;
}

/** One HTTP/1.1 POST on its own connection. */
export function post(
  port: number,
  path: string,
  headers: http.OutgoingHttpHeaders,
  body: Buffer | string,
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port, path, method: "POST", headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const raw = Buffer.concat(chunks);
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: raw.toString("utf8"), raw });
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

/** A gRPC / gRPC-Web length-prefixed message. */
export function envelope(payload: Uint8Array, flags = 0): Buffer {
  const head = Buffer.alloc(5);
  head[0] = flags;
  head.writeUInt32BE(payload.length, 1);
  return Buffer.concat([head, payload]);
}

/** The status of a call as any protocol reports it, in Connect's lower-case code names. */
export interface CallStatus {
  /** "ok", "invalid_argument", ... or `http_<status>` when the answer is not an RPC answer. */
  code: string;
  reason: string | undefined;
  message: string;
  httpStatus: number;
}

const GRPC_CODES = [
  "ok",
  "canceled",
  "unknown",
  "invalid_argument",
  "deadline_exceeded",
  "not_found",
  "already_exists",
  "permission_denied",
  "resource_exhausted",
  "failed_precondition",
  "aborted",
  "out_of_range",
  "unimplemented",
  "internal",
  "unavailable",
  "data_loss",
  "unauthenticated",
];

/** A Connect unary answer (JSON error body or 200). */
export function connectStatus(r: Reply): CallStatus {
  if (r.status === 200) return { code: "ok", reason: undefined, message: "", httpStatus: 200 };
  try {
    const j = JSON.parse(r.body) as {
      code?: string;
      message?: string;
      details?: { debug?: { reason?: string } }[];
    };
    return {
      code: j.code ?? `http_${r.status}`,
      reason: j.details?.[0]?.debug?.reason,
      message: j.message ?? "",
      httpStatus: r.status,
    };
  } catch {
    return {
      code: `http_${r.status}`,
      reason: undefined,
      message: r.body.slice(0, 200),
      httpStatus: r.status,
    };
  }
}

function statusFromTrailer(get: (k: string) => string | undefined, httpStatus: number): CallStatus {
  const s = get("grpc-status");
  if (s === undefined) return { code: `http_${httpStatus}`, reason: undefined, message: "", httpStatus };
  const details = get("grpc-status-details-bin");
  // The ErrorDetail's reason is the first printable run after its type URL: enough for tests.
  const reason = details
    ? /keygate\.v1\.ErrorDetail.{2,6}?([A-Z][A-Z_.]+[A-Z])/s.exec(
        Buffer.from(details, "base64").toString("latin1"),
      )?.[1]
    : undefined;
  return {
    code: GRPC_CODES[Number(s)] ?? `grpc_${s}`,
    reason,
    message: decodeURIComponent(get("grpc-message") ?? ""),
    httpStatus,
  };
}

/** A gRPC-Web answer: the trailer envelope at the end of the body (or headers for trailers-only). */
export function grpcWebStatus(r: Reply): CallStatus {
  let o = 0;
  while (o + 5 <= r.raw.length) {
    const flags = r.raw[o] ?? 0;
    const len = r.raw.readUInt32BE(o + 1);
    if ((flags & 0x80) !== 0) {
      const text = r.raw.subarray(o + 5, o + 5 + len).toString("latin1");
      const map = new Map<string, string>();
      for (const line of text.split("\r\n")) {
        const i = line.indexOf(":");
        if (i > 0) map.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim());
      }
      return statusFromTrailer((k) => map.get(k), r.status);
    }
    o += 5 + len;
  }
  return statusFromTrailer((k) => {
    const v = r.headers[k];
    return Array.isArray(v) ? v[0] : v;
  }, r.status);
}

/** One gRPC call over an HTTP/2 session, reading the status from trailers (or trailers-only headers). */
export function grpcCall(
  session: http2.ClientHttp2Session,
  path: string,
  body: Buffer,
  headers: http2.OutgoingHttpHeaders = {},
): Promise<CallStatus> {
  return new Promise((resolve, reject) => {
    const req = session.request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc+proto",
      te: "trailers",
      ...headers,
    });
    let head: http2.IncomingHttpHeaders = {};
    let status = 0;
    req.on("response", (h) => {
      head = h;
      status = Number(h[":status"]);
    });
    req.on("trailers", (t: http2.IncomingHttpHeaders) => {
      head = { ...head, ...t };
    });
    req.on("data", () => undefined);
    req.on("end", () => {
      resolve(
        statusFromTrailer((k) => {
          const v = head[k];
          return Array.isArray(v) ? v[0] : v;
        }, status),
      );
    });
    req.on("error", reject);
    req.end(body);
  });
}

// --- hand-made HTTP/2 ----------------------------------------------------------------------

export const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

export function frame(
  type: number,
  flags: number,
  streamId: number,
  payload: Buffer = Buffer.alloc(0),
): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(streamId & 0x7fffffff, 5);
  return Buffer.concat([h, payload]);
}

/** HPACK literal without indexing, new name; no Huffman (names and values under 127 bytes). */
function literal(name: string, value: string): Buffer {
  const n = Buffer.from(name);
  const v = Buffer.from(value);
  if (n.length > 126 || v.length > 126) throw new Error("header too long for this encoder");
  return Buffer.concat([Buffer.from([0x00, n.length]), n, Buffer.from([v.length]), v]);
}

/** A HEADERS frame (END_HEADERS) carrying `headers` in order, duplicates allowed. */
export function headersFrame(streamId: number, headers: [string, string][], endStream: boolean): Buffer {
  const block = Buffer.concat(headers.map(([k, v]) => literal(k, v)));
  return frame(0x1, 0x4 | (endStream ? 0x1 : 0), streamId, block);
}

export function dataFrame(streamId: number, data: Buffer, endStream: boolean): Buffer {
  return frame(0x0, endStream ? 0x1 : 0, streamId, data);
}

export function rstFrame(streamId: number, code = 0x8): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(code);
  return frame(0x3, 0, streamId, p);
}

export const SETTINGS_EMPTY = frame(0x4, 0, 0);
export const SETTINGS_ACK = frame(0x4, 0x1, 0);

/**
 * Reads frames from a raw HTTP/2 connection and collects what it needs: headers are not decoded
 * (HPACK), so only DATA payloads, RST_STREAM and GOAWAY are reported.
 */
export function frameReader(socket: net.Socket): {
  data: Map<number, Buffer>;
  headersSeen: Set<number>;
  resets: Map<number, number>;
  goaway: () => number | undefined;
} {
  let buf = Buffer.alloc(0);
  const data = new Map<number, Buffer>();
  const headersSeen = new Set<number>();
  const resets = new Map<number, number>();
  let goaway: number | undefined;
  socket.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 9) {
      const len = buf.readUIntBE(0, 3);
      if (buf.length < 9 + len) break;
      const type = buf[3];
      const flags = buf[4] ?? 0;
      const id = buf.readUInt32BE(5) & 0x7fffffff;
      const payload = buf.subarray(9, 9 + len);
      if (type === 0x0) data.set(id, Buffer.concat([data.get(id) ?? Buffer.alloc(0), payload]));
      if (type === 0x1) headersSeen.add(id);
      if (type === 0x3) resets.set(id, payload.readUInt32BE(0));
      if (type === 0x7) goaway = payload.readUInt32BE(4);
      if (type === 0x4 && (flags & 0x1) === 0) socket.write(SETTINGS_ACK);
      buf = buf.subarray(9 + len);
    }
  });
  return { data, headersSeen, resets, goaway: () => goaway };
}
