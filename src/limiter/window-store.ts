import type { BucketSpec } from "../core/ports.js";

/** What a store answers for one atomic decision: granted now, or try again in `waitMs`. */
export type StoreDecision = { granted: true; remaining: number } | { granted: false; waitMs: number };

/**
 * The shared part of the limiter: one atomic sliding-window decision per call. Redis
 * implements it for several replicas, memory for one; the scheduler above is the same.
 * Implementations throw (any error) when the store cannot be reached.
 */
export interface WindowStore {
  tryAcquire(bucket: BucketSpec, spanMs: number): Promise<StoreDecision>;
  /** Every replica refuses grants on `bucket` for the next `ms` (the upstream said RequestLimitExceeded). */
  penalize(bucket: BucketSpec, ms: number): Promise<void>;
}
