import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BucketSpec } from "../src/core/ports.js";
import type { Limiter } from "../src/limiter/limiter.js";
import { limiterOn, memoryBackend, redisBackend } from "../src/backends.js";
import { maxInAnyWindow } from "../src/limiter/window.js";
import { createRedis } from "../src/store/redis.js";
import { whenReady } from "./support/redis-client.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";

const never = new AbortController().signal;
const MARGIN = 40;
let seq = 0;
/** A fresh bucket per test, so tests never share state. */
const freshBucket = (): BucketSpec => ({
  key: `contract-${process.pid}-${seq++}`,
  limit: 10,
  windowMs: 1000,
});

/**
 * The behaviour every RateLimiter must have, run against each implementation. `make` returns
 * a limiter and a second "replica" over the same store.
 */
export function describeLimiterContract(
  name: string,
  make: () => Promise<{ limiter: Limiter; other: Limiter; close: () => Promise<void> }>,
): void {
  describe(`RateLimiter contract: ${name}`, () => {
    let limiter: Limiter;
    let other: Limiter;
    let close: () => Promise<void>;
    beforeAll(async () => {
      ({ limiter, other, close } = await make());
    });
    afterAll(async () => {
      await close();
    });

    it("grants at most `limit` in any window, and all of a small backlog in time", async () => {
      const bucket = freshBucket();
      const times: number[] = [];
      await Promise.all(
        Array.from({ length: 25 }, (_, i) =>
          (i % 2 ? limiter : other)
            .acquire({ bucket, tenant: "t", weight: 1, signal: never })
            .then(() => times.push(Date.now())),
        ),
      );
      times.sort((a, b) => a - b);
      expect(times).toHaveLength(25);
      // Receive times carry event-loop jitter (the margin's job), so check the upstream's own 1000 ms.
      expect(maxInAnyWindow(times, 1000)).toBeLessThanOrEqual(10);
      // The 21st grant cannot come before two spans have passed since the first.
      expect((times[20] ?? 0) - (times[0] ?? 0)).toBeGreaterThanOrEqual(2 * 1000);
    });

    it("refuses at once with retryAfterMs when the turn cannot come before the deadline", async () => {
      const bucket = freshBucket();
      const granted: number[] = [];
      const queued = Array.from({ length: 15 }, () =>
        limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never }).then(() => granted.push(1)),
      );
      let refusedWhileQueued = -1;
      const err = await limiter
        // Same tenant: fair queueing would rightly put another tenant near the front.
        .acquire({ bucket, tenant: "t", weight: 1, signal: never, deadline: Date.now() + 100 })
        .then(
          () => undefined,
          (e: unknown) => {
            refusedWhileQueued = limiter.queueDepth(bucket.key);
            return e;
          },
        );
      expect(err).toMatchObject({ reason: "RATE_LIMITED" });
      expect((err as { retryAfterMs: number }).retryAfterMs).toBeGreaterThan(100);
      expect(refusedWhileQueued).toBeGreaterThan(0);
      await Promise.all(queued);
      expect(granted).toHaveLength(15);
    });

    it("an aborted waiter is removed and rejected with CANCELLED", async () => {
      const bucket = freshBucket();
      const first = Array.from({ length: 10 }, () =>
        limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never }),
      );
      await Promise.all(first);
      const ac = new AbortController();
      const p = limiter.acquire({ bucket, tenant: "t", weight: 1, signal: ac.signal });
      expect(limiter.queueDepth(bucket.key)).toBe(1);
      ac.abort();
      await expect(p).rejects.toMatchObject({ reason: "CANCELLED" });
      expect(limiter.queueDepth(bucket.key)).toBe(0);
    });

    it("a penalty from one replica holds off all, then the full rate comes back", async () => {
      const bucket = freshBucket();
      const before = Date.now();
      await other.penalize(bucket, 600);
      const times: number[] = [];
      await Promise.all(
        Array.from({ length: 10 }, () =>
          limiter
            .acquire({ bucket, tenant: "t", weight: 1, signal: never })
            .then(() => times.push(Date.now())),
        ),
      );
      expect(Math.min(...times)).toBeGreaterThanOrEqual(before + 600 - 5);
      // All ten in one go once the penalty ended: no lingering slow-down.
      expect(Math.max(...times) - Math.min(...times)).toBeLessThan(1000);
    });

    it("a token is not spent by a refusal", async () => {
      const bucket = freshBucket();
      await expect(
        limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never, deadline: Date.now() - 1 }),
      ).rejects.toMatchObject({ reason: "RATE_LIMITED" });
      await Promise.all(
        Array.from({ length: 10 }, () => limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never })),
      );
    });
  });
}

describeLimiterContract("memory", () => {
  // One process = one store: both "replicas" are the same limiter here.
  const limiter = limiterOn(memoryBackend, { marginMs: MARGIN, coldHoldOff: false });
  return Promise.resolve({ limiter, other: limiter, close: () => limiter.close() });
});

let redis: RedisProcess;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis.stop();
});

describeLimiterContract("redis", async () => {
  const a = await whenReady(createRedis(redis.url, { connectionName: "contract-a" }));
  const b = await whenReady(createRedis(redis.url, { connectionName: "contract-b" }));
  const opts = { marginMs: MARGIN, keyPrefix: `t${process.pid}`, coldHoldOff: false };
  const limiter = limiterOn(redisBackend(a), opts);
  const other = limiterOn(redisBackend(b), opts);
  return {
    limiter,
    other,
    close: async () => {
      await limiter.close();
      await other.close();
      a.disconnect();
      b.disconnect();
    },
  };
});
