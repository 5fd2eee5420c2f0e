/**
 * When the cloud says RequestLimitExceeded (someone outside keygate spent the quota), every
 * replica holds off, the refused calls are retried within their deadline, and the full rate
 * comes back. A caller whose turn cannot come before its deadline is refused at once.
 */
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ASSOCIATE,
  fleetIds,
  LOAD_KEY,
  LOAD_TOKEN,
  maxIn1000,
  runLoad,
  shanghaiId,
  sustainedRate,
} from "./support/fleet.js";
import { pollUntil } from "./support/wait.js";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { EMULATOR_SECRET_ID, type Emulator } from "../src/upstream/emulator/index.js";
import { createRedis, type RedisClient } from "../src/store/redis.js";
import { secretIdentity } from "../src/upstream/tencent-upstream.js";
import { type TestGateway } from "./support/app.js";
import { startLimitFleet, type LimitFleet } from "./support/limit-fleet.js";
import { whenReady } from "./support/redis-client.js";

const INSTANCES = 80;

let fleet: LimitFleet | undefined;
let emulator: Emulator;
let gateways: TestGateway[] = [];
let store: RedisClient;

beforeAll(async () => {
  // The load tenant's policy selects by tag: without its lookup budget, its calls reach the token
  // queue as fast as they come, which is what these tests need to build a queue. One cloud call
  // per request (KEYGATE_BATCH=off): merged calls would carry the queue in a few tokens.
  fleet = await startLimitFleet({
    replicas: 3,
    instances: INSTANCES,
    env: { KEYGATE_LOOKUP_RATE_PER_TENANT: "0", KEYGATE_BATCH: "off" },
  });
  ({ emulator, gateways } = fleet);
  store = await whenReady(createRedis(fleet.redis.url));
});
afterAll(async () => {
  store?.disconnect();
  await fleet?.stop();
});

const auth = { authorization: `Bearer ${LOAD_TOKEN}` };
const clients = () =>
  gateways.map((g) =>
    createClient(KeyPairService, createConnectTransport({ baseUrl: g.url, httpVersion: "2" })),
  );
const detailOf = (err: unknown) => ConnectError.from(err).findDetails(ErrorDetailSchema)[0];
const reasonOf = (err: unknown) => detailOf(err)?.reason ?? `code ${ConnectError.from(err).code}`;
const ids = fleetIds(INSTANCES);
let next = 0;
/** Saturating load over all three replicas; each call takes the next instance of the fleet. */
const startLoad = (ms: number, maxCalls: number) => {
  const cs = clients();
  return runLoad({
    callers: 30,
    untilMs: Date.now() + ms,
    maxCalls,
    reasonOf,
    call: (caller) =>
      cs[caller % cs.length]!.associateKeyPairs(
        { region: "ap-guangzhou", instanceIds: [ids[next++ % ids.length]!], keyIds: [LOAD_KEY] },
        { headers: auth, timeoutMs: 20_000 },
      ),
  });
};
/** The AssociateInstancesKeyPairs bucket every replica shares (credential + endpoint + action). */
const BUCKET = `${secretIdentity(EMULATOR_SECRET_ID)}:cvm.tencentcloudapi.com:${ASSOCIATE}`;
const associates = (from: number) =>
  emulator.stats.arrivals.slice(from).filter((a) => a.action === ASSOCIATE);

