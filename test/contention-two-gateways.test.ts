/**
 * G3 and G5 across replicas: two gateways share one redis-server and one emulated cloud whose
 * tasks keep instances OPERATING for a while. Everything is real: gRPC/Connect clients → the
 * gateways → the official SDK → the emulator; leases, coalescing and idempotency live in Redis.
 */
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { createEmulator, type Emulator, type InventorySpec } from "../src/upstream/emulator/index.js";
import { startGateway, type TestGateway } from "./support/app.js";
import { sha256 } from "./support/policies.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";

const TASK_MS = 400;
const REGION = "ap-guangzhou";
const TOKEN_OPS = "token-contention-ops-0123456789";
const TOKEN_OTHER = "token-contention-other-0123456789";
const BUSY_CODES = new Set(["MutexOperation.TaskRunning", "OperationDenied.InstanceOperationInProgress"]);

/** ins-ct0000NN: STOPPED Linux instances, one group per test so no test waits on another's task. */
const ct = (n: number) => `ins-ct${String(n).padStart(6, "0")}`;
const RUNNING = "ins-ctrun001";
const KEYS = ["skey-aaaaaaaa", "skey-bbbbbbbb", "skey-cccccccc", "skey-dddddddd"];
/** One key per caller of the overlap test, so its requests never coalesce: each one is leased. */
const callerKey = (i: number) => `skey-caller${String(i).padStart(2, "0")}`;

function inventory(): InventorySpec {
  const inst = (instanceId: string, instanceState: string) => ({
    instanceId,
    region: REGION,
    zone: "ap-guangzhou-3",
    projectId: 1001,
    osName: "TencentOS Server 3.1 (TK4)",
    instanceState,
    tags: { owner: "ops" },
    keyIds: [],
  });
  return {
    instances: [
      ...Array.from({ length: 30 }, (_, i) => inst(ct(i + 1), "STOPPED")),
      inst(RUNNING, "RUNNING"),
    ],
    keyPairs: [...KEYS, ...Array.from({ length: 30 }, (_, i) => callerKey(i))].map((keyId) => ({ keyId })),
  };
}

/** "ops" may force-stop anything; "other" is a second tenant with the same reach but no ForceStop. */
const POLICY = `
tenants:
  ops:
    tokens_sha256: ["${sha256(TOKEN_OPS)}"]
    regions: [ap-guangzhou]
    instances: "*"
    keys: "*"
    force_stop: true
  other:
    tokens_sha256: ["${sha256(TOKEN_OTHER)}"]
    regions: [ap-guangzhou]
    instances: "*"
    keys: "*"
    force_stop: false
`;

let redis: RedisProcess;
let emulator: Emulator;
let gwA: TestGateway;
let gwB: TestGateway;
/** Gateway A is called over gRPC (HTTP/2), B over Connect (HTTP/1.1): both paths are exercised. */
let clientA: Client<typeof KeyPairService>;
let clientB: Client<typeof KeyPairService>;

beforeAll(async () => {
  redis = await startRedis();
  emulator = await createEmulator({ host: "127.0.0.1", port: 0, taskMs: TASK_MS, inventory: inventory() });
  const env = { KEYGATE_REDIS_URL: redis.url, KEYGATE_LOG_LEVEL: "warn" };
  gwA = await startGateway({ emulator, policyText: POLICY, env });
  gwB = await startGateway({ emulator, policyText: POLICY, env });
  clientA = createClient(KeyPairService, createGrpcTransport({ baseUrl: gwA.url }));
  clientB = createClient(KeyPairService, createConnectTransport({ baseUrl: gwB.url, httpVersion: "1.1" }));
  // Warm both replicas (the limiter holds off on a bucket's first use); nothing else uses ins-ct000030.
  await clientA.associateKeyPairs(
    { region: REGION, instanceIds: [ct(30)], keyIds: [KEYS[0] ?? ""], waitForCompletion: true },
    { headers: as(TOKEN_OPS), timeoutMs: 20_000 },
  );
  await clientB.associateKeyPairs(
    { region: REGION, instanceIds: [ct(30)], keyIds: [KEYS[1] ?? ""], waitForCompletion: true },
    { headers: as(TOKEN_OPS), timeoutMs: 20_000 },
  );
});
afterAll(async () => {
  await gwA?.stop();
  await gwB?.stop();
  await emulator?.close();
  await redis?.stop();
});

let mark = 0;
beforeEach(() => {
  mark = emulator.stats.arrivals.length;
  emulator.faults.reset();
});
/** AssociateInstancesKeyPairs calls that reached the cloud since the test began. */
const associates = () =>
  emulator.stats.arrivals.slice(mark).filter((a) => a.action === "AssociateInstancesKeyPairs");
const busyOutcomes = () => associates().filter((a) => BUSY_CODES.has(a.outcome));

function as(token: string) {
  return { authorization: `Bearer ${token}` };
}
function detailOf(err: unknown) {
  return ConnectError.from(err).findDetails(ErrorDetailSchema)[0];
}
/** A small deterministic generator, so a failing run can be replayed. */
function prng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

