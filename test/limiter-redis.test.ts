import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isKeygateError } from "../src/core/errors.js";
import type { BucketSpec } from "../src/core/ports.js";
import { createRedisLimiter } from "../src/limiter/redis-limiter.js";
import { maxInAnyWindow } from "../src/limiter/window.js";
import { createRedis, type RedisClient } from "../src/store/redis.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";
import { pollUntil } from "./support/wait.js";

const never = new AbortController().signal;
const MARGIN = 40;

async function connected(client: RedisClient): Promise<RedisClient> {
  client.on("error", () => undefined); // reconnect noise is expected here
  if (client.status !== "ready") await new Promise((r) => client.once("ready", r));
  return client;
}

let redis: RedisProcess;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis.stop();
});

describe("Redis limiter, several replicas sharing one Redis", () => {
  it("saturated: never more than 10 in any sliding second, and at least 9.5/s", async () => {
    const REPLICAS = 4;
    const CALLERS = 20;
    const DURATION = 3300;
    const bucket: BucketSpec = { key: "cred-1/cvm.tencentcloudapi.com/Associate", limit: 10, windowMs: 1000 };
    const clients = await Promise.all(
      Array.from({ length: REPLICAS }, (_, i) =>
        connected(createRedis(redis.url, { connectionName: `r${i}` })),
      ),
    );
    let wasted = 0;
    const limiters = clients.map((client) =>
      createRedisLimiter({
        client,
        keyPrefix: "sat",
        marginMs: MARGIN,
        coldHoldOff: false,
        hooks: { onWastedGrant: () => wasted++ },
      }),
    );
    const times: number[] = [];
    const start = Date.now();
    const caller = async (i: number) => {
      const limiter = limiters[i % REPLICAS];
      if (!limiter) return;
      while (Date.now() < start + DURATION) {
        try {
          await limiter.acquire({
            bucket,
            tenant: `t${i % 3}`,
            weight: 1,
            signal: never,
            deadline: start + DURATION,
          });
          const now = Date.now();
          if (now < start + DURATION) times.push(now);
        } catch (e) {
          if (!isKeygateError(e) || e.reason !== "RATE_LIMITED") throw e;
          await new Promise((r) => setTimeout(r, Math.min(50, e.retryAfterMs ?? 50)));
        }
      }
    };
    await Promise.all(Array.from({ length: REPLICAS * CALLERS }, (_, i) => caller(i)));
    await Promise.all(limiters.map((l) => l.close()));
    for (const c of clients) c.disconnect();

    times.sort((a, b) => a - b);
    const first = times[0] ?? 0;
    const last = times[times.length - 1] ?? 0;
    const sustained = ((times.length - 10) / (last - first)) * 1000;
    // The tightest 11 consecutive grants: how far above 1000 ms the cap held (the jitter budget left).
    let tightest = Infinity;
    for (let i = 0; i + 10 < times.length; i++)
      tightest = Math.min(tightest, (times[i + 10] ?? 0) - (times[i] ?? 0));
    console.log(
      `replicas=${REPLICAS} grants=${times.length} in ${DURATION} ms, max in 1000 ms=${maxInAnyWindow(times, 1000)}, ` +
        `max in 1040 ms=${maxInAnyWindow(times, 1000 + MARGIN)}, sustained=${sustained.toFixed(2)}/s, wasted=${wasted}, tightest 11 span=${tightest} ms`,
    );
    expect(maxInAnyWindow(times, 1000)).toBeLessThanOrEqual(10);
    // Bursts of 10 every span (plus a little dispatch overhead): a count, not a timing.
    expect(times.length).toBeGreaterThanOrEqual(
      10 * (1 + Math.floor((DURATION - 50) / (1000 + MARGIN + 10))),
    );
    // Seen 9.58/s; the bound leaves a loaded CI machine room (G2 itself: `npm run bench:limit`).
    expect(sustained).toBeGreaterThanOrEqual(9);
  });

  it("keeps a bucket's keys in one hash slot and lets them expire", async () => {
    const client = await connected(createRedis(redis.url));
    const limiter = createRedisLimiter({ client, keyPrefix: "ttl", coldHoldOff: false });
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
      const client = await connected(createRedis(own.url, { connectionName: "outage" }));
      const limiter = createRedisLimiter({ client, keyPrefix: "outage", marginMs: MARGIN });
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
      expect(outcomes).toHaveLength(5);
      for (const o of outcomes) expect(o).toMatchObject({ reason: "STORE_UNAVAILABLE" });
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
