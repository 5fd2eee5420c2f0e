import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { freePort } from "./redis-server.js";
import { launch, stopper, type RedisTopology } from "./redis-topologies.js";
import { pollUntil } from "./wait.js";

/** A private CA and a server certificate it signed for 127.0.0.1 / localhost, written to `dir`. */
export function makeCertificates(dir: string): { ca: string; cert: string; key: string } {
  const f = (name: string) => join(dir, name);
  const ssl = (args: string[]) => execFileSync("openssl", args, { stdio: "ignore", cwd: dir });
  ssl(
    ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f("ca.key"), "-out", f("ca.crt")].concat([
      "-days",
      "2",
      "-subj",
      "/CN=keygate test CA",
    ]),
  );
  ssl(
    ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", f("server.key"), "-out", f("server.csr")].concat([
      "-subj",
      "/CN=localhost",
    ]),
  );
  writeFileSync(f("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  ssl(
    [
      "x509",
      "-req",
      "-in",
      f("server.csr"),
      "-CA",
      f("ca.crt"),
      "-CAkey",
      f("ca.key"),
      "-CAcreateserial",
    ].concat(["-out", f("server.crt"), "-days", "2", "-extfile", f("san.ext")]),
  );
  return { ca: f("ca.crt"), cert: f("server.crt"), key: f("server.key") };
}

/** Waits until a TLS-only redis (or Sentinel) on `port` answers PING over TLS trusting `ca`. */
export async function waitForTlsRedis(port: number, ca: string, timeoutMs = 10_000): Promise<void> {
  const caPem = readFileSync(ca);
  await pollUntil(
    async () => {
      const c = new Redis({
        port,
        host: "127.0.0.1",
        tls: { ca: caPem },
        lazyConnect: true,
        maxRetriesPerRequest: 0,
        retryStrategy: () => null,
      });
      c.on("error", () => undefined);
      try {
        await c.connect();
        return (await c.ping()) === "PONG";
      } catch {
        return false;
      } finally {
        c.disconnect();
      }
    },
    `TLS redis on ${port}`,
    timeoutMs,
  );
}

/** The TLS flags of a redis-server that listens on TLS only (`port 0`). */
function tlsArgs(tlsPort: number, certs: { ca: string; cert: string; key: string }): string[] {
  return [
    "--port",
    "0",
    "--tls-port",
    String(tlsPort),
    "--bind",
    "127.0.0.1",
    "--tls-cert-file",
    certs.cert,
    "--tls-key-file",
    certs.key,
    "--tls-ca-cert-file",
    certs.ca,
    "--tls-auth-clients",
    "no",
    "--save",
    "",
    "--appendonly",
    "no",
  ];
}

export interface TlsRedis extends RedisTopology {
  ca: string;
  /** The master's TLS port. */
  port: number;
}

/** One redis-server reachable only over TLS; `url` is rediss://127.0.0.1:PORT. */
export async function startTlsRedis(): Promise<TlsRedis> {
  const dir = mkdtempSync(join(tmpdir(), "keygate-redis-tls-"));
  const certs = makeCertificates(dir);
  const port = await freePort();
  const pids = [launch(tlsArgs(port, certs), dir)];
  const stop = stopper(pids, dir);
  await waitForTlsRedis(port, certs.ca).catch(async (e: unknown) => {
    await stop();
    throw e;
  });
  return { url: `rediss://127.0.0.1:${port}`, ca: certs.ca, port, stop };
}

/** A TLS-only master watched by a TLS-only Sentinel (quorum 1); `url` is rediss+sentinel://. */
export async function startTlsSentinel(): Promise<TlsRedis> {
  const dir = mkdtempSync(join(tmpdir(), "keygate-sentinel-tls-"));
  const certs = makeCertificates(dir);
  const master = await freePort();
  const sentinel = await freePort();
  const pids = [launch(tlsArgs(master, certs), dir)];
  const stop = stopper(pids, dir);
  try {
    await waitForTlsRedis(master, certs.ca);
    const conf = join(dir, "sentinel.conf");
    writeFileSync(
      conf,
      [
        "port 0",
        `tls-port ${sentinel}`,
        "bind 127.0.0.1",
        `dir ${dir}`,
        `tls-cert-file ${certs.cert}`,
        `tls-key-file ${certs.key}`,
        `tls-ca-cert-file ${certs.ca}`,
        "tls-auth-clients no",
        // Sentinel's own connections to the master use TLS too.
        "tls-replication yes",
        `sentinel monitor mymaster 127.0.0.1 ${master} 1`,
        "sentinel down-after-milliseconds mymaster 5000",
        "",
      ].join("\n"),
    );
    pids.push(launch([conf, "--sentinel"], dir));
    await waitForTlsRedis(sentinel, certs.ca);
  } catch (e) {
    await stop();
    throw e;
  }
  return { url: `rediss+sentinel://127.0.0.1:${sentinel}/mymaster`, ca: certs.ca, port: master, stop };
}