type Answer = { ok: true; requestId: string; deduplicated: boolean } | { ok: false; err: ConnectError };

describe("overlapping requests through two replicas never collide (G3)", () => {
  it("many callers on a few instances: zero busy outcomes, one answer each, all succeed", async () => {
    const rnd = prng(7);
    const pool = [ct(1), ct(2), ct(3), ct(4)];
    const callers = 24;
    const answers: Answer[][] = Array.from({ length: callers }, () => []);
    const calls = Array.from({ length: callers }, async (_, i) => {
      // One or two instances per request (overlapping sets), a key per caller, both replicas.
      const first = pool[Math.floor(rnd() * pool.length)] ?? ct(1);
      const second = pool[Math.floor(rnd() * pool.length)] ?? ct(1);
      const instanceIds = rnd() < 0.5 || first === second ? [first] : [first, second];
      const client = i % 2 === 0 ? clientA : clientB;
      try {
        const res = await client.associateKeyPairs(
          {
            region: REGION,
            instanceIds,
            keyIds: [callerKey(i)],
            waitForCompletion: i % 3 === 0,
          },
          { headers: as(TOKEN_OPS), timeoutMs: 25_000 },
        );
        answers[i]?.push({ ok: true, requestId: res.requestId, deduplicated: res.deduplicated });
      } catch (e) {
        answers[i]?.push({ ok: false, err: ConnectError.from(e) });
      }
    });
    await Promise.all(calls);

    for (const a of answers) expect(a).toHaveLength(1);
    const failures = answers.flat().flatMap((a) => (a.ok ? [] : [`${a.err.code} ${a.err.rawMessage}`]));
    expect(failures).toEqual([]);
    // No two requests are identical: each reached the cloud exactly once, none was joined.
    expect(answers.flat().filter((a) => a.ok && a.deduplicated)).toEqual([]);
    expect(associates()).toHaveLength(callers);
    expect(busyOutcomes()).toEqual([]);
    expect(associates().every((a) => a.outcome === "OK")).toBe(true);
  });

  it("identical concurrent requests to A and B: one upstream call, one request_id, the rest deduplicated", async () => {
    // A slow cloud answer keeps the first execution in flight while the others arrive.
    emulator.faults.set({ latencyMs: 300 });
    const ids = [ct(5), ct(6), ct(7)];
    const orders = [ids, [...ids].reverse(), [ids[1], ids[2], ids[0]] as string[]];
    const results = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        (i % 2 === 0 ? clientA : clientB).associateKeyPairs(
          {
            region: REGION,
            instanceIds: orders[i % orders.length],
            keyIds: i % 2 === 0 ? [KEYS[0] ?? "", KEYS[1] ?? ""] : [KEYS[1] ?? "", KEYS[0] ?? ""],
            forceStop: false,
          },
          { headers: as(TOKEN_OPS), timeoutMs: 20_000 },
        ),
      ),
    );
    expect(associates()).toHaveLength(1);
    expect(new Set(results.map((r) => r.requestId))).toEqual(new Set([associates()[0]?.requestId]));
    expect(results.filter((r) => !r.deduplicated)).toHaveLength(1);
    expect(results.filter((r) => r.deduplicated)).toHaveLength(5);
  });
});

describe("idempotency keys across replicas (G5)", () => {
  const request = {
    region: REGION,
    instanceIds: [ct(8), ct(9)],
    keyIds: [KEYS[2] ?? ""],
    idempotencyKey: "deploy-2024-05-01-ct8-ct9",
  };

  it("the same key and request on A, then on B after completion: the first answer, no second call", async () => {
    const first = await clientA.associateKeyPairs(request, { headers: as(TOKEN_OPS), timeoutMs: 20_000 });
    expect(first.deduplicated).toBe(false);
    const again = await clientB.associateKeyPairs(
      { ...request, instanceIds: [...request.instanceIds].reverse() },
      { headers: as(TOKEN_OPS), timeoutMs: 20_000 },
    );
    expect(again.requestId).toBe(first.requestId);
    expect(again.deduplicated).toBe(true);
    const third = await clientA.associateKeyPairs(request, { headers: as(TOKEN_OPS), timeoutMs: 20_000 });
    expect(third.requestId).toBe(first.requestId);
    expect(associates()).toHaveLength(1);
  });

  it("the same key with a different request → FAILED_PRECONDITION IDEMPOTENCY_MISMATCH, nothing sent", async () => {
    const err = await clientB
      .associateKeyPairs(
        { ...request, keyIds: [KEYS[3] ?? ""] },
        { headers: as(TOKEN_OPS), timeoutMs: 20_000 },
      )
      .catch((e: unknown) => e);
    expect(ConnectError.from(err).code).toBe(Code.FailedPrecondition);
    expect(detailOf(err)?.reason).toBe("IDEMPOTENCY_MISMATCH");
    expect(associates()).toHaveLength(0);
  });

  it("another tenant may use the same key for its own request, independently", async () => {
    const theirs = await clientB.associateKeyPairs(
      { ...request, instanceIds: [ct(10)] },
      { headers: as(TOKEN_OTHER), timeoutMs: 20_000 },
    );
    expect(theirs.deduplicated).toBe(false);
    expect(associates().map((a) => a.requestId)).toEqual([theirs.requestId]);
    // Their key is bound to their request: repeating it on A answers the same, the first tenant's is untouched.
    const repeat = await clientA.associateKeyPairs(
      { ...request, instanceIds: [ct(10)] },
      { headers: as(TOKEN_OTHER), timeoutMs: 20_000 },
    );
    expect(repeat.requestId).toBe(theirs.requestId);
    expect(repeat.deduplicated).toBe(true);
    const mismatch = await clientA
      .associateKeyPairs({ ...request, instanceIds: [ct(10)] }, { headers: as(TOKEN_OPS), timeoutMs: 20_000 })
      .catch((e: unknown) => e);
    expect(detailOf(mismatch)?.reason).toBe("IDEMPOTENCY_MISMATCH");
    expect(associates()).toHaveLength(1);
  });
});

