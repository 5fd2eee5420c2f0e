/**
 * A hung or lost Redis under two running gateways (real redis-server, SIGSTOP / SIGKILL):
 * readiness follows command latency, calls fail within one store timeout instead of a chain of
 * them, and after Redis comes back empty the first OK comes within 1.5 s without a burst over
 * the cloud's 10 per sliding second.
 */
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../src/gen/health/v1/health_pb.js";
import { ErrorDetailSchema } from "../src/gen/keygate/v1/keygate_pb.js";
import type { TestGateway } from "./support/app.js";
import { ASSOCIATE, maxIn1000 } from "./support/fleet.js";
import { fleetCaller, startLimitFleet, type LimitFleet } from "./support/limit-fleet.js";
import { pollUntil, sleep } from "./support/wait.js";

const STORE_TIMEOUT_MS = 1_000;
let fleet: LimitFleet;

beforeAll(async () => {
  fleet = await startLimitFleet({
    replicas: 2,
    instances: 40,
    env: { KEYGATE_STORE_TIMEOUT_MS: String(STORE_TIMEOUT_MS) },
  });
});
afterAll(async () => {
  try {
    process.kill(fleet.redis.pid, "SIGCONT");
  } catch {
    /* not stopped, or gone */
  }
  await fleet?.stop();
});

const call = fleetCaller(40);
const readiness = (g: TestGateway) =>
  createClient(Health, createGrpcTransport({ baseUrl: g.url }))
    .check({ service: "" })
    .then((r) => r.status);
const all = async (status: Status) =>
  (await Promise.all(fleet.gateways.map(readiness))).every((s) => s === status);
const reasonOf = (e: unknown) => ConnectError.from(e).findDetails(ErrorDetailSchema)[0]?.reason;

describe("a hung Redis", () => {
  it("turns readiness NOT_SERVING, fails calls within one store timeout, and serves again after SIGCONT", async () => {
    const [g0, g1] = fleet.gateways as [TestGateway, TestGateway];
    await Promise.all([call(g0), call(g1)]);
    expect(await all(Status.SERVING)).toBe(true);

    // Calls in flight when Redis stops, then calls that arrive during the stall.
    const stoppedAt = Date.now();
    const inflight = [g0, g1, g0, g1].map((g) =>
      call(g).then(
        () => ({ ok: true, ms: Date.now() - stoppedAt }),
        (e: unknown) => ({ ok: false, ms: Date.now() - stoppedAt, reason: reasonOf(e) }),
      ),
    );
    process.kill(fleet.redis.pid, "SIGSTOP");
    try {
      await pollUntil(() => all(Status.NOT_SERVING), "NOT_SERVING during the stall", 5_000, 50);
      const notServingMs = Date.now() - stoppedAt;
      const ended = await Promise.all(inflight);
      const t0 = Date.now();
      const during = await Promise.all(
        [g0, g1, g0, g1].map((g) =>
          call(g).then(
            () => ({ ok: true, ms: Date.now() - t0 }),
            (e: unknown) => ({
              ok: false,
              ms: Date.now() - t0,
              code: ConnectError.from(e).code,
              reason: reasonOf(e),
            }),
          ),
        ),
      );
      console.log(
        `store-hang: NOT_SERVING after ${notServingMs} ms; in flight ${JSON.stringify(ended)}; during ${JSON.stringify(during)}`,
      );
      // Before: 2–8 s (chained 2 s command timeouts, commands resent on the next connection).
      for (const e of ended) expect(e.ms).toBeLessThan(2 * STORE_TIMEOUT_MS);
      for (const d of during) {
        expect(d).toMatchObject({ ok: false, code: Code.Unavailable, reason: "STORE_UNAVAILABLE" });
        expect(d.ms).toBeLessThan(STORE_TIMEOUT_MS);
      }
      // It stays not ready while the stall lasts (reconnects to a stopped server do not count).
      await sleep(1_500);
      expect(await all(Status.NOT_SERVING)).toBe(true);
    } finally {
      process.kill(fleet.redis.pid, "SIGCONT");
    }
    await pollUntil(() => all(Status.SERVING), "SERVING after SIGCONT", 10_000, 50);
    await expect(call(g0)).resolves.toMatchObject({ requestId: expect.any(String) as string });
  });
});

describe("Redis lost and back empty", () => {
  it("first OK within 1.5 s after Redis is back, and never more than 10 in any sliding 1000 ms at the cloud", async () => {
    const { emulator, redis } = fleet;
    const [g0, g1] = fleet.gateways as [TestGateway, TestGateway];
    await Promise.all([call(g0), call(g1)]);
    const mark = emulator.stats.arrivals.length;
    const oks: number[] = [];
    let stop = false;
    const pending: Promise<unknown>[] = [];
    // Offered load a little above the limit, so that grants go out right up to the loss.
    const load = (async () => {
      for (let i = 0; !stop; i++) {
        pending.push(
          call(i % 2 === 0 ? g0 : g1, 5_000).then(
            () => oks.push(Date.now()),
            () => undefined,
          ),
        );
        await sleep(80);
      }
    })();
    await sleep(1_500);
    await redis.kill();
    await sleep(2_000);
    await redis.restart();
    const backAt = Date.now();
    await pollUntil(() => oks.some((t) => t > backAt), "an OK after Redis is back", 10_000);
    await sleep(2_000);
    stop = true;
    await load;
    await Promise.all(pending);

    const firstOkMs = Math.min(...oks.filter((t) => t > backAt)) - backAt;
    const arrivals = emulator.stats.arrivals
      .slice(mark)
      .filter((a) => a.action === ASSOCIATE)
      .map((a) => a.at);
    const max = maxIn1000(arrivals);
    console.log(
      `store-recovery: first OK ${firstOkMs} ms after Redis was back; ${arrivals.length} sent, max in 1000 ms ${max}`,
    );
    expect(firstOkMs).toBeLessThanOrEqual(1_500);
    expect(max).toBeLessThanOrEqual(10);
    // Load really ran on both sides of the outage.
    expect(oks.filter((t) => t < backAt).length).toBeGreaterThan(5);
    expect(oks.filter((t) => t > backAt).length).toBeGreaterThan(5);
  });
});
