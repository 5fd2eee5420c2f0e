/**
 * The send path against a cloud that applies but does not answer (lost, late, stalled replies),
 * that keeps saying busy, and a replica SIGKILLed right after its send: exactly one apply, the
 * caller told OK with the applied request id, at most retryPolicy.maxCloudCalls calls, and no
 * MutexOperation at the cloud. Real gateways, the real SDK, the emulator, a real Redis.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { retryPolicy } from "../src/core/cloud-errors.js";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { createEmulator, type Emulator, type FaultSettings } from "../src/upstream/emulator/index.js";
import { startGateway, type TestGateway } from "./support/app.js";
import { opsPolicy } from "./support/policies.js";
import { killStrays, serveEnv, spawnKeygate, waitListening } from "./support/process.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";

const TOKEN = "token-send-faults-0123456789";
const REGION = "ap-guangzhou";
const ASSOCIATE = "AssociateInstancesKeyPairs";
const UPSTREAM_TIMEOUT_MS = 500;
/** 2 × the upstream timeout (src/main.ts): an original still on its way arrives within it. */
const HORIZON_MS = 2 * UPSTREAM_TIMEOUT_MS;
const POLICY = opsPolicy(TOKEN, true);
const id = (n: number) => `ins-sf${String(n).padStart(6, "0")}`;
const RUNNING = "ins-sfrun001";
const CRASHED = "ins-sfcrash1";

function inventory() {
  const at = (instanceId: string, instanceState: string) => ({
    instanceId,
    region: REGION,
    zone: "ap-guangzhou-3",
    projectId: 0,
    osName: "TencentOS Server 3.1 (TK4)",
    instanceState,
  });
  return {
    instances: [
      ...Array.from({ length: 8 }, (_, i) => at(id(i + 1), "STOPPED")),
      at(RUNNING, "RUNNING"),
      at(CRASHED, "STOPPED"),
    ],
    keyPairs: [{ keyId: "skey-aaaaaaaa" }, { keyId: "skey-bbbbbbbb" }],
  };
}

const headers = { authorization: `Bearer ${TOKEN}` };
const clientOf = (url: string) =>
  createClient(KeyPairService, createConnectTransport({ baseUrl: url, httpVersion: "1.1" }));
const detail = (e: unknown) => ConnectError.from(e).findDetails(ErrorDetailSchema)[0];

describe("one gateway, a cloud that loses or delays replies", () => {
  let emulator: Emulator;
  let gw: TestGateway;
  beforeAll(async () => {
    // The task outlives the upstream timeout: a blind resend would meet it (MutexOperation).
    emulator = await createEmulator({ host: "127.0.0.1", port: 0, taskMs: 1_200, inventory: inventory() });
    gw = await startGateway({
      emulator,
      policyText: POLICY,
      env: { KEYGATE_UPSTREAM_TIMEOUT_MS: String(UPSTREAM_TIMEOUT_MS), KEYGATE_TASK_POLL_MS: "50" },
    });
  });
  afterAll(async () => {
    await gw?.stop();
    await emulator?.close();
  });
  beforeEach(() => emulator.faults.reset());

  const once = async (instanceId: string, faults: FaultSettings, forceStop = false) => {
    emulator.faults.set(faults);
    try {
      return await clientOf(gw.url).associateKeyPairs(
        {
          region: REGION,
          instanceIds: [instanceId],
          keyIds: ["skey-aaaaaaaa"],
          forceStop,
          waitForCompletion: true,
        },
        { headers, timeoutMs: 30_000 },
      );
    } finally {
      emulator.faults.reset();
    }
  };
  const appliesOn = (instanceId: string) =>
    emulator.stats.applies.filter((a) => a.instanceIds.includes(instanceId));
  const auditOf = (requestId: string) =>
    gw.logs.audits().find((l) => l.upstreamRequestId === requestId && l.instances !== undefined);

  it.each<[string, string, FaultSettings]>([
    ["reply lost", id(1), { rules: [{ kind: "lostReply", action: ASSOCIATE, next: 1 }] }],
    [
      "reply later than the upstream timeout",
      id(2),
      { rules: [{ kind: "lateReply", action: ASSOCIATE, delayMs: 3 * UPSTREAM_TIMEOUT_MS, next: 1 }] },
    ],
    [
      "request applied after the client gave up (within the resend horizon)",
      id(3),
      { rules: [{ kind: "lateApply", action: ASSOCIATE, delayMs: Math.round(HORIZON_MS * 0.6), next: 1 }] },
    ],
    ["reply body stalled", id(4), { rules: [{ kind: "stallBody", action: ASSOCIATE, next: 1 }] }],
    ["every reply lost", id(5), { rules: [{ kind: "lostReply", action: ASSOCIATE }] }],
  ])(
    "%s: applied exactly once, the caller gets OK with the applied request id",
    async (_what, ins, faults) => {
      const res = await once(ins, faults);
      const applies = appliesOn(ins);
      expect(applies).toHaveLength(1);
      expect(res.requestId).toBe(applies[0]?.requestId);
      expect(res.instances[0]?.state).toBe("SUCCESS");
      expect(emulator.stats.perInstance()[ins]?.mutexAnswers ?? 0).toBe(0);
      expect(auditOf(res.requestId)).toMatchObject({ decision: "allowed", attempts: 1 });
    },
  );

  it("force_stop with its reply lost: the instance is stopped (and the keys applied) once", async () => {
    const res = await once(RUNNING, { rules: [{ kind: "lostReply", action: ASSOCIATE, next: 1 }] }, true);
    const applies = appliesOn(RUNNING);
    expect(applies.map((a) => a.forceStop)).toEqual([true]);
    expect(res.requestId).toBe(applies[0]?.requestId);
    expect(emulator.inventory.get(REGION, RUNNING)?.instanceState).toBe("RUNNING");
  });

  it(`busy while DescribeInstances shows idle: at most ${retryPolicy.maxCloudCalls} cloud calls, backed off, counted in the audit line`, async () => {
    const before = emulator.stats.arrivals.length;
    const err = await once(id(6), { rules: [{ kind: "mutexTaskRunning" }] }).catch((e: unknown) => e);
    expect(ConnectError.from(err).code).toBe(Code.Aborted);
    expect(detail(err)?.reason).toBe("MutexOperation.TaskRunning");
    const calls = emulator.stats.arrivals.slice(before).filter((a) => a.action === ASSOCIATE);
    expect(calls.length).toBeGreaterThan(1);
    expect(calls.length).toBeLessThanOrEqual(retryPolicy.maxCloudCalls);
    // Backed off: the gaps grow (jitter keeps each within [½, 1] of a doubling base).
    const gaps = calls.slice(1).map((c, i) => c.at - (calls[i]?.at ?? 0));
    expect(gaps[0]).toBeGreaterThanOrEqual(150);
    expect(gaps.at(-1)).toBeGreaterThan(gaps[0] ?? 0);
    const audit = gw.logs.audits().find((l) => l.upstreamCode === "MutexOperation.TaskRunning");
    expect(audit?.attempts).toBe(calls.length);
  });
});

