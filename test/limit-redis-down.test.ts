/**
 * Redis goes away under a running gateway: calls fail closed with UNAVAILABLE STORE_UNAVAILABLE,
 * nothing reaches the cloud, readiness turns NOT_SERVING while liveness stays SERVING, and the
 * gateway works again by itself once Redis is back.
 */
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ASSOCIATE, maxIn1000 } from "./support/fleet.js";
import { pollUntil } from "./support/wait.js";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../src/gen/health/v1/health_pb.js";
import { ErrorDetailSchema } from "../src/gen/keygate/v1/keygate_pb.js";
import { type Emulator } from "../src/upstream/emulator/index.js";
import { type TestGateway } from "./support/app.js";
import { fleetCaller, startLimitFleet, type LimitFleet } from "./support/limit-fleet.js";
import type { RedisProcess } from "./support/redis-server.js";

let fleet: LimitFleet | undefined;
let redis: RedisProcess;
let emulator: Emulator;
let gateways: TestGateway[] = [];

beforeAll(async () => {
  // One cloud call per request (KEYGATE_BATCH=off): the 12 calls after the restart must meet the
  // limiter one by one, not ride in two merged calls.
  fleet = await startLimitFleet({ replicas: 2, instances: 20, env: { KEYGATE_BATCH: "off" } });
  ({ redis, emulator, gateways } = fleet);
});
afterAll(async () => {
  await fleet?.stop();
});

const call = fleetCaller(20);
const health = (g: TestGateway, service: string) =>
  createClient(Health, createGrpcTransport({ baseUrl: g.url }))
    .check({ service })
    .then((r) => r.status);
const serving = async (status: Status) =>
  (await Promise.all(gateways.map((g) => health(g, "")))).every((s) => s === status);

describe("Redis goes down and comes back", () => {
  it("fails closed with STORE_UNAVAILABLE, sends nothing, reports NOT_SERVING, then recovers by itself", async () => {
    // Working before the outage (the first call of the bucket waits out the cold hold-off).
    await Promise.all(gateways.map((g) => call(g)));
    expect(await serving(Status.SERVING)).toBe(true);

    await redis.kill();
    await pollUntil(() => serving(Status.NOT_SERVING), "NOT_SERVING", 10_000, 50);
    const mark = emulator.stats.arrivals.length;

    const outcomes = await Promise.all(
      Array.from({ length: 12 }, (_, i) => call(gateways[i % gateways.length]!).catch((e: unknown) => e)),
    );
    const codes = outcomes.map((e) => ConnectError.from(e).code);
    const reasons = outcomes.map((e) => ConnectError.from(e).findDetails(ErrorDetailSchema)[0]?.reason);
    const during = emulator.stats.arrivals.slice(mark);
    const live = await Promise.all(gateways.map((g) => health(g, "liveness")));
    const ready = await Promise.all(gateways.map((g) => health(g, "")));
    console.log(
      `limit-redis-down: during the outage ${JSON.stringify(reasons)}, ${during.length} arrivals upstream, ` +
        `readiness ${JSON.stringify(ready)}, liveness ${JSON.stringify(live)}`,
    );

    expect(codes.every((c) => c === Code.Unavailable)).toBe(true);
    expect(reasons.every((r) => r === "STORE_UNAVAILABLE")).toBe(true);
    // Nothing at all reached the cloud: no associate, and no DescribeInstances either.
    expect(during).toHaveLength(0);
    // Kubernetes takes the pods out of the Service but does not restart them.
    expect(ready.every((s) => s === Status.NOT_SERVING)).toBe(true);
    expect(live.every((s) => s === Status.SERVING)).toBe(true);

    await redis.restart();
    await pollUntil(() => serving(Status.SERVING), "SERVING again", 15_000, 50);
    const back = emulator.stats.arrivals.length;
    // Works again with no operator action; the empty (restarted) Redis holds off one window first.
    const after = await Promise.all(Array.from({ length: 12 }, (_, i) => call(gateways[i % 2]!, 15_000)));
    const times = emulator.stats.arrivals
      .slice(back)
      .filter((a) => a.action === ASSOCIATE)
      .map((a) => a.at);
    console.log(`limit-redis-down: after restart ${after.length} ok, max in 1000 ms ${maxIn1000(times)}`);
    expect(after.every((r) => r.requestId !== "")).toBe(true);
    expect(times).toHaveLength(12);
    expect(maxIn1000(times)).toBeLessThanOrEqual(10);
  });
});
