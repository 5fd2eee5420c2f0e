/**
 * Issue 9, transport rows 7 and 13 when keygate terminates TLS: the front is then Node's TLS
 * server, not the plain-text peeking front, so its timeouts and the rapid-reset cut take other
 * paths (handshake timeout, Node's HTTP/1.1 tracking, the session-level reset count).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import https from "node:https";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tls from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { withoutWarmUp } from "./support/fleet.js";
import { startEmulator } from "./support/app.js";
import { H2_PREFACE, headersFrame, rstFrame, SETTINGS_EMPTY, watchRss } from "./support/hostile.js";
import { sha256 } from "./support/policies.js";
import { selfSignedCertificate } from "./support/tls.js";
import { type Child, killStrays, serveEnv, spawnKeygate, waitListening } from "./support/process.js";
import { pollUntil } from "./support/wait.js";

const RSS_BOUND_MB = 300;
let emulator: Emulator;
let dir: string;
let child: Child;
let port: number;
let ca: Buffer;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "keygate-transport-tls-"));
  selfSignedCertificate(dir, "server", "localhost", "IP:127.0.0.1");
  ca = readFileSync(join(dir, "server.crt"));
  writeFileSync(
    join(dir, "policy.yaml"),
    `tenants:\n  t:\n    tokens_sha256: ["${sha256("unused-token-0123456789")}"]\n    regions: [ap-guangzhou]\n    instances: { ids: [ins-gz000001] }\n    keys: [skey-aaaaaaaa]\n`,
  );
  emulator = await startEmulator(100);
  child = spawnKeygate(
    ["serve"],
    serveEnv(join(dir, "policy.yaml"), emulator.url, {
      KEYGATE_TLS_CERT: join(dir, "server.crt"),
      KEYGATE_TLS_KEY: join(dir, "server.key"),
      KEYGATE_HEADERS_TIMEOUT_MS: "1000",
      KEYGATE_IDLE_TIMEOUT_MS: "1500",
    }),
  );
  port = (await waitListening(child)).api;
}, 60_000);

afterAll(async () => {
  await killStrays();
  await emulator?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function healthy(): Promise<boolean> {
  return new Promise((resolve) => {
    const req = https.request(
      {
        host: "127.0.0.1",
        port,
        path: "/grpc.health.v1.Health/Check",
        method: "POST",
        ca,
        agent: false,
        headers: { "content-type": "application/json" },
      },
      (res) => {
        let body = "";
        res.on("data", (d: Buffer) => (body += d.toString()));
        res.on("end", () => resolve(res.statusCode === 200 && body.includes("SERVING")));
      },
    );
    req.on("error", () => resolve(false));
    req.end("{}");
  });
}

const closed = (s: net.Socket) =>
  new Promise<number>((resolve) => {
    const t0 = Date.now();
    s.on("error", () => undefined);
    s.once("close", () => resolve(Date.now() - t0));
  });

describe("with TLS terminated in keygate", () => {
  it("closes connections that never handshake, never finish their headers, or stay silent over HTTP/2", async () => {
    const rss = watchRss(child.pid);
    const raw = net.connect(port, "127.0.0.1");
    const slow = tls.connect({ host: "127.0.0.1", port, ca, ALPNProtocols: ["http/1.1"] }, () =>
      slow.write("POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: x\r\n"),
    );
    const drip = setInterval(() => slow.writable && slow.write("X"), 200);
    const h2 = tls.connect({ host: "127.0.0.1", port, ca, ALPNProtocols: ["h2"] }, () =>
      h2.write(Buffer.concat([H2_PREFACE, SETTINGS_EMPTY])),
    );
    h2.resume();
    const times = await Promise.all([closed(raw), closed(slow), closed(h2)]);
    clearInterval(drip);
    for (const ms of times) expect(ms).toBeLessThan(10_000);
    expect(child.hasExited()).toBe(false);
    expect(await healthy()).toBe(true);
    expect(rss.stop()).toBeLessThan(RSS_BOUND_MB);
  }, 30_000);

  it("cuts an HTTP/2 connection that resets streams in a flood", async () => {
    const rss = watchRss(child.pid);
    const s = tls.connect({ host: "127.0.0.1", port, ca, ALPNProtocols: ["h2"] });
    s.resume();
    const gone = closed(s);
    await new Promise<void>((r) => s.once("secureConnect", () => r()));
    const head: [string, string][] = [
      [":method", "POST"],
      [":scheme", "https"],
      [":path", "/grpc.health.v1.Health/Check"],
      [":authority", "keygate"],
      ["content-type", "application/grpc"],
    ];
    s.write(Buffer.concat([H2_PREFACE, SETTINGS_EMPTY]));
    let sent = 0;
    for (let id = 1; sent < 5_000 && !s.destroyed; sent += 100) {
      const batch: Buffer[] = [];
      for (let i = 0; i < 100; i++, id += 2) batch.push(headersFrame(id, head, false), rstFrame(id));
      s.write(Buffer.concat(batch));
      await new Promise((r) => setTimeout(r, 2));
    }
    // The session-level count sees resets only as nghttp2 reports them, after it has read what was
    // buffered: the cut comes later than on the plain-text front (a generous bound for busy CI).
    await Promise.race([gone, new Promise((r) => setTimeout(r, 20_000))]);
    expect(s.destroyed || s.readableEnded).toBe(true);
    await pollUntil(
      () => child.logs().some((l) => String(l.msg).includes("too many reset streams")),
      "the warning log line",
    );
    s.destroy();
    expect(child.hasExited()).toBe(false);
    expect(await healthy()).toBe(true);
    expect(rss.stop()).toBeLessThan(RSS_BOUND_MB);
    expect(withoutWarmUp(emulator.stats.arrivals)).toHaveLength(0);
  }, 45_000);
});
