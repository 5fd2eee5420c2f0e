/**
 * KEYGATE_ON_STORE_DOWN=local-share with KEYGATE_REPLICAS=2: two gateways share one redis-server and
 * one emulated cloud. Redis is killed under load: calls keep succeeding, each replica sends at most
 * its share (10 ÷ 2 = 5) per sliding second, overlapping calls on one replica still never collide,
 * identical calls and idempotency keys still dedup on the replica that saw them, and readiness stays
 * SERVING. Once Redis is back, both replicas return to the shared store by themselves.
 * (The default fail-closed behaviour is covered by limit-redis-down.test.ts.)
 */
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ASSOCIATE, fleetIds, fleetInventory, maxIn1000 } from "./support/fleet.js";
import { pollUntil } from "./support/wait.js";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../src/gen/health/v1/health_pb.js";
import { KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { createEmulator, type Emulator } from "../src/upstream/emulator/index.js";
import { startGateway, type TestGateway } from "./support/app.js";
import { sha256 } from "./support/policies.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";

const REGION = "ap-guangzhou";
const TOKEN = "token-local-share-0123456789";
const BUSY = new Set(["MutexOperation.TaskRunning", "OperationDenied.InstanceOperationInProgress"]);
/** skey-share000…: one key per overlapping caller, so their requests never coalesce. */
const key = (i: number) => `skey-share${String(i).padStart(3, "0")}`;
const ids = fleetIds(160);

const POLICY = `
tenants:
  fleet:
    tokens_sha256: ["${sha256(TOKEN)}"]
    regions: [${REGION}]
    instances:
      tags: { fleet: limit }
    keys: "*"
    force_stop: false
    max_instances_per_request: 10
`;

let redis: RedisProcess;
let emulator: Emulator;
let gateways: TestGateway[] = [];
/** The readiness sampler runs while this is true (cleared in afterAll too, should the test fail). */
let sampling = false;

beforeAll(async () => {
  redis = await startRedis();
  const inventory = fleetInventory(ids.length);
  inventory.keyPairs = [
    ...(inventory.keyPairs ?? []),
    ...Array.from({ length: 20 }, (_, i) => ({ keyId: key(i) })),
  ];
  // Tasks long enough that two overlapping calls on one instance would meet MutexOperation.TaskRunning.
  emulator = await createEmulator({ host: "127.0.0.1", port: 0, taskMs: 300, inventory });
  const env = {
    KEYGATE_REDIS_URL: redis.url,
    KEYGATE_ON_STORE_DOWN: "local-share",
    KEYGATE_REPLICAS: "2",
  };
  for (let i = 0; i < 2; i++) gateways.push(await startGateway({ emulator, policyText: POLICY, env }));
});
afterAll(async () => {
  sampling = false;
  await Promise.all(gateways.map((g) => g.stop()));
  gateways = [];
  await emulator?.close();
  await redis?.stop();
});

const auth = { authorization: `Bearer ${TOKEN}` };
const client = (g: TestGateway) =>
  createClient(KeyPairService, createConnectTransport({ baseUrl: g.url, httpVersion: "1.1" }));
interface Req {
  instanceIds: string[];
  keyIds: string[];
  idempotencyKey?: string;
  waitForCompletion?: boolean;
}
/** Which gateway answered each upstream request id (the emulator's request id comes back to the caller). */
const answeredBy = new Map<string, number>();
const call = async (gw: number, req: Req, timeoutMs = 30_000) => {
  const res = await client(gateways[gw]!).associateKeyPairs(
    { region: REGION, ...req },
    { headers: auth, timeoutMs },
  );
  answeredBy.set(res.requestId, gw);
  return res;
};
const health = (g: TestGateway) =>
  createClient(Health, createGrpcTransport({ baseUrl: g.url }))
    .check({ service: "" })
    .then((r) => r.status);
const degradedGauge = async (g: TestGateway) => {
  const text = await (await fetch(g.metricsUrl)).text();
  return Number(/^keygate_store_degraded (\d+)/m.exec(text)?.[1] ?? "NaN");
};
const associates = (from = 0) => emulator.stats.arrivals.slice(from).filter((a) => a.action === ASSOCIATE);

describe("local-share: Redis goes down and comes back", () => {
  it("keeps serving within each replica's share, without collisions, then returns to shared mode", async () => {
    let next = 0;
    // Shared mode first (the first call of a bucket waits out the limiter's cold hold-off).
    await Promise.all([0, 1].map((gw) => call(gw, { instanceIds: [ids[next++]!], keyIds: [key(0)] })));
    expect(await Promise.all(gateways.map(health))).toEqual([Status.SERVING, Status.SERVING]);
    expect(await Promise.all(gateways.map(degradedGauge))).toEqual([0, 0]);

    // --- outage --------------------------------------------------------------------------------
    const mark = emulator.stats.arrivals.length;
    await redis.kill();
    await pollUntil(
      async () => (await Promise.all(gateways.map(degradedGauge))).every((v) => v === 1),
      "every gateway's degraded gauge at 1",
      10_000,
      50,
    );

    // Readiness is sampled all through the outage's load.
    const readiness: Status[] = [];
    sampling = true;
    const sampler = (async () => {
      while (sampling) {
        // An unreachable gateway counts as not serving.
        readiness.push(...(await Promise.all(gateways.map((g) => health(g).catch(() => Status.UNKNOWN)))));
        await new Promise((r) => setTimeout(r, 100));
      }
    })();

    // Saturating load on both replicas, one distinct instance per call.
    const load = (gw: number, workers: number, calls: number) => {
      let left = calls;
      return Promise.all(
        Array.from({ length: workers }, async () => {
          const done: string[] = [];
          while (left-- > 0) {
            done.push((await call(gw, { instanceIds: [ids[next++]!], keyIds: [key(0)] })).requestId);
          }
          return done;
        }),
      ).then((r) => r.flat());
    };
    // Overlapping calls on ONE instance through one replica: a different key each, so each is leased.
    const shared = ids[ids.length - 1]!;
    const overlapping = Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        call(0, { instanceIds: [shared], keyIds: [key(i + 1)], waitForCompletion: i % 2 === 0 }),
      ),
    );
    // Identical concurrent calls on one replica are joined: one execution.
    const identical = Promise.all(
      Array.from({ length: 4 }, () => call(1, { instanceIds: [ids[ids.length - 2]!], keyIds: [key(7)] })),
    );
    const [loadA, loadB, overlap, same] = await Promise.all([
      load(0, 8, 24),
      load(1, 8, 24),
      overlapping,
      identical,
    ]);

    // An idempotency key first used during the outage is remembered on that replica only.
    const idem = {
      instanceIds: [ids[ids.length - 3]!],
      keyIds: [key(8)],
      idempotencyKey: "outage-key-1",
      waitForCompletion: true,
    };
    const first = await call(0, idem);
    const again = await call(0, idem);
    const elsewhere = await call(1, idem);
    sampling = false;
    await sampler;
    const restartAt = emulator.stats.arrivals.length;

    const outageArrivals = emulator.stats.arrivals
      .slice(mark, restartAt)
      .filter((a) => a.action === ASSOCIATE);
    const perReplica = [0, 1].map((gw) =>
      outageArrivals.filter((a) => answeredBy.get(a.requestId) === gw).map((a) => a.at),
    );
    const unattributed = outageArrivals.filter((a) => !answeredBy.has(a.requestId));
    console.log(
      `store-local-share: outage ${outageArrivals.length} associates (A ${perReplica[0]!.length}, B ${perReplica[1]!.length}), ` +
        `max in 1000 ms together ${maxIn1000(outageArrivals.map((a) => a.at))}, per replica ` +
        `${perReplica.map(maxIn1000).join(",")}; outcomes ${JSON.stringify(emulator.stats.outcomes({ action: ASSOCIATE }))}; ` +
        `readiness samples ${readiness.length}`,
    );

    // Every call succeeded, and the cloud saw no more than each replica's share.
    expect(loadA).toHaveLength(24);
    expect(loadB).toHaveLength(24);
    expect(overlap.map((r) => r.deduplicated)).toEqual(Array(6).fill(false));
    expect(unattributed).toEqual([]);
    expect(maxIn1000(outageArrivals.map((a) => a.at))).toBeLessThanOrEqual(10);
    for (const times of perReplica) {
      expect(times.length).toBeGreaterThan(5);
      expect(maxIn1000(times)).toBeLessThanOrEqual(5);
    }
    // Same replica, same instance: leased one after the other, never MutexOperation.
    expect(outageArrivals.filter((a) => BUSY.has(a.outcome))).toEqual([]);
    expect(outageArrivals.every((a) => a.outcome === "OK")).toBe(true);
    // Coalescing on one replica: one execution, three joiners.
    expect(new Set(same.map((r) => r.requestId)).size).toBe(1);
    expect(same.filter((r) => r.deduplicated)).toHaveLength(3);
    // Idempotency on one replica. The other replica does not know the key, but with the store out
    // of reach it asks the cloud first: the keys are bound, so it answers with the first call's
    // request id instead of applying again.
    expect(again.requestId).toBe(first.requestId);
    expect(again.deduplicated).toBe(true);
    expect(elsewhere.requestId).toBe(first.requestId);
    expect(emulator.stats.applies.filter((a) => a.requestId === elsewhere.requestId)).toHaveLength(1);
    // Readiness never dropped, and the mode change was logged.
    expect(readiness.length).toBeGreaterThan(0);
    expect(readiness.every((s) => s === Status.SERVING)).toBe(true);
    for (const g of gateways) {
      expect(
        g.logs.json().some((l) => l.level === "warn" && String(l.msg).startsWith("redis unreachable")),
      ).toBe(true);
    }

    // --- Redis is back ---------------------------------------------------------------------------
    await redis.restart();
    await pollUntil(
      async () => (await Promise.all(gateways.map(degradedGauge))).every((v) => v === 0),
      "every gateway's degraded gauge back at 0",
      15_000,
      50,
    );
    const after = await Promise.all(
      Array.from({ length: 8 }, (_, i) => call(i % 2, { instanceIds: [ids[next++]!], keyIds: [key(0)] })),
    );
    expect(after.every((r) => r.requestId !== "")).toBe(true);
    // Shared again: an idempotency key used on A is answered by B without a second upstream call.
    const shared1 = { instanceIds: [ids[next++]!], keyIds: [key(9)], idempotencyKey: "after-key-1" };
    const onA = await call(0, { ...shared1, waitForCompletion: true });
    const onB = await call(1, { ...shared1, waitForCompletion: true });
    expect(onB.requestId).toBe(onA.requestId);
    expect(onB.deduplicated).toBe(true);
    // The outage's key is still answered on the replica that saw it.
    const replay = await call(0, idem);
    expect(replay.requestId).toBe(first.requestId);
    expect(replay.deduplicated).toBe(true);

    const all = associates().map((a) => a.at);
    console.log(`store-local-share: whole run ${all.length} associates, max in 1000 ms ${maxIn1000(all)}`);
    expect(maxIn1000(all)).toBeLessThanOrEqual(10);
    expect(associates().filter((a) => BUSY.has(a.outcome))).toEqual([]);
  });
});
