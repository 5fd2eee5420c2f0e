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
export function createMemoryWindowStore(options: { clock: Clock }): WindowStore & { size(): number } {
  const { clock } = options;
  const buckets = new Map<string, MemoryBucket>();

  const sweep = (now: number, spanMs: number) => {
    for (const [k, b] of buckets) {
      if ((b.log[0] ?? -Infinity) <= now - spanMs * 2 && b.penaltyUntil <= now) buckets.delete(k);
    }
  };

  return {
    tryAcquire(bucket: BucketSpec, spanMs: number): Promise<StoreDecision> {
      const now = clock.now();
      if (buckets.size > 64) sweep(now, spanMs);
      let b = buckets.get(bucket.key);
      if (!b) {
        b = { log: [], penaltyUntil: 0 };
        buckets.set(bucket.key, b);
      }
      if (now < b.penaltyUntil) return Promise.resolve({ granted: false, waitMs: b.penaltyUntil - now });
      const d = decide(b.log, now, bucket.limit, spanMs);
      if (!d.granted) return Promise.resolve(d);
      record(b.log, d.at, bucket.limit);
      return Promise.resolve({ granted: true, remaining: d.remaining });
    },
    penalize(bucket: BucketSpec, ms: number): Promise<void> {
      const until = clock.now() + Math.max(0, ms);
      const b = buckets.get(bucket.key) ?? { log: [], penaltyUntil: 0 };
      b.penaltyUntil = Math.max(b.penaltyUntil, until);
      buckets.set(bucket.key, b);
      return Promise.resolve();
    },
    size: () => buckets.size,
  };
}
