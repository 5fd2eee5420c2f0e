/**
 * Issue 9, transport rows: hostile bytes sent to a real `keygate serve` child process. After every
 * attack the process is alive, health answers, its RSS stayed under RSS_BOUND_MB, nothing reached
 * the cloud (unless the row sends a call that is meant to), and the answer is the documented one.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http2 from "node:http2";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { create, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AssociateKeyPairsRequestSchema } from "../src/gen/keygate/v1/keygate_pb.js";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { withoutWarmUp } from "./support/fleet.js";
import { startEmulator } from "./support/app.js";
import {
  connectStatus,
  dataFrame,
  envelope,
  frameReader,
  grpcCall,
  grpcWebStatus,
  H2_PREFACE,
  headersFrame,
  healthCheck,
  post,
  rawExchange,
  rstFrame,
  rssMb,
  SETTINGS_EMPTY,
  watchRss,
} from "./support/hostile.js";
import { sha256 } from "./support/policies.js";
import { type Child, killStrays, serveEnv, spawnKeygate, waitListening } from "./support/process.js";
import { pollUntil } from "./support/wait.js";

const TOKEN = "token-transport-0123456789";
const POLICY = `
tenants:
  team-a:
    tokens_sha256: ["${sha256(TOKEN)}"]
    regions: [ap-guangzhou]
    instances:
      ids: [ins-gz000001, ins-gz000002]
    keys: [skey-aaaaaaaa]
`;
const PATH = "/keygate.v1.KeyPairService/AssociateKeyPairs";
/** The target: under 300 MB through every attack. */
const RSS_BOUND_MB = 300;
const DEADLINE_MS = 4_000;

let emulator: Emulator;
let dir: string;
let child: Child;
let port: number;

beforeAll(async () => {
  emulator = await startEmulator(100);
  dir = mkdtempSync(join(tmpdir(), "keygate-transport-"));
  writeFileSync(join(dir, "policy.yaml"), POLICY);
  child = spawnKeygate(
    ["serve"],
    serveEnv(join(dir, "policy.yaml"), emulator.url, {
      KEYGATE_HEADERS_TIMEOUT_MS: "1000",
      KEYGATE_IDLE_TIMEOUT_MS: "1500",
      KEYGATE_DEFAULT_DEADLINE_MS: String(DEADLINE_MS),
      KEYGATE_MAX_CONNECTIONS: "200",
      KEYGATE_MAX_STREAMS_PER_CONNECTION: "20",
    }),
  );
  port = (await waitListening(child)).api;
}, 60_000);

