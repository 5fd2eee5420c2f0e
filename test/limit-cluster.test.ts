/**
 * G1 + G2 end to end: three gateways sharing one redis-server, the real SDK signing real HTTP
 * to one emulator, a saturating load spread over all three. Everything is judged at the
 * emulator, by arrival time.
 */
import { ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ASSOCIATE,
  FLEET_POLICY,
  fleetIds,
  fleetInventory,
  LOAD_KEY,
  LOAD_TOKEN,
  maxIn1000,
  runLoad,
  stallMeter,
  sustainedRate,
} from "./support/fleet.js";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { createEmulator, type Emulator } from "../src/upstream/emulator/index.js";
import { startGateway, type TestGateway } from "./support/app.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";

const INSTANCES = 60;
const LOAD_MS = 4_500;

let redis: RedisProcess;
let emulator: Emulator;
let gateways: TestGateway[] = [];

beforeAll(async () => {
  redis = await startRedis();
  emulator = await createEmulator({
    host: "127.0.0.1",
    port: 0,
    taskMs: 50,
    inventory: fleetInventory(INSTANCES),
  });
  for (let i = 0; i < 3; i++) {
    gateways.push(
      await startGateway({
        emulator,
        policyText: FLEET_POLICY,
        env: { KEYGATE_REDIS_URL: redis.url, KEYGATE_LOG_LEVEL: "warn" },
      }),
    );
  }
});
afterAll(async () => {
  await Promise.all(gateways.map((g) => g.stop()));
  gateways = [];
  await emulator?.close();
  await redis?.stop();
});

const reasonOf = (err: unknown) => {
  const e = ConnectError.from(err);
  return e.findDetails(ErrorDetailSchema)[0]?.reason ?? `code ${e.code}`;
};

describe("three replicas, one Redis, one cloud", () => {
  it("never more than 10 in any sliding second at the cloud, and close to 9.6/s sustained", async () => {
    const clients = gateways.map((g) =>
      createClient(KeyPairService, createConnectTransport({ baseUrl: g.url, httpVersion: "2" })),
    );
    const ids = fleetIds(INSTANCES);
    const started = Date.now();
    const stalls = stallMeter();
    // 30 callers (10 per replica) keep every replica's queue deep; each call takes the next
    // instance, so one instance comes round again only after ~6 s (its lease is long gone).
    const load = await runLoad({
      callers: 30,
      untilMs: started + LOAD_MS,
      maxCalls: 200,
      reasonOf,
      call: (caller, n) =>
        clients[caller % clients.length]!.associateKeyPairs(
          { region: "ap-guangzhou", instanceIds: [ids[n % ids.length]!], keyIds: [LOAD_KEY] },
          { headers: { authorization: `Bearer ${LOAD_TOKEN}` }, timeoutMs: 15_000 },
        ),
    });
    const elapsed = Date.now() - started;
    const stalledMs = stalls.stop();

    const associates = emulator.stats.arrivals.filter((a) => a.action === ASSOCIATE);
    const times = associates.map((a) => a.at);
    const outcomes = emulator.stats.outcomes({ action: ASSOCIATE });
    const rate = sustainedRate(times);
    const spanMs = Math.max(...times) - Math.min(...times);
    // The rate over the time this process was actually running (see stallMeter).
    const runningRate = ((times.length - 10) / Math.max(1, spanMs - stalledMs)) * 1000;
    console.log(
      `limit-cluster: ${load.ok} ok, failed ${JSON.stringify(load.failed)}, ${times.length} arrivals over ` +
        `${spanMs} ms (test ${elapsed} ms), max in 1000 ms = ${maxIn1000(times)}, sustained ${rate.toFixed(2)}/s ` +
        `(${runningRate.toFixed(2)}/s over the ${spanMs - stalledMs} ms not stalled), ` +
        `outcomes ${JSON.stringify(outcomes)}`,
    );

    const sorted = [...times].sort((a, b) => a - b);
    const gaps10 = sorted.slice(10).map((t, i) => t - sorted[i]!);
    console.log(
      `limit-cluster: 11 consecutive arrivals span ${Math.min(...gaps10)}–${Math.max(...gaps10)} ms`,
    );
    // G1: counted at the cloud, by arrival time.
    expect(maxIn1000(times)).toBeLessThanOrEqual(10);
    expect(outcomes.RequestLimitExceeded ?? 0).toBe(0);
    // Every call the callers made was answered OK (no call ran out of time under this load).
    expect(load.failed).toEqual({});
    expect(load.ok).toBe(times.length);
    // The load really saturated: the queue was never empty from first to last arrival.
    // At 10 per 1040 ms (the limiter's span) the run must hold at least ~(span / 1040 + 1) rounds of 10.
    expect(times.length).toBeGreaterThanOrEqual(30);
    expect(times.length).toBeGreaterThanOrEqual(Math.floor((spanMs / 1040) * 10 * 0.9));
    // G2 (≥ 9.5/s) is measured by `npm run bench:limit` (docs/benchmarks.md), not by a timed
    // assertion that would flake on a loaded CI machine (seen here: 9.52–9.58/s). This bound only
    // catches a limiter that leaves much of the budget unused (bottleneck's recipe does 2/s).
    expect(runningRate).toBeGreaterThanOrEqual(8);
  });
});
