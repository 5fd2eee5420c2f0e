import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isKeygateError } from "../src/core/errors.js";
import type { BucketSpec } from "../src/core/ports.js";
import { limiterOn, redisBackend } from "../src/backends.js";
import { maxInAnyWindow } from "../src/limiter/window.js";
import { createRedis } from "../src/store/redis.js";
import { sustainedRate } from "./support/fleet.js";
import { whenReady } from "./support/redis-client.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";
import { pollUntil, sleep } from "./support/wait.js";

const never = new AbortController().signal;
const MARGIN = 40;

let redis: RedisProcess;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis.stop();
});

describe("Redis limiter, several replicas sharing one Redis", () => {
  // The sustained rate (G2, >= 9.5/s) is a timing figure: `npm run bench:limit` shows it, not a test.
  it("saturated: never more than 10 in any sliding second, and every caller is served", async () => {
    const REPLICAS = 4;
    const CALLERS = 5;
    const DURATION = 3300;
    const bucket: BucketSpec = { key: "cred-1/cvm.tencentcloudapi.com/Associate", limit: 10, windowMs: 1000 };
    const clients = await Promise.all(
      Array.from({ length: REPLICAS }, (_, i) =>
        whenReady(createRedis(redis.url, { connectionName: `r${i}` })),
      ),
    );
    let wasted = 0;
    const limiters = clients.map((client) =>
      limiterOn(redisBackend(client), {
        keyPrefix: "sat",
        marginMs: MARGIN,
        coldHoldOff: false,
        hooks: { onWastedGrant: () => wasted++ },
      }),
    );
    const times: number[] = [];
    const served = Array.from({ length: REPLICAS * CALLERS }, () => 0);
    let attempts = 0;
    let refused = 0;
    const start = Date.now();
    // Each caller keeps the window saturated for DURATION and until it was served once; the
    // 30 s bound only stops a broken limiter from hanging the file.
    const caller = async (i: number) => {
      const limiter = limiters[i % REPLICAS]!;
      while ((Date.now() < start + DURATION || served[i] === 0) && Date.now() < start + 30_000) {
        attempts++;
        try {
          await limiter.acquire({
            bucket,
            tenant: `t${i % 3}`,
            weight: 1,
            signal: never,
            deadline: Date.now() + 10_000,
          });
          times.push(Date.now());
          served[i]! += 1;
        } catch (e) {
          if (!isKeygateError(e) || e.reason !== "RATE_LIMITED") throw e;
          refused++;
          await sleep(Math.min(50, e.retryAfterMs ?? 50));
        }
      }
    };
    await Promise.all(served.map((_, i) => caller(i)));
    await Promise.all(limiters.map((l) => l.close()));
    for (const c of clients) c.disconnect();

    console.log(
      `replicas=${REPLICAS} callers=${served.length} grants=${times.length} refused=${refused} in ${Date.now() - start} ms, ` +
        `max in 1000 ms=${maxInAnyWindow(times, 1000)}, max in 1040 ms=${maxInAnyWindow(times, 1000 + MARGIN)}, ` +
        `sustained=${sustainedRate(times.filter((t) => t < start + DURATION)).toFixed(2)}/s (saturated part), wasted=${wasted}`,
    );
    expect(maxInAnyWindow(times, 1000)).toBeLessThanOrEqual(10);
    expect(served.filter((n) => n === 0)).toEqual([]);
    expect(times.length + refused).toBe(attempts);
    // Saturated for over three spans: more than one window's worth went through.
    expect(times.length).toBeGreaterThan(10);
  });

  it("a burst of 25 with a 1.8 s deadline: 10 to 20 granted, the rest RATE_LIMITED, nothing else", async () => {
    const clients = await Promise.all(
      [0, 1].map((i) => whenReady(createRedis(redis.url, { connectionName: `burst${i}` }))),
    );
    const limiters = clients.map((client) =>
      limiterOn(redisBackend(client), { keyPrefix: "burst", marginMs: MARGIN, coldHoldOff: false }),
    );
    const bucket: BucketSpec = { key: "cred-4/ep/Associate", limit: 10, windowMs: 1000 };
    const deadline = Date.now() + 1_800;
    const outcomes = await Promise.all(
      Array.from({ length: 25 }, (_, i) =>
        limiters[i % 2]!.acquire({ bucket, tenant: "t", weight: 1, signal: never, deadline }).then(
          () => "granted",
          (e: unknown) => (isKeygateError(e) ? e.reason : String(e)),
        ),
      ),
    );
    await Promise.all(limiters.map((l) => l.close()));
    for (const c of clients) c.disconnect();
    const granted = outcomes.filter((o) => o === "granted").length;
    const refused = outcomes.filter((o) => o === "RATE_LIMITED").length;
    expect(granted + refused).toBe(25);
    // The empty window grants 10 at once; 1.8 s holds at most two windows' worth (the third span
    // starts at 2 x 1040 ms), so at least 5 callers must be refused.
    expect(granted).toBeGreaterThanOrEqual(10);
    expect(granted).toBeLessThanOrEqual(20);
    expect(refused).toBeGreaterThanOrEqual(5);
  });

  it("keeps a bucket's keys in one hash slot and lets them expire", async () => {
    const client = await whenReady(createRedis(redis.url));
    const limiter = limiterOn(redisBackend(client), { keyPrefix: "ttl", coldHoldOff: false });
    const bucket: BucketSpec = { key: "cred-2/ep/Associate", limit: 10, windowMs: 1000 };
    await limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never });
    await limiter.penalize(bucket, 200);
    const w = await client.pttl("ttl:{cred-2/ep/Associate}:window");
    const p = await client.pttl("ttl:{cred-2/ep/Associate}:penalty");
    expect(w).toBeGreaterThan(0);
    expect(w).toBeLessThanOrEqual(2 * (1000 + MARGIN));
    expect(p).toBeGreaterThan(0);
    expect(p).toBeLessThanOrEqual(200);
    await limiter.close();
    client.disconnect();
  });
});

