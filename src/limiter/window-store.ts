import type { BucketSpec } from "../core/ports.js";

/**
 * What a store answers for one atomic decision. Granted: a slot is booked for this caller and
 * the request may be sent `delayMs` after the store decided (absent or 0 = at once), never
 * earlier. Refused: nothing booked, ask again in `waitMs`.
 */
export type StoreDecision =
  | {
      granted: true;
      remaining: number;
      delayMs?: number;
      /** The booked slot on the store's own clock (what `shift` names). */
      slot?: number;
      /** The store's clock when it decided (with `slot`: how far its clock is from ours, see store-clock.ts). */
      storeNow?: number;
    }
  | { granted: false; waitMs: number; storeNow?: number };

/** How slots are booked; see `decide` in window.ts. */
export interface BookingOptions {
  /** How far ahead of the store's clock a slot may be booked. Default 0. */
  horizonMs?: number;
  /** Least distance between slots that wait for the window. Default 0. */
  gapMs?: number;
}

/**
 * The shared part of the limiter: one atomic sliding-window decision per call. Redis
 * implements it for several replicas, memory for one; the scheduler above is the same.
 * Implementations throw (any error) when the store cannot be reached.
 */
export interface WindowStore {
  /**
   * Books the next free slot if it lies at most `booking.horizonMs` ahead of the store's clock.
   */
  tryAcquire(bucket: BucketSpec, spanMs: number, booking?: BookingOptions): Promise<StoreDecision>;
  /** Every replica refuses grants on `bucket` for the next `ms` (the upstream said RequestLimitExceeded). */
  penalize(bucket: BucketSpec, ms: number): Promise<void>;
  /**
   * The request booked at `slot` left `lateMs` after it: the slot moves to `slot + lateMs` (the
   * log stays ordered), so later bookings keep a full span from when it really left. Nothing
   * happens when the bucket has no log any more.
   */
  shift?(bucket: BucketSpec, slot: number, lateMs: number): Promise<void>;
}