afterAll(async () => {
  await killStrays();
  await emulator?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const cloudCalls = () => withoutWarmUp(emulator.stats.arrivals).length;
const audits = () => child.logs().filter((l) => l.audit === true);

/** The row's common ending: alive, healthy, memory bounded, the cloud untouched (or as expected). */
async function assertSurvived(peakRss: number, cloudBefore: number, expectedCloudCalls = 0) {
  expect(child.hasExited(), `the process exited:\n${child.stderr()}`).toBe(false);
  const h = await healthCheck(port);
  expect(h.serving).toBe(true);
  expect(peakRss).toBeLessThan(RSS_BOUND_MB);
  expect(cloudCalls() - cloudBefore).toBe(expectedCloudCalls);
  console.log(`peak RSS ${peakRss.toFixed(0)} MB, health ${h.ms.toFixed(1)} ms`);
}

function request(fields: Partial<{ region: string; instanceIds: string[]; keyIds: string[] }> = {}) {
  return create(AssociateKeyPairsRequestSchema, {
    region: "ap-guangzhou",
    instanceIds: ["ins-gz000001"],
    keyIds: ["skey-aaaaaaaa"],
    ...fields,
  });
}

describe("row 1: an HTTP/1.0 request without Host", () => {
  it("gets a clean 400 and the process stays up", async () => {
    const rss = watchRss(child.pid);
    const before = cloudCalls();
    for (const path of ["/grpc.health.v1.Health/Check", PATH]) {
      const got = await rawExchange(
        port,
        `POST ${path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`,
      );
      expect(got).toMatch(/^HTTP\/1\.1 400 /);
      expect(got).toContain("a Host header is required");
    }
    await assertSurvived(rss.stop(), before);
  });
});

describe("row 5: compression bombs", () => {
  it("are refused REQUEST_TOO_LARGE once the decompressed size passes the limit, without the memory", async () => {
    const rss = watchRss(child.pid);
    const before = cloudCalls();
    // 50 MB of zeros is 49 KB of gzip: under the 64 KiB wire limit, so decompression itself must stop.
    const bomb = gzipSync(Buffer.alloc(50 * 1024 * 1024), { level: 9 });
    expect(bomb.length).toBeLessThan(65_536);
    const replies = await Promise.all([
      post(port, PATH, { "content-type": "application/json", "content-encoding": "gzip" }, bomb),
      post(port, PATH, { "content-type": "application/proto", "content-encoding": "gzip" }, bomb),
      post(
        port,
        PATH,
        { "content-type": "application/grpc-web+proto", "grpc-encoding": "gzip" },
        envelope(bomb, 1),
      ),
    ]);
    const session = http2.connect(`http://127.0.0.1:${port}`);
    const grpc = await grpcCall(session, PATH, envelope(bomb, 1), { "grpc-encoding": "gzip" });
    session.close();
    for (const s of [connectStatus(replies[0]), connectStatus(replies[1]), grpcWebStatus(replies[2]), grpc]) {
      expect(s.code).toBe("invalid_argument");
      expect(s.reason).toBe("REQUEST_TOO_LARGE");
    }
    await assertSurvived(rss.stop(), before);
  });
});

describe("row 6: very large bodies and headers", () => {
  it("are refused before parsing, and the audit line stays small", async () => {
    const rss = watchRss(child.pid);
    const before = cloudCalls();
    const huge = Buffer.alloc(50 * 1024 * 1024, "a");
    const r = await post(port, PATH, { "content-type": "application/json" }, huge).catch(() => undefined);
    // The server may answer before the upload ends and close; when it answered, it is the refusal.
    if (r) expect(connectStatus(r).reason).toBe("REQUEST_TOO_LARGE");
    // Just under the limit: thousands of ids, parsed, refused, and logged by count.
    const ids = Array.from({ length: 4_000 }, (_, i) => `ins-${String(i).padStart(8, "0")}`);
    const big = await post(
      port,
      PATH,
      { "content-type": "application/json", "x-request-id": "row6-big" },
      JSON.stringify({ region: "x".repeat(5_000), instanceIds: ids, keyIds: ["skey-aaaaaaaa"] }),
    );
    expect(connectStatus(big).code).toBe("unauthenticated");
    let line: Record<string, unknown> | undefined;
    await pollUntil(
      () => (line = audits().find((l) => l.requestId === "row6-big")) !== undefined,
      "the audit line",
    );
    expect(line?.instanceCount).toBe(4_000);
    expect((line?.instances as string[]).length).toBeLessThanOrEqual(100);
    expect(JSON.stringify(line).length).toBeLessThan(4_000);
    // Oversized headers: 431 over HTTP/1.1 (Node's parser) and HTTP/2 (keygate's check).
    const bigHeader = { "content-type": "application/json", "x-padding": "a".repeat(20_000) };
    expect((await post(port, PATH, bigHeader, "{}")).status).toBe(431);
    const session = http2.connect(`http://127.0.0.1:${port}`);
    const h2status = await new Promise<string | undefined>((resolve, reject) => {
      const q = session.request({ ":method": "POST", ":path": PATH, ...bigHeader });
      q.on("response", (h) => resolve(String(h[":status"])));
      q.on("error", reject);
      q.end("{}");
      q.resume();
    });
    session.close();
    expect(h2status).toBe("431");
    const longest = Math.max(
      ...child
        .stdout()
        .split("\n")
        .map((l) => l.length),
    );
    expect(longest).toBeLessThan(8_000);
    await assertSurvived(rss.stop(), before);
  });
});

describe("row 7: idle, slow and unfinished connections", () => {
  it("are closed: silent sockets, slow headers, a silent HTTP/2 session, a stream past its deadline", async () => {
    const rss = watchRss(child.pid);
    const before = cloudCalls();
    const closedWithin = (s: net.Socket) =>
      new Promise<number>((resolve) => {
        const t0 = Date.now();
        s.on("error", () => undefined);
        s.once("close", () => resolve(Date.now() - t0));
      });
    // Sends nothing at all.
    const silent = net.connect(port, "127.0.0.1");
    // Slowloris: one header byte every 200 ms, never the blank line.
    const slow = net.connect(port, "127.0.0.1", () => slow.write("POST / HTTP/1.1\r\nHost: x\r\n"));
    const drip = setInterval(() => slow.writable && slow.write("X"), 200);
    // The HTTP/2 preface and then silence.
    const h2silent = net.connect(port, "127.0.0.1", () =>
      h2silent.write(Buffer.concat([H2_PREFACE, SETTINGS_EMPTY])),
    );
    frameReader(h2silent);
    // A gRPC stream with a 2 s deadline that never finishes its request body (and one with none at all).
    const h2 = net.connect(port, "127.0.0.1");
    const frames = frameReader(h2);
    const head = (timeout: string | undefined): [string, string][] => [
      [":method", "POST"],
      [":scheme", "http"],
      [":path", PATH],
      [":authority", "keygate"],
      ["content-type", "application/grpc"],
      ...(timeout ? ([["grpc-timeout", timeout]] as [string, string][]) : []),
    ];
    h2.write(
      Buffer.concat([
        H2_PREFACE,
        SETTINGS_EMPTY,
        headersFrame(1, head("2S"), false),
        dataFrame(1, Buffer.from([0, 0, 0, 0, 50]), false),
        headersFrame(3, head(undefined), false),
      ]),
    );
    const times = await Promise.all([closedWithin(silent), closedWithin(slow), closedWithin(h2silent)]);
    clearInterval(drip);
    // Bounds are generous (the limits are 1-1.5 s here); the point is that they end at all.
    for (const ms of times) expect(ms).toBeLessThan(10_000);
    await pollUntil(() => frames.resets.has(1) || frames.headersSeen.has(1), "the 2 s stream to end", 10_000);
    await pollUntil(
      () => frames.resets.has(3) || frames.headersSeen.has(3),
      `the stream without a deadline to end at the ${DEADLINE_MS} ms cap`,
      15_000,
    );
    h2.destroy();
    await assertSurvived(rss.stop(), before);
  }, 30_000);

  it("caps open connections (KEYGATE_MAX_CONNECTIONS) and serves again once they go", async () => {
    const rss = watchRss(child.pid);
    const before = cloudCalls();
    const socks = await Promise.all(
      Array.from(
        { length: 260 },
        () =>
          new Promise<{ s: net.Socket; closed: () => boolean }>((resolve) => {
            const s = net.connect(port, "127.0.0.1");
            let closed = false;
            s.on("error", () => undefined);
            s.once("close", () => (closed = true));
            s.once("connect", () => resolve({ s, closed: () => closed }));
            s.once("close", () => resolve({ s, closed: () => true }));
          }),
      ),
    );
    await pollUntil(
      () => socks.filter((x) => x.closed()).length >= 60,
      "connections over the cap to be dropped",
      10_000,
    );
    for (const x of socks) x.s.destroy();
    await pollUntil(
      async () => (await healthCheck(port).catch(() => ({ serving: false }))).serving,
      "health again",
    );
    await assertSurvived(rss.stop(), before);
  });
});

describe("row 11: malformed binary protobuf", () => {
  it("is INVALID_ARGUMENT MALFORMED_REQUEST with an audit line, over Connect, gRPC and gRPC-Web", async () => {
    const rss = watchRss(child.pid);
    const before = cloudCalls();
    const garbage = Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x12]);
    const c = await post(
      port,
      PATH,
      { "content-type": "application/proto", "x-request-id": "row11-connect" },
      garbage,
    );
    const w = await post(
      port,
      PATH,
      { "content-type": "application/grpc-web+proto", "x-request-id": "row11-web" },
      envelope(garbage),
    );
    const session = http2.connect(`http://127.0.0.1:${port}`);
    const g = await grpcCall(session, PATH, envelope(garbage), { "x-request-id": "row11-grpc" });
    session.close();
    expect(c.status).toBe(400);
    for (const s of [connectStatus(c), grpcWebStatus(w), g]) {
      expect(s.code).toBe("invalid_argument");
      expect(s.reason).toBe("MALFORMED_REQUEST");
    }
    for (const id of ["row11-connect", "row11-web", "row11-grpc"]) {
      await pollUntil(
        () =>
          audits().some(
            (l) => l.requestId === id && l.reason === "MALFORMED_REQUEST" && l.decision === "denied",
          ),
        `the audit line of ${id}`,
      );
    }
    await assertSurvived(rss.stop(), before);
  });
});