describe("Redis limiter when Redis goes away", () => {
  it("fails closed with STORE_UNAVAILABLE, fails waiters, and recovers by itself without a burst", async () => {
    const own = await startRedis();
    try {
      const client = await whenReady(createRedis(own.url, { connectionName: "outage" }));
      const limiter = limiterOn(redisBackend(client), { keyPrefix: "outage", marginMs: MARGIN });
      const bucket: BucketSpec = { key: "cred-3/ep/Associate", limit: 10, windowMs: 1000 };
      const grants: number[] = [];
      const take = () =>
        limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never }).then(() => {
          grants.push(Date.now());
        });
      const firstCall = Date.now();
      await Promise.all(Array.from({ length: 10 }, take));
      // Cold start: a bucket with no log waits one span, as grants may predate a data loss.
      expect(Math.min(...grants)).toBeGreaterThanOrEqual(firstCall + 1000 + MARGIN - 5);

      const waiting = Array.from({ length: 5 }, () =>
        take().then(
          () => "granted",
          (e: unknown) => e,
        ),
      );
      await own.kill();
      const outcomes = await Promise.all(waiting);
      expect(outcomes.filter((o) => isKeygateError(o) && o.reason === "STORE_UNAVAILABLE")).toHaveLength(5);
      await expect(take()).rejects.toMatchObject({ reason: "STORE_UNAVAILABLE" });
      expect(limiter.queueDepth()).toBe(0);

      await own.restart();
      await pollUntil(() => client.status === "ready", "the Redis client reconnected", 10_000);
      const back = Date.now();
      await Promise.all(Array.from({ length: 10 }, take));
      // Redis lost the log: the first grant after it is one span later, never a burst into the old window.
      expect(grants.filter((t) => t >= back).every((t) => t >= back + 1000 + MARGIN - 5)).toBe(true);
      expect(maxInAnyWindow(grants, 1000)).toBeLessThanOrEqual(10);
      await limiter.close();
      client.disconnect();
    } finally {
      await own.stop();
    }
  });
});