describe("wait_for_completion", () => {
  it("answers once every instance's task has ended, with SUCCESS, and the keys are bound", async () => {
    const res = await clientB.associateKeyPairs(
      { region: REGION, instanceIds: [ct(11), ct(12)], keyIds: [KEYS[3] ?? ""], waitForCompletion: true },
      { headers: as(TOKEN_OPS), timeoutMs: 20_000 },
    );
    expect(res.instances.map((i) => [i.instanceId, i.state]).sort()).toEqual([
      [ct(11), "SUCCESS"],
      [ct(12), "SUCCESS"],
    ]);
    for (const id of [ct(11), ct(12)]) {
      const live = emulator.inventory.get(REGION, id);
      expect(live?.keyIds).toEqual([KEYS[3]]);
      expect(live?.latestOperationRequestId).toBe(res.requestId);
      expect(live?.latestOperationState).toBe("SUCCESS");
    }
  });

  it("ForceStop on a RUNNING instance: the task ends in SUCCESS and the instance runs again", async () => {
    const res = await clientA.associateKeyPairs(
      {
        region: REGION,
        instanceIds: [RUNNING],
        keyIds: [KEYS[0] ?? ""],
        forceStop: true,
        waitForCompletion: true,
      },
      { headers: as(TOKEN_OPS), timeoutMs: 20_000 },
    );
    expect(res.instances.map((i) => [i.instanceId, i.state])).toEqual([[RUNNING, "SUCCESS"]]);
    const live = emulator.inventory.get(REGION, RUNNING);
    expect(live?.instanceState).toBe("RUNNING");
    expect(live?.keyIds).toEqual([KEYS[0]]);
    expect(associates().map((a) => a.outcome)).toEqual(["OK"]);
  });
});

describe("someone in the console", () => {
  it("keygate waits until the instance is idle, then succeeds within the deadline", async () => {
    emulator.markBusy([ct(13)], 1_500);
    const res = await clientA.associateKeyPairs(
      { region: REGION, instanceIds: [ct(13)], keyIds: [KEYS[1] ?? ""], waitForCompletion: true },
      { headers: as(TOKEN_OPS), timeoutMs: 15_000 },
    );
    expect(res.instances.map((i) => i.state)).toEqual(["SUCCESS"]);
    const outcomes = associates().map((a) => a.outcome);
    // The console's task may be seen once (keygate cannot know before asking); then one success.
    expect(outcomes.at(-1)).toBe("OK");
    expect(outcomes.filter((o) => o === "OK")).toHaveLength(1);
    expect(outcomes.length).toBeLessThanOrEqual(2);
  });

  it("busy past the deadline → ABORTED with the cloud's MutexOperation.TaskRunning", async () => {
    // A third replica whose own 2 s deadline applies (no client timer racing the server's answer).
    const gwC = await startGateway({
      emulator,
      policyText: POLICY,
      env: { KEYGATE_REDIS_URL: redis.url, KEYGATE_LOG_LEVEL: "warn", KEYGATE_DEFAULT_DEADLINE_MS: "2000" },
    });
    try {
      emulator.markBusy([ct(14)], 8_000);
      const clientC = createClient(
        KeyPairService,
        createConnectTransport({ baseUrl: gwC.url, httpVersion: "1.1" }),
      );
      const err = await clientC
        .associateKeyPairs(
          { region: REGION, instanceIds: [ct(14)], keyIds: [KEYS[2] ?? ""] },
          { headers: as(TOKEN_OPS) },
        )
        .catch((e: unknown) => e);
      expect(ConnectError.from(err).code).toBe(Code.Aborted);
      expect(detailOf(err)?.reason).toBe("MutexOperation.TaskRunning");
      expect(detailOf(err)?.upstreamCode).toBe("MutexOperation.TaskRunning");
      expect(detailOf(err)?.upstreamRequestId).not.toBe("");
      expect(associates().length).toBeGreaterThan(0);
      expect(associates().every((a) => a.outcome === "MutexOperation.TaskRunning")).toBe(true);
    } finally {
      await gwC.stop();
    }
  });
});