describe("the cloud says RequestLimitExceeded", () => {
  it("every replica holds off, the refused calls are retried and succeed, the full rate comes back", async () => {
    const mark = emulator.stats.arrivals.length;
    const load = startLoad(6_000, 300);
    // Once the load is saturating (past the cold hold-off), the next two calls to reach the cloud are refused.
    await pollUntil(() => associates(mark).length >= 15, "15 calls at the emulator", 15_000);
    const depths = gateways.map((g) => g.app.limiter.queueDepth(BUCKET));
    emulator.faults.set({ rules: [{ kind: "requestLimitExceeded", action: ASSOCIATE, next: 2 }] });
    // The hold-off every replica obeys: the shared penalty key (Redis time until which grants are refused).
    const penalties = new Set<number>();
    const watch = async () => {
      const until = Date.now() + 8_000;
      while (Date.now() < until && penalties.size < 2) {
        const v = await store.get(`keygate:{${BUCKET}}:penalty`);
        if (v !== null) penalties.add(Number(v));
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    const [result] = await Promise.all([load, watch()]);

    const all = associates(mark);
    const times = all.map((a) => a.at);
    const refused = all.filter((a) => a.outcome === "RequestLimitExceeded");
    const holdOffEnd = Math.max(...penalties, ...refused.map((a) => a.at + 1_000));
    const after = (t: number, ms: number) => times.filter((x) => x > t && x < t + ms).length;
    // Grants given before a penalty was set may still arrive just after it (same bunch, ≤ ~40 ms on the
    // way); after that nothing may arrive until the penalty ends.
    const duringHoldOff = [...penalties].map((p) => times.filter((t) => t > p - 900 && t < p).length);
    const recovered = times.filter((t) => t >= holdOffEnd);
    const attempts = gateways
      .flatMap((g) => g.logs.audits())
      .filter((a) => a.region === "ap-guangzhou" && a.decision === "allowed")
      .map((a) => Number(a.attempts));
    console.log(
      `limit-backoff: queue depths at the fault ${JSON.stringify(depths)}, ${result.ok} ok, ` +
        `failed ${JSON.stringify(result.failed)}, ${times.length} arrivals, refused at +${refused
          .map((a) => a.at - Math.min(...times))
          .join(",+")} ms, arrivals in the 1000 ms after each refusal ${refused
          .map((a) => after(a.at, 1_000))
          .join(",")}, max in 1000 ms ${maxIn1000(times)}, penalties until +${[...penalties]
          .map((p) => p - Math.min(...times))
          .join(
            ",+",
          )} ms with ${duringHoldOff.join(",")} arrivals in their last 900 ms, after the hold-off ${recovered.length} arrivals at ` +
        `${sustainedRate(recovered).toFixed(2)}/s`,
    );

    // Every replica had callers waiting when the cloud refused (so silence at the cloud = all held off).
    expect(depths.every((d) => d > 0)).toBe(true);
    expect(refused).toHaveLength(2);
    // Retries spend tokens like first attempts: still never more than 10 in any sliding second.
    expect(maxIn1000(times)).toBeLessThanOrEqual(10);
    // Held off: a penalty was set in the shared store, and no replica sent anything while it held.
    expect(penalties.size).toBeGreaterThan(0);
    expect(Math.min(...penalties)).toBeGreaterThan(Math.min(...refused.map((a) => a.at)));
    expect(duringHoldOff.every((n) => n === 0)).toBe(true);
    // Retried within the deadline and answered OK: one extra attempt per refusal.
    expect(result.failed).toEqual({});
    expect(times.length).toBe(result.ok + refused.length);
    expect(attempts.reduce((s, a) => s + (a - 1), 0)).toBe(refused.length);
    // The full rate comes back once the hold-off is over.
    expect(recovered.length).toBeGreaterThanOrEqual(20);
    // Loose on purpose (seen 9.5/s; once 7.2/s on a loaded machine): it shows the rate comes back
    // instead of staying held off; the exact figure is the benchmark's job.
    expect(sustainedRate(recovered)).toBeGreaterThanOrEqual(6);
    expect(emulator.faults.pick(ASSOCIATE)).toBeUndefined();
  });
});

describe("a turn that cannot come before the deadline", () => {
  it("is refused RESOURCE_EXHAUSTED RATE_LIMITED with retry_after_ms at once, and spends no token", async () => {
    const mark = emulator.stats.arrivals.length;
    const load = startLoad(2_500, 150);
    const gw = gateways[0]!;
    // Wait for a deep queue on this replica: ~10 callers in front at ~10 grants/s shared by 3 replicas.
    await pollUntil(() => gw.app.limiter.queueDepth(BUCKET) >= 8, "8 callers queued", 10_000);
    const depth = gw.app.limiter.queueDepth(BUCKET);
    // A different region, so its arrival (if any) is told apart: it shares the same bucket all the same.
    const client = clients()[0]!;
    const t0 = Date.now();
    const err = await client
      .associateKeyPairs(
        { region: "ap-shanghai", instanceIds: [shanghaiId(1)], keyIds: [LOAD_KEY] },
        { headers: auth, timeoutMs: 300 },
      )
      .catch((e: unknown) => e);
    const tookMs = Date.now() - t0;
    const result = await load;
    const shanghai = emulator.stats.arrivals
      .slice(mark)
      .filter((a) => a.action === ASSOCIATE && a.region === "ap-shanghai");
    const audit = gw.logs.audits().find((a) => a.region === "ap-shanghai");
    console.log(
      `limit-backoff: probe behind ${depth} waiters answered in ${tookMs} ms: ${ConnectError.from(err).code} ` +
        `${detailOf(err)?.reason ?? ""} retry_after_ms=${detailOf(err)?.retryAfterMs ?? ""}; load ${result.ok} ok`,
    );

    expect(ConnectError.from(err).code).toBe(Code.ResourceExhausted);
    expect(detailOf(err)?.reason).toBe("RATE_LIMITED");
    expect(detailOf(err)?.retryAfterMs).toBeGreaterThan(0);
    // No token: it never reached the cloud and made no attempt.
    expect(shanghai).toHaveLength(0);
    expect(audit?.attempts).toBe(0);
    expect(audit?.limiterWaitMs).toBe(0);
    expect(result.failed).toEqual({});
  });
});
