import type { Clock } from "../core/clock.js";
import type { BucketSpec } from "../core/ports.js";
import { decide, record, shiftSlot } from "./window.js";
import type { BookingOptions, StoreDecision, WindowStore } from "./window-store.js";

interface MemoryBucket {
  log: number[];
  penaltyUntil: number;
}

/**
 * The single-replica store: the same arithmetic as the Lua script (slots booked up to a horizon
 * ahead, penalty included), on the given clock.
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
  /**
   * The booking horizon the limiter uses (default 0): the cold log is taken as full at start-up
   * plus this much, as the previous process may have booked slots up to that far ahead.
   */
  horizonMs?: number;
}): WindowStore & { size(): number } {
  const { clock } = options;
  const coldHoldOff = options.coldHoldOff ?? true;
  const startedAt = clock.now();
  const coldAheadMs = Math.max(0, options.horizonMs ?? 0);
  const buckets = new Map<string, MemoryBucket>();

  const sweep = (now: number, spanMs: number) => {
    for (const [k, b] of buckets) {
      if ((b.log[0] ?? -Infinity) <= now - spanMs * 2 && b.penaltyUntil <= now) buckets.delete(k);
    }
  };

  const bucketFor = (bucket: BucketSpec): MemoryBucket => {
    let b = buckets.get(bucket.key);
    if (!b) {
      const cold = coldHoldOff ? Array<number>(bucket.limit).fill(startedAt + coldAheadMs) : [];
      b = { log: cold, penaltyUntil: 0 };
      buckets.set(bucket.key, b);
    }
    return b;
  };

  return {
    tryAcquire(bucket: BucketSpec, spanMs: number, booking: BookingOptions = {}): Promise<StoreDecision> {
      const horizonMs = booking.horizonMs ?? 0;
      const now = clock.now();
      if (buckets.size > 64) sweep(now, spanMs + horizonMs);
      const b = bucketFor(bucket);
      const d = decide(b.log, now, bucket.limit, spanMs, horizonMs, b.penaltyUntil, booking.gapMs ?? 0);
      if (!d.granted) return Promise.resolve({ ...d, storeNow: now });
      record(b.log, d.at, bucket.limit);
      return Promise.resolve({
        granted: true,
        remaining: d.remaining,
        delayMs: d.delayMs,
        slot: d.at,
        storeNow: now,
      });
    },
    penalize(bucket: BucketSpec, ms: number): Promise<void> {
      const until = clock.now() + Math.max(0, ms);
      const b = bucketFor(bucket);
      b.penaltyUntil = Math.max(b.penaltyUntil, until);
      return Promise.resolve();
    },
    shift(bucket: BucketSpec, slot: number, lateMs: number): Promise<void> {
      const b = buckets.get(bucket.key);
      if (b) shiftSlot(b.log, slot, lateMs, bucket.limit);
      return Promise.resolve();
    },
    size: () => buckets.size,
  };
}
