/**
 * Graceful drain of a real `keygate serve` process on SIGTERM: the call in flight is answered,
 * readiness turns NOT_SERVING, new connections are refused, callers still queued for a token get
 * UNAVAILABLE/SHUTTING_DOWN before the process exits, and the exit code is 0.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../src/gen/health/v1/health_pb.js";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { startEmulator } from "./support/app.js";
import { sha256 } from "./support/policies.js";
import { killStrays, serveEnv, spawnKeygate, waitListening } from "./support/process.js";
import { pollUntil } from "./support/wait.js";
import { freePort, startRedis } from "./support/redis-server.js";

const TOKEN = "ops-drain-token-0123456789";
/** Ids only, no tags: no DescribeInstances lookups before the call, so only the call itself is slow. */
const POLICY = `
tenants:
  ops:
    tokens_sha256: ["${sha256(TOKEN)}"]
    regions: [ap-guangzhou, ap-shanghai]
    instances: "*"
    keys: "*"
    force_stop: true
    weight: 1
`;
const auth = { authorization: `Bearer ${TOKEN}` };

let emulator: Emulator;
let dir: string;
let policyFile: string;

beforeAll(async () => {
  emulator = await startEmulator(100);
  dir = mkdtempSync(join(tmpdir(), "keygate-ops-drain-"));
  policyFile = join(dir, "policy.yaml");
  writeFileSync(policyFile, POLICY);
});
afterEach(async () => {
  emulator.faults.reset();
  await killStrays();
});
afterAll(async () => {
  await emulator?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function serve(extra: Record<string, string>) {
  const [port, metricsPort] = [await freePort(), await freePort()];
  const child = spawnKeygate(
    ["serve"],
    serveEnv(policyFile, emulator.url, {
      KEYGATE_PORT: String(port),
      KEYGATE_METRICS_PORT: String(metricsPort),
      ...extra,
    }),
  );
  const ports = await waitListening(child);
  expect(ports.api).toBe(port);
  return { child, url: `http://127.0.0.1:${port}`, port };
}

const associateArrivals = (from: number) =>
  emulator.stats.arrivals.slice(from).filter((a) => a.action === "AssociateInstancesKeyPairs");

/** Resolves with the error a TCP connect gets (or "connected"). */
function tryConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve("connected");
    });
    s.once("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

describe("SIGTERM drains keygate serve", () => {
  it("finishes the call in flight, turns NOT_SERVING, refuses new connections, exits 0 within KEYGATE_DRAIN_MS", async () => {
    const drainMs = 5_000;
    const { child, url, port } = await serve({ KEYGATE_DRAIN_MS: String(drainMs) });
    const transport = createGrpcTransport({ baseUrl: url });

    // Readiness stream opened before the signal: it lives on an existing HTTP/2 connection.
    const health = createClient(Health, transport);
    const seen: Status[] = [];
    const watchAbort = new AbortController();
    const watching = (async () => {
      for await (const r of health.watch({ service: "" }, { signal: watchAbort.signal })) seen.push(r.status);
    })().catch(() => undefined);
    await pollUntil(() => seen.includes(Status.SERVING), "Watch reports SERVING");

    // A call that stays in flight for ~2 s at the cloud.
    const mark = emulator.stats.arrivals.length;
    emulator.faults.set({ latencyMs: 2_000 });
    const client = createClient(KeyPairService, transport);
    const inflight = client.associateKeyPairs(
      { region: "ap-guangzhou", instanceIds: ["ins-gz000001"], keyIds: ["skey-aaaaaaaa"] },
      { headers: auth, timeoutMs: 30_000 },
    );
    await pollUntil(() => associateArrivals(mark).length === 1, "the call to reach the emulator");
    // The arrival's delay is already fixed; later requests (task polling) are fast again.
    emulator.faults.reset();

    const signalledAt = Date.now();
    child.signal("SIGTERM");

    await pollUntil(() => seen.includes(Status.NOT_SERVING), "Watch reports NOT_SERVING", 10_000);
    await pollUntil(
      async () => (await tryConnect(port)) === "ECONNREFUSED",
      "new connections to be refused",
      10_000,
    );
    // A new call from a fresh client cannot get in either.
    const late = createClient(KeyPairService, createGrpcTransport({ baseUrl: url }));
    const refused = await late
      .associateKeyPairs(
        { region: "ap-guangzhou", instanceIds: ["ins-gz000002"], keyIds: ["skey-aaaaaaaa"] },
        { headers: auth, timeoutMs: 5_000 },
      )
      .then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
    expect(refused?.code).toBe(Code.Unavailable);

    // The call that was in flight when the signal came is answered normally.
    const res = await inflight;
    expect(res.requestId).toBe(associateArrivals(mark)[0]?.requestId);
    expect(child.hasExited()).toBe(false);

    const exit = await child.exited;
    const tookMs = Date.now() - signalledAt;
    watchAbort.abort();
    await watching;
    expect(exit).toEqual({ code: 0, signal: null });
    // The drain budget bounds the whole shutdown; the margin covers process teardown only.
    expect(tookMs).toBeLessThan(drainMs + 2_000);

    const logs = child.logs();
    const msgs = logs.map((l) => l.msg);
    expect(msgs).toEqual(expect.arrayContaining(["shutting down", "draining", "stopped"]));
    const audit = logs.find((l) => l.audit === true);
    expect(audit).toMatchObject({ decision: "allowed", upstreamRequestId: res.requestId });
    // The Watch stream saw the change, in order (NOT_SERVING may come first too: ready means warm).
    expect(seen.indexOf(Status.SERVING)).toBeLessThan(seen.lastIndexOf(Status.NOT_SERVING));
    expect(seen.at(-1)).toBe(Status.NOT_SERVING);
  });

  it("answers callers still queued for a token UNAVAILABLE/SHUTTING_DOWN before the process exits", async () => {
    // One cloud call per request (KEYGATE_BATCH=off): with merging, the first calls would carry
    // every waiting request and nobody would still be queued for a token.
    const { child, url } = await serve({
      KEYGATE_RATE_LIMIT: "1",
      KEYGATE_DRAIN_MS: "3000",
      KEYGATE_BATCH: "off",
    });
    const client = createClient(KeyPairService, createGrpcTransport({ baseUrl: url }));
    // Distinct instances, so leases never serialise them: only the 1/s limiter makes them queue.
    const targets: [string, string][] = [
      ["ap-guangzhou", "ins-gz000001"],
      ["ap-guangzhou", "ins-gz000002"],
      ["ap-guangzhou", "ins-gz000003"],
      ["ap-guangzhou", "ins-gz000008"],
      ["ap-shanghai", "ins-sh000001"],
      ["ap-shanghai", "ins-sh000002"],
      ["ap-guangzhou", "ins-gz000004"],
      ["ap-shanghai", "ins-sh000003"],
    ];
    const mark = emulator.stats.arrivals.length;
    const answers: { ok: boolean; code?: Code; reason?: string }[] = [];
    const calls = targets.map(([region, id]) =>
      client
        .associateKeyPairs(
          { region, instanceIds: [id], keyIds: ["skey-aaaaaaaa"], forceStop: true },
          { headers: auth, timeoutMs: 30_000 },
        )
        .then(
          () => answers.push({ ok: true }),
          (e: unknown) => {
            const err = ConnectError.from(e);
            answers.push({
              ok: false,
              code: err.code,
              reason: err.findDetails(ErrorDetailSchema)[0]?.reason,
            });
          },
        ),
    );
    await pollUntil(() => associateArrivals(mark).length >= 1, "the first call to reach the emulator");
    child.signal("SIGTERM");
    const exit = await child.exited;
    await Promise.all(calls);

    expect(exit).toEqual({ code: 0, signal: null });
    // Exactly one answer per call. A refusal carrying keygate's ErrorDetail was written by the
    // server itself: a call cut off by the exit would only see a reset connection, with no detail.
    expect(answers).toHaveLength(targets.length);
    const refused = answers.filter((a) => !a.ok);
    expect(refused.length).toBeGreaterThan(0);
    for (const r of refused) expect(r).toMatchObject({ code: Code.Unavailable, reason: "SHUTTING_DOWN" });
    // Those refused never reached the cloud; every upstream call was answered OK.
    expect(associateArrivals(mark)).toHaveLength(targets.length - refused.length);
    expect(answers.filter((a) => a.ok)).toHaveLength(associateArrivals(mark).length);
    // And each refusal is an audit line.
    const audits = child.logs().filter((l) => l.audit === true);
    expect(audits.filter((l) => l.reason === "SHUTTING_DOWN")).toHaveLength(refused.length);
  });
});

describe("SIGTERM ends with the work, not the timer", () => {
  it("a draining replica releases its instance when the task ends, another replica's caller gets through, and it exits early", async () => {
    const taskMs = 1_500;
    const drainMs = 20_000;
    const redis = await startRedis();
    const slow = await startEmulator(taskMs);
    try {
      const env = (extra: Record<string, string>) =>
        serveEnv(policyFile, slow.url, {
          KEYGATE_REDIS_URL: redis.url,
          KEYGATE_DRAIN_MS: String(drainMs),
          ...extra,
        });
      const start = async () => {
        const [port, metricsPort] = [await freePort(), await freePort()];
        const child = spawnKeygate(
          ["serve"],
          env({ KEYGATE_PORT: String(port), KEYGATE_METRICS_PORT: String(metricsPort) }),
        );
        await waitListening(child);
        return {
          child,
          client: createClient(KeyPairService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` })),
        };
      };
      const [victim, other] = await Promise.all([start(), start()]);
      const req = { region: "ap-guangzhou", instanceIds: ["ins-gz000001"], keyIds: ["skey-aaaaaaaa"] };

      // The answer comes at once; the victim keeps the instance leased until the cloud task ends.
      const first = await victim.client.associateKeyPairs(req, { headers: auth, timeoutMs: 30_000 });
      const firstArrival = slow.stats.arrivals.find((a) => a.requestId === first.requestId);
      expect(firstArrival).toBeDefined();
      const taskEnd = (firstArrival?.at ?? 0) + taskMs;

      const signalledAt = Date.now();
      victim.child.signal("SIGTERM");
      // Same instance via the other replica: it must wait for the lease, then go through.
      const second = await other.client.associateKeyPairs(
        { ...req, keyIds: ["skey-bbbbbbbb"] },
        { headers: auth, timeoutMs: 30_000 },
      );
      const answeredAt = Date.now();
      const exit = await victim.child.exited;
      const exitedAt = Date.now();
      const secondArrival = slow.stats.arrivals.find((a) => a.requestId === second.requestId);
      console.log(
        `ops-drain: task ended ${taskEnd - signalledAt} ms after SIGTERM; other caller answered ${answeredAt - taskEnd} ms ` +
          `after the task end; victim exited ${exitedAt - signalledAt} ms after SIGTERM (KEYGATE_DRAIN_MS ${drainMs})`,
      );
      expect(exit).toEqual({ code: 0, signal: null });
      // Never on a busy instance (G3): sent only once the first task had ended.
      expect(secondArrival?.at ?? 0).toBeGreaterThanOrEqual(taskEnd);
      expect(slow.stats.perInstance()["ins-gz000001"]?.mutexAnswers ?? 0).toBe(0);
      // Released at the task end plus a poll, not at the drain timer (before: 19.9 s).
      expect(answeredAt - taskEnd).toBeLessThan(4_000);
      expect(exitedAt - signalledAt).toBeLessThan(drainMs / 2);
      other.child.signal("SIGTERM");
      await other.child.exited;
    } finally {
      await slow.close();
      await redis.stop();
    }
  });
});
