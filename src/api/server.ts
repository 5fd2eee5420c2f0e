import { readFileSync } from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { AddressInfo } from "node:net";
import { createContextValues } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { ServiceImpl } from "@connectrpc/connect";
import { Health } from "../gen/health/v1/health_pb.js";
import { KeyPairService } from "../gen/keygate/v1/keygate_pb.js";
import { peerIdentities } from "./credentials.js";
import { peerKey } from "./keypair-service.js";

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
    front = h2 as unknown as net.Server;
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
        socket.unshift(seen);
        (isH2 ? h2s : h1s).emit("connection", socket);
        socket.resume();
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
