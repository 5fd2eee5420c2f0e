import { isOperatorProblem } from "../core/cloud-errors.js";
import { isKeygateError, KeygateError, keygateError, type ErrorKind } from "../core/errors.js";
import type { AssociateResult } from "../core/model.js";

/** A KeygateError as it travels between replicas (no stack, no cause: only what the caller sees). */
export interface SerializedError {
  kind: ErrorKind;
  reason: string;
  message: string;
  upstreamCode?: string | undefined;
  upstreamRequestId?: string | undefined;
  retryAfterMs?: number | undefined;
}

/** What one execution ended with, shared with joiners and kept under idempotency keys. */
export type Outcome = { ok: true; result: AssociateResult } | { ok: false; error: SerializedError };

/** A non-KeygateError is a bug; joiners get a generic INTERNAL, never its message. */
export function failureOutcome(e: unknown): Outcome {
  const k = isKeygateError(e) ? e : keygateError("INTERNAL", "internal error");
  return {
    ok: false,
    error: {
      kind: k.kind,
      reason: k.reason,
      message: k.message,
      upstreamCode: k.upstreamCode,
      upstreamRequestId: k.upstreamRequestId,
      retryAfterMs: k.retryAfterMs,
    },
  };
}

/**
 * Error kinds a retry cannot change: the request itself is wrong or not allowed, or the cloud
 * refused it for a reason that outlives the call. Everything else (unavailable, aborted,
 * resource_exhausted, deadline_exceeded, cancelled, internal, unauthenticated) may go otherwise
 * next time. The table is in docs/decisions/operation-lifecycle.md.
 */
const FINAL_KINDS: ReadonlySet<ErrorKind> = new Set<ErrorKind>([
  "invalid_argument",
  "not_found",
  "failed_precondition",
  "permission_denied",
]);

/**
 * Whether an outcome is final: kept under an idempotency key and joined by identical calls that
 * arrive within the join window. Decided by the error's kind, not by who produced it, with one
 * exception: an operator problem (FAILED_PRECONDITION because keygate's own cloud identity was
 * refused) ends once operators fix it, so it is not kept (docs/decisions.md "Operator problems").
 */
export function isFinal(o: Outcome): boolean {
  return o.ok || (FINAL_KINDS.has(o.error.kind) && !isOperatorProblem(o.error));
}

export function encodeOutcome(o: Outcome): string {
  return JSON.stringify(o);
}

/** Parses a stored outcome; anything malformed is reported as INTERNAL rather than trusted. */
export function decodeOutcome(text: string): Outcome {
  try {
    const v = JSON.parse(text) as Partial<{ ok: boolean; result: AssociateResult; error: SerializedError }>;
    if (
      v.ok === true &&
      v.result &&
      typeof v.result.requestId === "string" &&
      Array.isArray(v.result.instances)
    ) {
      return { ok: true, result: v.result };
    }
    if (v.ok === false && v.error && typeof v.error.reason === "string" && typeof v.error.kind === "string") {
      return { ok: false, error: v.error };
    }
  } catch {
    /* fall through */
  }
  return failureOutcome(keygateError("INTERNAL", "a stored outcome could not be read"));
}

/** The answer a caller gets from an outcome: the result (flagged) or the error re-thrown. */
export function settle(o: Outcome, deduplicated: boolean): AssociateResult {
  if (o.ok) return { ...o.result, deduplicated };
  throw new KeygateError({ ...o.error });
}
