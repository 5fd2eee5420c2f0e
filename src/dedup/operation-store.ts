import type { Execution, MarkPhase } from "../core/ports.js";
import type { ReleaseFeed } from "../leases/release-feed.js";

/** The one feed scope of finished executions. */
export const OPS_SCOPE = "operations";
/** The channel finish-operation-3.lua PUBLISHes finished fingerprints on. */
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
  /**
   * Claims the right to execute a fingerprint (docs/decisions/operation-lifecycle.md):
   * - "held": another call holds the claim (its token);
   * - "finished": the last execution ended with a final outcome less than the join window ago;
   * - "claimed": ours now; the record passes to `token`, and `inherited` says how far a previous
   *   executor that vanished got with its cloud call.
   */
  claim(fingerprint: string, token: string, ttl: ClaimTtls): Promise<ClaimResult>;
  /** Extends our claim; false when it is no longer ours. */
  renewClaim(fingerprint: string, token: string, ttlMs: number): Promise<boolean>;
  /** Records the send phase; false (nothing written) when the claim is no longer `token`'s. */
  mark(
    fingerprint: string,
    token: string,
    phase: MarkPhase,
    detail: PhaseDetail,
    recordTtlMs: number,
  ): Promise<boolean>;
  /**
   * Publishes the outcome for the joiners of `token` and drops the claim if still ours. A final
   * outcome closes the record (joinable for `joinWindowMs`); a transient one leaves a record that
   * got past `claimed` for the next executor to inherit.
   */
  finish(fingerprint: string, token: string, outcome: string, opts: FinishOptions): Promise<void>;
  /** Who holds the claim now, and the outcome published by `holder` if any (read atomically). */
  peek(fingerprint: string, holder: string): Promise<{ claimHolder: string | null; outcome: string | null }>;
}

export interface ClaimTtls {
  /** The claim's own short TTL, renewed while executing. */
  claimTtlMs: number;
  /** How long an unfinished record outlives its executor, for a later one to inherit. */
  recordTtlMs: number;
}

export interface FinishOptions {
  final: boolean;
  resultTtlMs: number;
  joinWindowMs: number;
}

export interface PhaseDetail {
  sentAt?: number | undefined;
  requestId?: string | undefined;
}

export type Inherited = NonNullable<Execution["inherited"]>;

export type ClaimResult =
  | { state: "claimed"; inherited?: Inherited | undefined }
  | { state: "held"; holder: string }
  | { state: "finished"; outcome: string };

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

/** The operation record of a fingerprint: executor token, phase, sentAt, requestId, final outcome. */
export function recordKey(fingerprint: string): string {
  return `keygate:op:{${fingerprint}}:record`;
}

/** Parses the phase fields a claim script found; anything else means nothing was sent. */
export function inheritedFrom(
  phase: string | null | undefined,
  sentAt: string | number | null | undefined,
  requestId: string | null | undefined,
): Inherited | undefined {
  if (phase !== "sending" && phase !== "sent" && phase !== "uncertain") return undefined;
  const at = Number(sentAt);
  return { phase, sentAt: Number.isFinite(at) ? at : 0, ...(requestId ? { requestId } : {}) };
}