describe("row 13: a rapid-reset flood", () => {
  it("cuts the abusing connections and health stays fast for others", async () => {
    const rss = watchRss(child.pid);
    const before = cloudCalls();
    const latencies: number[] = [];
    let flooding = true;
    const prober = (async () => {
      while (flooding) {
        const h = await healthCheck(port);
        expect(h.serving).toBe(true);
        latencies.push(h.ms);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const head: [string, string][] = [
      [":method", "POST"],
      [":scheme", "http"],
      [":path", "/grpc.health.v1.Health/Check"],
      [":authority", "keygate"],
      ["content-type", "application/grpc"],
    ];
    const TOTAL = 20_000;
    const PER_CONNECTION = 1_000;
    let sent = 0;
    let cut = 0;
    let connections = 0;
    while (sent < TOTAL) {
      connections++;
      const s = net.connect(port, "127.0.0.1");
      s.on("error", () => undefined);
      let closed = false;
      const gone = new Promise<void>((r) => s.once("close", () => r()));
      s.once("close", () => (closed = true));
      await new Promise<void>((r) => s.once("connect", () => r()));
      s.resume(); // read what the server sends, so its writes never block its reads
      s.write(Buffer.concat([H2_PREFACE, SETTINGS_EMPTY]));
      for (let id = 1, n = 0; n < PER_CONNECTION && !closed; n += 100) {
        const batch: Buffer[] = [];
        for (let i = 0; i < 100; i++, id += 2) batch.push(headersFrame(id, head, false), rstFrame(id));
        s.write(Buffer.concat(batch));
        sent += 100;
        await new Promise((r) => setTimeout(r, 2));
      }
      // The server cuts a connection that resets this fast; one that it did not cut is ended here.
      await Promise.race([gone, new Promise((r) => setTimeout(r, 2_000))]);
      if (closed) cut++;
      s.destroy();
    }
    flooding = false;
    await prober;
    latencies.sort((a, b) => a - b);
    const p50 = latencies[Math.floor(latencies.length / 2)] ?? 0;
    const max = latencies.at(-1) ?? 0;
    console.log(
      `rapid reset: ${TOTAL} streams, ${cut} of ${connections} connections cut, health p50 ${p50.toFixed(1)} ms, max ${max.toFixed(1)} ms`,
    );
    expect(cut).toBe(connections);
    // The target (< 50 ms) is a benchmark figure; on a shared 2-core CI box only a hang guard is asserted.
    expect(p50).toBeLessThan(500);
    await assertSurvived(rss.stop(), before);
  }, 60_000);
});

describe("row 14: duplicate Authorization, scheme case, unknown JSON fields", () => {
  it("refuses two authorization headers (HTTP/1.1 and HTTP/2) with UNAUTHENTICATED", async () => {
    const rss = watchRss(child.pid);
    const before = cloudCalls();
    const body = JSON.stringify({
      region: "ap-guangzhou",
      instanceIds: ["ins-gz000001"],
      keyIds: ["skey-aaaaaaaa"],
    });
    const got = await rawExchange(
      port,
      `POST ${PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n` +
        `Authorization: Bearer ${TOKEN}\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
    );
    expect(got).toMatch(/^HTTP\/1\.1 401 /);
    expect(got).toContain('"code":"unauthenticated"');
    // HTTP/2, hand-made frames (Node's client will not send a header twice); Connect JSON so the answer is readable.
    const s = net.connect(port, "127.0.0.1");
    const frames = frameReader(s);
    s.write(
      Buffer.concat([
        H2_PREFACE,
        SETTINGS_EMPTY,
        headersFrame(
          1,
          [
            [":method", "POST"],
            [":scheme", "http"],
            [":path", PATH],
            [":authority", "keygate"],
            ["content-type", "application/json"],
            ["authorization", `Bearer ${TOKEN}`],
            ["authorization", `Bearer ${TOKEN}`],
          ],
          false,
        ),
        dataFrame(1, Buffer.from(body), true),
      ]),
    );
    await pollUntil(() => (frames.data.get(1)?.length ?? 0) > 0, "the HTTP/2 answer");
    await pollUntil(
      () => (frames.data.get(1) ?? Buffer.alloc(0)).toString().includes("}"),
      "the whole answer",
    );
    expect(frames.data.get(1)?.toString()).toContain('"code":"unauthenticated"');
    s.destroy();
    await assertSurvived(rss.stop(), before);
  });

  it("accepts the scheme in any case and refuses an unknown JSON field by name", async () => {
    const rss = watchRss(child.pid);
    const before = cloudCalls();
    // ap-shanghai is outside the tenant's regions: PERMISSION_DENIED proves the token was accepted.
    const denied = JSON.stringify({
      region: "ap-shanghai",
      instanceIds: ["ins-sh000001"],
      keyIds: ["skey-aaaaaaaa"],
    });
    for (const scheme of ["bearer", "BEARER", "Bearer"]) {
      const r = await post(
        port,
        PATH,
        { "content-type": "application/json", authorization: `${scheme} ${TOKEN}` },
        denied,
      );
      expect(connectStatus(r).code).toBe("permission_denied");
    }
    const misspelt = await post(
      port,
      PATH,
      { "content-type": "application/json", authorization: `Bearer ${TOKEN}`, "x-request-id": "row14-field" },
      JSON.stringify({
        region: "ap-guangzhou",
        instanceIds: ["ins-gz000001"],
        keyIds: ["skey-aaaaaaaa"],
        idempotencyKEY: "k1",
      }),
    );
    const s = connectStatus(misspelt);
    expect(s.code).toBe("invalid_argument");
    expect(s.reason).toBe("MALFORMED_REQUEST");
    expect(s.message).toContain('"idempotencyKEY"');
    await pollUntil(() => audits().some((l) => l.requestId === "row14-field"), "the audit line");
    await assertSurvived(rss.stop(), before);
  });
});

describe("row 10: deadlines above 2^31-1 ms", () => {
  it("are clamped to the cap instead of cancelling the call at once", async () => {
    const rss = watchRss(child.pid);
    const before = cloudCalls();
    const body = JSON.stringify({
      region: "ap-guangzhou",
      instanceIds: ["ins-gz000001"],
      keyIds: ["skey-aaaaaaaa"],
    });
    const r = await post(
      port,
      PATH,
      {
        "content-type": "application/json",
        authorization: `Bearer ${TOKEN}`,
        "connect-timeout-ms": "2147483648",
      },
      body,
    );
    expect(connectStatus(r).code).toBe("ok");
    const session = http2.connect(`http://127.0.0.1:${port}`);
    const g = await grpcCall(
      session,
      PATH,
      envelope(toBinary(AssociateKeyPairsRequestSchema, request({ instanceIds: ["ins-gz000002"] }))),
      { authorization: `Bearer ${TOKEN}`, "grpc-timeout": "597H" },
    );
    session.close();
    expect(g.code).toBe("ok");
    // Exactly the two calls that were sent, nothing else (the row runs last: the task watches
    // that follow these calls poll DescribeInstances in the background).
    expect(
      emulator.stats.arrivals.slice(before).filter((a) => a.action === "AssociateInstancesKeyPairs"),
    ).toHaveLength(2);
    expect(child.hasExited()).toBe(false);
    expect((await healthCheck(port)).serving).toBe(true);
    expect(rss.stop()).toBeLessThan(RSS_BOUND_MB);
  });
});

describe("after every row", () => {
  it("memory is still bounded, and no request ever failed inside keygate", () => {
    expect(rssMb(child.pid)).toBeLessThan(RSS_BOUND_MB);
    const failures = child
      .logs()
      .filter((l) => l.msg === "request handler failed" || String(l.msg).includes("(a bug)"));
    expect(failures).toEqual([]);
    expect(child.stderr()).toBe("");
  });
});
