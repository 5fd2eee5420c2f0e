/**
 * The single catalogue of keygate's own error reasons. Cloud error codes (e.g.
 * `InvalidInstanceId.NotFound`) travel as reasons too; their table is `cloud-errors.ts`.
 * Between them, these two files decide every status a caller can get.
 */
export const Reason = {
  UNAUTHENTICATED: "UNAUTHENTICATED",
  POLICY_DENIED: "POLICY_DENIED",
  RATE_LIMITED: "RATE_LIMITED",
  STORE_UNAVAILABLE: "STORE_UNAVAILABLE",
  IDEMPOTENCY_MISMATCH: "IDEMPOTENCY_MISMATCH",
  UPSTREAM_UNAVAILABLE: "UPSTREAM_UNAVAILABLE",
  UPSTREAM_TIMEOUT: "UPSTREAM_TIMEOUT",
  UPSTREAM_BAD_RESPONSE: "UPSTREAM_BAD_RESPONSE",
  INSTANCE_BUSY: "INSTANCE_BUSY",
  OPERATION_TAKEN_OVER: "OPERATION_TAKEN_OVER",
  DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
  CANCELLED: "CANCELLED",
  SHUTTING_DOWN: "SHUTTING_DOWN",
  SEND_TOO_LATE: "SEND_TOO_LATE",
  INTERNAL: "INTERNAL",
} as const;
export type KeygateReason = (typeof Reason)[keyof typeof Reason];

/**
 * The gRPC status of a failure, spelled in snake case (the spelling also stored with idempotent
 * outcomes). `src/api/` only converts it to its library's enum.
 */
export type ErrorKind =
  | "unauthenticated"
  | "permission_denied"
  | "invalid_argument"
  | "resource_exhausted"
  | "not_found"
  | "failed_precondition"
  | "aborted"
  | "unavailable"
  | "deadline_exceeded"
  | "cancelled"
  | "internal";

/** Kind and a one-line explanation of each keygate reason (the README error table is checked against it). */
export const reasonCatalogue: Record<KeygateReason, { kind: ErrorKind; summary: string }> = {
  UNAUTHENTICATED: { kind: "unauthenticated", summary: "No bearer token, or one that no tenant holds." },
  POLICY_DENIED: { kind: "permission_denied", summary: "The request is outside the tenant's policy." },
  RATE_LIMITED: {
    kind: "resource_exhausted",
    summary: "No upstream token could be had before the deadline or the queue bound.",
  },
  STORE_UNAVAILABLE: { kind: "unavailable", summary: "Redis cannot be reached; nothing was sent upstream." },
  IDEMPOTENCY_MISMATCH: {
    kind: "failed_precondition",
    summary: "The idempotency_key was used before with a different request.",
  },
  UPSTREAM_UNAVAILABLE: {
    kind: "unavailable",
    summary: "The cloud API could not be reached or answered 5xx.",
  },
  UPSTREAM_TIMEOUT: { kind: "unavailable", summary: "The cloud API did not answer in time." },
  UPSTREAM_BAD_RESPONSE: {
    kind: "unavailable",
    summary: "The cloud API answered something that is not its protocol.",
  },
  INSTANCE_BUSY: {
    kind: "aborted",
    summary:
      "An instance stayed busy (leased by another keygate call) past the deadline, or too many calls wait for it.",
  },
  OPERATION_TAKEN_OVER: {
    kind: "aborted",
    summary:
      "This replica stalled and another took the operation over; nothing more was sent from here. Retry with the same idempotency_key.",
  },
  DEADLINE_EXCEEDED: { kind: "deadline_exceeded", summary: "The caller's deadline passed." },
  CANCELLED: { kind: "cancelled", summary: "The caller went away." },
  SHUTTING_DOWN: { kind: "unavailable", summary: "This replica is draining; retry on another." },
  SEND_TOO_LATE: {
    kind: "unavailable",
    summary:
      "Internal: a granted call would have left after its grant allowed, so it was not sent; keygate takes a new grant (a caller sees it only if none can be had in time).",
  },
  INTERNAL: { kind: "internal", summary: "A bug; the details are in the log, not in the answer." },
};

export interface KeygateErrorInit {
  kind: ErrorKind;
  reason: string;
  message: string;
  upstreamCode?: string | undefined;
  upstreamRequestId?: string | undefined;
  retryAfterMs?: number | undefined;
  cause?: unknown;
}

/** The one error type domain code throws. `message` is safe to show the caller. */
export class KeygateError extends Error {
  readonly kind: ErrorKind;
  readonly reason: string;
  readonly upstreamCode: string | undefined;
  readonly upstreamRequestId: string | undefined;
  readonly retryAfterMs: number | undefined;

  constructor(init: KeygateErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "KeygateError";
    this.kind = init.kind;
    this.reason = init.reason;
    this.upstreamCode = init.upstreamCode;
    this.upstreamRequestId = init.upstreamRequestId;
    this.retryAfterMs = init.retryAfterMs;
  }
}

/** Shorthand for an error with one of keygate's own reasons. */
export function keygateError(
  reason: KeygateReason,
  message: string,
  extra: Omit<KeygateErrorInit, "kind" | "reason" | "message"> = {},
): KeygateError {
  return new KeygateError({ kind: reasonCatalogue[reason].kind, reason, message, ...extra });
}

export function isKeygateError(e: unknown): e is KeygateError {
  return e instanceof KeygateError;
}
