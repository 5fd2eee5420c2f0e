import type { ReleaseFeed } from "../leases/release-feed.js";

/** The one feed scope of finished executions. */
export const OPS_SCOPE = "operations";
/** The channel finish-operation-2.lua PUBLISHes finished fingerprints on. */
export const OPS_CHANNEL = "keygate:op-finished";

/**
 * The storage primitives behind `Operations`. Redis and the in-memory store implement exactly
 * these atomic steps; the run/join/take-over logic lives once in `operations.ts`.
 * Outcomes are opaque strings here (encoded by `outcome.ts`).
 */
export interface OperationStore {
  /** Notices of finished executions (scope `OPS_SCOPE`, id = fingerprint); without it, joiners poll. */
  readonly releases?: ReleaseFeed;
  /**
   * Looks up an idempotency key, creating it (pending, bound to `fingerprint`) when absent.
   * "pending": an earlier call with this key has not finished (or gave up); "done": its outcome.
   */
  beginIdempotent(key: string, fingerprint: string, ttlMs: number): Promise<IdempotencyState>;
  /** Stores the outcome for the key, unless one is already stored or the key is bound elsewhere. */
  completeIdempotent(key: string, fingerprint: string, outcome: string, ttlMs: number): Promise<void>;
  /** Forgets a pending key bound to `fingerprint` so that a retry runs again. */
  abandonIdempotent(key: string, fingerprint: string): Promise<void>;
  /** SET NX: `{claimed: true}` or the token of the call already running this fingerprint. */
  claim(
    fingerprint: string,
    token: string,
    ttlMs: number,
  ): Promise<{ claimed: true } | { claimed: false; holder: string }>;
  /** Extends our claim; false when it is no longer ours. */
  renewClaim(fingerprint: string, token: string, ttlMs: number): Promise<boolean>;
  /** Publishes the outcome for the joiners of `token` and drops the claim if still ours. */
  finish(fingerprint: string, token: string, outcome: string, resultTtlMs: number): Promise<void>;
  /** Who holds the claim now, and the outcome published by `holder` if any (read atomically). */
  peek(fingerprint: string, holder: string): Promise<{ claimHolder: string | null; outcome: string | null }>;
}

export type IdempotencyState =
  { state: "new" } | { state: "pending" } | { state: "done"; outcome: string } | { state: "mismatch" };

/** One idempotency record per (tenant, key); both are hashed so any bytes are safe in a key. */
export function idempotencyKey(tenant: string, key: string, hash: (s: string) => string): string {
  return `keygate:idem:{${hash(`${tenant}\u0000${key}`)}}`;
}

/** The claim on a fingerprint; the hash tag puts it in one slot with its results. */
export function claimKey(fingerprint: string): string {
  return `keygate:op:{${fingerprint}}:claim`;
}

/** The outcome of one execution (by claim token), read by those who joined that execution only. */
export function resultKey(fingerprint: string, token: string): string {
  return `keygate:op:{${fingerprint}}:result:${token}`;
}
