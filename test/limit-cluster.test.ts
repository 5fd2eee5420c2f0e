/**
 * G1 end to end: three gateways sharing one redis-server, the real SDK signing real HTTP to one
 * emulator, a saturating load spread over all three. Everything is judged at the emulator, by
 * arrival time. The rate it reaches is printed; G2 itself is shown by `npm run bench:limit`.
 */
import { ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ASSOCIATE,
  fleetIds,
  LOAD_KEY,
  LOAD_TOKEN,
  maxIn1000,
  runLoad,
  stallMeter,
  sustainedRate,
} from "./support/fleet.js";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { type Emulator } from "../src/upstream/emulator/index.js";
import { type TestGateway } from "./support/app.js";
import { startLimitFleet, type LimitFleet } from "./support/limit-fleet.js";

const INSTANCES = 60;
const LOAD_MS = 4_500;

let fleet: LimitFleet | undefined;
let emulator: Emulator;
let gateways: TestGateway[] = [];

beforeAll(async () => {
  // One cloud call per request (KEYGATE_BATCH=off), so 30 callers saturate the limiter; merged
  // calls under the same cap are checked in test/batching.test.ts.
  fleet = await startLimitFleet({
    replicas: 3,
    instances: INSTANCES,
    env: { KEYGATE_LOG_LEVEL: "warn", KEYGATE_BATCH: "off" },
  });
  ({ emulator, gateways } = fleet);
});
afterAll(async () => {
  await fleet?.stop();
});

const reasonOf = (err: unknown) => {
  const e = ConnectError.from(err);
  return e.findDetails(ErrorDetailSchema)[0]?.reason ?? `code ${e.code}`;
};

describe("three replicas, one Redis, one cloud", () => {
  it("never more than 10 in any sliding second at the cloud, and every call answered OK", async () => {
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
    // More than one window's worth went through, so the cap above was really under test.
    expect(times.length).toBeGreaterThan(10);
    // G2 (>= 9.5/s) is a timing figure, measured by `npm run bench:limit` (docs/benchmarks.md):
    // throughput floors here failed on a loaded 2-core machine (47 arrivals where 63 were asked).
  });
});
