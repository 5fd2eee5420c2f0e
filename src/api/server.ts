import { readFileSync } from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { Duplex } from "node:stream";
import type { AddressInfo } from "node:net";
import { createContextValues } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { ServiceImpl } from "@connectrpc/connect";
import { Health } from "../gen/health/v1/health_pb.js";
import { KeyPairService } from "../gen/keygate/v1/keygate_pb.js";
import { peerIdentities } from "./credentials.js";
import { peerKey } from "./keypair-service.js";

/** A duplex that yields `prefix` and then whatever `socket` receives; writes go to `socket`. */
class PrefixedStream extends Duplex {
  constructor(
    private readonly socket: net.Socket,
    prefix: Buffer,
  ) {
    super();
    this.push(prefix);
    socket.on("data", (chunk: Buffer) => {
      if (!this.push(chunk)) socket.pause();
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

const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

export interface ApiServerOptions {
  host: string;
  port: number;
  keyPairService: ServiceImpl<typeof KeyPairService>;
  health: ServiceImpl<typeof Health>;
  /** PEM file paths; with `clientCa`, client certificates are requested and mapped to tenants. */
  tls?: { cert: string; key: string; clientCa?: string | undefined } | undefined;
}

/**
 * One port for gRPC (h2c), Connect (HTTP/1.1 and h2c, JSON and binary) and gRPC-Web. Node's
 * plain-text http2 server cannot speak HTTP/1.1, so a tiny TCP front peeks at the first bytes
 * for the HTTP/2 preface and hands the socket to the matching server.
 */
export function createApiServer(opts: ApiServerOptions) {
  const handler = connectNodeAdapter({
    routes: (router) => {
      router.service(KeyPairService, opts.keyPairService);
      router.service(Health, opts.health);
    },
    contextValues: (req) => createContextValues().set(peerKey, peerIdentities(req.socket)),
  });

  const sockets = new Set<net.Socket>();
  const sessions = new Set<http2.Http2Session>();
  let front: net.Server;
  let h1: http.Server | undefined;
  let h2: http2.Http2Server | http2.Http2SecureServer;

  if (opts.tls) {
    h2 = http2.createSecureServer(
      {
        cert: readFileSync(opts.tls.cert),
        key: readFileSync(opts.tls.key),
        allowHTTP1: true,
        ...(opts.tls.clientCa
          ? { ca: readFileSync(opts.tls.clientCa), requestCert: true, rejectUnauthorized: false }
          : {}),
      },
      handler,
    );
    front = h2;
  } else {
    h1 = http.createServer(handler);
    h2 = http2.createServer({}, handler);
    const h1s = h1;
    const h2s = h2;
    front = net.createServer((socket) => {
      let seen = Buffer.alloc(0);
      const onData = (chunk: Buffer) => {
        seen = Buffer.concat([seen, chunk]);
        const n = Math.min(seen.length, H2_PREFACE.length);
        const isH2 = seen.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
        if (isH2 && seen.length < H2_PREFACE.length) return; // need more bytes to be sure
        socket.off("data", onData);
        socket.pause();
        if (isH2) {
          // http2 reads the native handle directly and would miss the bytes we already took,
          // so it gets a stream that replays them first.
          h2s.emit("connection", new PrefixedStream(socket, seen));
        } else {
          socket.unshift(seen);
          h1s.emit("connection", socket);
          socket.resume();
        }
      };
      socket.on("data", onData);
      socket.on("error", () => socket.destroy());
    });
  }
  front.on("connection", (s: net.Socket) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
  });
  h2.on("session", (session: http2.Http2Session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });

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
    },
    openConnections: () => sockets.size,
  };
}

export type ApiServer = ReturnType<typeof createApiServer>;