describe("a replica SIGKILLed right after its send, its lease expiring while the task runs", () => {
  let redis: RedisProcess;
  let emulator: Emulator;
  let survivor: TestGateway;
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "keygate-send-"));
    writeFileSync(join(dir, "policy.yaml"), POLICY);
    redis = await startRedis();
    // Longer than the lease TTL (5 s): the lease expires while the dead replica's task runs.
    emulator = await createEmulator({ host: "127.0.0.1", port: 0, taskMs: 8_000, inventory: inventory() });
    survivor = await startGateway({
      emulator,
      policyText: POLICY,
      env: { KEYGATE_REDIS_URL: redis.url, KEYGATE_LOG_LEVEL: "warn" },
    });
  }, 30_000);
  afterAll(async () => {
    await killStrays();
    await survivor?.stop();
    await emulator?.close();
    await redis?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("another replica takes the expired lease over, waits until the instance is idle, and never meets the task", async () => {
    const dying = spawnKeygate(
      ["serve"],
      serveEnv(join(dir, "policy.yaml"), emulator.url, {
        KEYGATE_REDIS_URL: redis.url,
        KEYGATE_TEST_CRASH_AT: "after-send",
      }),
    );
    const { api } = await waitListening(dying);
    const first = clientOf(`http://127.0.0.1:${api}`)
      .associateKeyPairs(
        { region: REGION, instanceIds: [CRASHED], keyIds: ["skey-aaaaaaaa"] },
        { headers, timeoutMs: 30_000 },
      )
      .then(
        () => "answered",
        () => "no answer",
      );
    expect(await dying.exited).toEqual({ code: null, signal: "SIGKILL" });
    expect(await first).toBe("no answer");
    expect(emulator.stats.applies).toHaveLength(1);
    expect(emulator.inventory.get(REGION, CRASHED)?.latestOperationState).toBe("OPERATING");

    // A different call on the same instance: nothing to join, only the lease stands in its way.
    const res = await clientOf(survivor.url).associateKeyPairs(
      { region: REGION, instanceIds: [CRASHED], keyIds: ["skey-bbbbbbbb"], waitForCompletion: true },
      { headers, timeoutMs: 40_000 },
    );
    expect(res.instances[0]?.state).toBe("SUCCESS");
    expect(emulator.stats.applies).toHaveLength(2);
    // The second apply came only after the first task ended (the lease had expired at ~5 s: a
    // taken-over lease is not trusted), and not much later (the 5 s TTL, not the old 30 s).
    const [a, b] = emulator.stats.applies;
    expect((b?.at ?? 0) - (a?.at ?? 0)).toBeGreaterThanOrEqual(8_000);
    expect((b?.at ?? 0) - (a?.at ?? 0)).toBeLessThan(14_000);
    expect(emulator.stats.perInstance()[CRASHED]?.mutexAnswers).toBe(0);
  }, 60_000);
});
