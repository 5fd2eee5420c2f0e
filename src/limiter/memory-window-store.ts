import type { Clock } from "../core/clock.js";
import type { BucketSpec } from "../core/ports.js";
import { decide, record } from "./window.js";
import type { StoreDecision, WindowStore } from "./window-store.js";

interface MemoryBucket {
  log: number[];
  penaltyUntil: number;
}

/**
 * The single-replica store: the same arithmetic as the Lua script, on the given clock.
 * Idle buckets are dropped once their whole log has left the span, so memory stays bounded.
 */
export function createMemoryWindowStore(options: {
  clock: Clock;
  /**
   * Default true: the first use of a bucket within one span of start-up grants nothing until
   * that span has passed, as a restarted process cannot know what it granted just before
   * (the Redis store does the same after a data loss).
   */
  coldHoldOff?: boolean;
}): WindowStore & { size(): number } {
  const { clock } = options;
  const coldHoldOff = options.coldHoldOff ?? true;
  const startedAt = clock.now();
  const buckets = new Map<string, MemoryBucket>();

  const sweep = (now: number, spanMs: number) => {
    for (const [k, b] of buckets) {
      if ((b.log[0] ?? -Infinity) <= now - spanMs * 2 && b.penaltyUntil <= now) buckets.delete(k);
    }
  };

  const bucketFor = (bucket: BucketSpec): MemoryBucket => {
    let b = buckets.get(bucket.key);
    if (!b) {
      b = { log: coldHoldOff ? Array<number>(bucket.limit).fill(startedAt) : [], penaltyUntil: 0 };
      buckets.set(bucket.key, b);
    }
    return b;
  };

  return {
    tryAcquire(bucket: BucketSpec, spanMs: number): Promise<StoreDecision> {
      const now = clock.now();
      if (buckets.size > 64) sweep(now, spanMs);
      const b = bucketFor(bucket);
      if (now < b.penaltyUntil) return Promise.resolve({ granted: false, waitMs: b.penaltyUntil - now });
      const d = decide(b.log, now, bucket.limit, spanMs);
      if (!d.granted) return Promise.resolve(d);
      record(b.log, d.at, bucket.limit);
      return Promise.resolve({ granted: true, remaining: d.remaining });
    },
    penalize(bucket: BucketSpec, ms: number): Promise<void> {
      const until = clock.now() + Math.max(0, ms);
      const b = bucketFor(bucket);
      b.penaltyUntil = Math.max(b.penaltyUntil, until);
      return Promise.resolve();
    },
    size: () => buckets.size,
  };
}
