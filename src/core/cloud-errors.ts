import { type ErrorKind, KeygateError, type KeygateErrorInit, Reason } from "./errors.js";

/**
 * What every cloud error code means to keygate, in one table: the status the caller gets and what
 * keygate does about it. The README's "Cloud error codes" table is checked against it, and
 * docs/decisions.md says how to add a code.
 */

/** What a cloud answer says about the request. */
export type CloudErrorKind =
  /** The request itself is wrong; changing it helps, repeating it does not. */
  | "caller_mistake"
  | "not_found"
  /** The instance or key is not in a state (or of a sort) the action accepts. */
  | "precondition"
  /** Another task runs on the instance. */
  | "busy"
  /** The instance is passing from one state to another (starting, stopping, …). */
  | "transitional"
  /** The cloud's own rate limit: someone outside keygate spent the quota. */
  | "rate_limited"
  /** The cloud failed on its side; it may or may not have acted. */
  | "transient"
  /** keygate's own credentials or CAM role are refused: operators must act, not callers. */
  | "operator_problem"
  /** keygate asked for something the cloud does not offer, or a code nobody documented. */
  | "unexpected";

/** What keygate does after an attempt failed this way. */
export type CloudAction =
  /** Give the caller the error now. */
  | "answer"
  /** Wait until the instances are idle, then resend within the deadline. */
  | "wait"
  /** Back off, wait until the instances are idle (the cloud may have acted), resend; a few times. */
  | "retry"
  /** Hold every replica off the bucket for a window, then resend. */
  | "penalize";

export interface Treatment {
  /** The gRPC status the caller gets (see ErrorKind). */
  status: ErrorKind;
  action: CloudAction;
  /**
   * The `retry_after_ms` the caller gets with the final answer: set only where the same request
   * may succeed later by itself; absent where only a changed request or an operator helps.
   */
  retryAfterMs?: number;
}

/** One line per kind, so changing how a whole kind is treated is a one-line edit. */
export const treatmentOfKind: Readonly<Record<CloudErrorKind, Treatment>> = {
  caller_mistake: { status: "invalid_argument", action: "answer" },
  not_found: { status: "not_found", action: "answer" },
  precondition: { status: "failed_precondition", action: "answer" },
  busy: { status: "aborted", action: "wait", retryAfterMs: 1_000 },
  // Resolves by itself like a busy instance (docs/decisions.md "Transitional instance states").
  transitional: { status: "aborted", action: "wait", retryAfterMs: 1_000 },
  rate_limited: { status: "resource_exhausted", action: "penalize", retryAfterMs: 1_000 },
  transient: { status: "unavailable", action: "retry", retryAfterMs: 1_000 },
  // FAILED_PRECONDITION: gRPC's "do not retry until the system is fixed"; the caller cannot fix it,
  // keygate's operators must (docs/decisions.md "Operator problems").
  operator_problem: { status: "failed_precondition", action: "answer" },
  // Neither a retry nor a changed request is known to help, so promise neither.
  unexpected: { status: "internal", action: "answer" },
};

export interface CloudErrorRow {
  /**
   * `Name` matches that code only; `Name.*` matches its sub-codes (not `Name` itself); `*.Suffix`
   * matches any code ending so. Exact rows win over `Name.*` (the longest wins), which win over `*.Suffix`.
   */
  code: string;
  kind: CloudErrorKind;
  /** A departure from the kind's action, with the reason beside the row. */
  action?: CloudAction;
  /**
   * Listed in the error table of the AssociateInstancesKeyPairs API page (the other rows are the
   * common codes); test/fixtures/api-page-codes.txt holds that list and a test compares the two.
   */
  page?: true;
}

/**
 * Every code on the AssociateInstancesKeyPairs API page, and the common codes any action can
 * return (docs/decisions/upstream.md). A cloud code travels to the caller as its own `reason`.
 */
export const cloudErrorTable: readonly CloudErrorRow[] = [
  // The request is wrong (keygate checks most of these itself before spending a token).
  { code: "MissingParameter", kind: "caller_mistake", page: true },
  { code: "MissingParameter.*", kind: "caller_mistake" },
  { code: "UnsupportedRegion", kind: "caller_mistake" },
  { code: "InvalidParameter", kind: "caller_mistake" },
  { code: "InvalidParameter.*", kind: "caller_mistake" },
  { code: "InvalidParameterValue", kind: "caller_mistake", page: true },
  { code: "InvalidParameterValue.*", kind: "caller_mistake" },
  { code: "InvalidParameterValue.InstanceIdMalformed", kind: "caller_mistake", page: true },
  { code: "InvalidParameterValue.LimitExceeded", kind: "caller_mistake", page: true },
  { code: "InvalidInstanceId.Malformed", kind: "caller_mistake", page: true },
  { code: "InvalidKeyPairId.Malformed", kind: "caller_mistake", page: true },
  { code: "UnknownParameter", kind: "caller_mistake" },
  { code: "RequestSizeLimitExceeded", kind: "caller_mistake" },

  { code: "InvalidInstanceId.NotFound", kind: "not_found", page: true },
  { code: "InvalidKeyPairId.NotFound", kind: "not_found", page: true },
  { code: "ResourceNotFound", kind: "not_found" },
  { code: "*.NotFound", kind: "not_found" },

  { code: "InvalidInstance.NotSupported", kind: "precondition", page: true },
  { code: "InvalidParameterValue.KeyPairNotSupported", kind: "precondition", page: true },
  { code: "UnsupportedOperation", kind: "precondition" },
  { code: "UnsupportedOperation.*", kind: "precondition" },
  { code: "UnsupportedOperation.InstanceOsWindows", kind: "precondition", page: true },
  { code: "UnsupportedOperation.InstanceStateRunning", kind: "precondition", page: true },
  { code: "UnsupportedOperation.InstanceStateShutdown", kind: "precondition", page: true },
  { code: "UnsupportedOperation.InstanceStateIsolating", kind: "precondition", page: true },
  { code: "UnsupportedOperation.InstanceStateFreezing", kind: "precondition", page: true },
  { code: "UnsupportedOperation.InstanceStateRescueMode", kind: "precondition", page: true },
  { code: "UnsupportedOperation.InstanceStateTerminating", kind: "precondition", page: true },
  { code: "UnsupportedOperation.StoppedModeStopCharging", kind: "precondition", page: true },
  { code: "OperationDenied.*", kind: "precondition" },
  { code: "LimitExceeded", kind: "precondition" },
  { code: "FailedOperation", kind: "precondition" },

  { code: "UnsupportedOperation.InstanceStatePending", kind: "transitional", page: true },
  { code: "UnsupportedOperation.InstanceStateStarting", kind: "transitional", page: true },
  { code: "UnsupportedOperation.InstanceStateStopping", kind: "transitional", page: true },
  { code: "UnsupportedOperation.InstanceStateRebooting", kind: "transitional", page: true },
  { code: "UnsupportedOperation.InstanceStateExitRescueMode", kind: "transitional", page: true },
  { code: "UnsupportedOperation.InstanceStateEnterServiceLiveMigrate", kind: "transitional", page: true },

  { code: "MutexOperation.*", kind: "busy" },
  { code: "MutexOperation.TaskRunning", kind: "busy", page: true },
  { code: "OperationDenied.InstanceOperationInProgress", kind: "busy", page: true },
  // Not necessarily an instance, so DescribeInstances cannot tell when it is free.
  { code: "ResourceInUse", kind: "busy", action: "answer" },

  { code: "RequestLimitExceeded", kind: "rate_limited" },
  { code: "RequestLimitExceeded.*", kind: "rate_limited" },

  { code: "InternalError", kind: "transient" },
  { code: "InternalError.*", kind: "transient" },
  { code: "InternalServerError", kind: "transient", page: true },
  { code: "InternalServerError.*", kind: "transient" },
  { code: "ServiceUnavailable", kind: "transient" },
  { code: "ServiceUnavailable.*", kind: "transient" },
  { code: "ResourceUnavailable", kind: "transient" },
  { code: "ResourceUnavailable.*", kind: "transient" },

  { code: "AuthFailure", kind: "operator_problem" },
  { code: "AuthFailure.*", kind: "operator_problem" },
  { code: "UnauthorizedOperation", kind: "operator_problem" },
  { code: "UnauthorizedOperation.*", kind: "operator_problem" },
  { code: "UnauthorizedOperation.MFAExpired", kind: "operator_problem", page: true },
  { code: "UnauthorizedOperation.MFANotFound", kind: "operator_problem", page: true },

  { code: "InvalidAction", kind: "unexpected" },
  { code: "ActionOffline", kind: "unexpected" },
  { code: "NoSuchVersion", kind: "unexpected" },
  { code: "InvalidRequest", kind: "unexpected" },
];

/** The row for codes no row matches. */
export const UNKNOWN_CODE_ROW: CloudErrorRow = { code: "*", kind: "unexpected" };

/** What one cloud code means, resolved through the table. */
export interface CloudErrorMeaning extends Treatment {
  kind: CloudErrorKind;
  /** What the caller sees as `reason`: the cloud's code itself. */
  reason: string;
  /** The row that decided. */
  row: CloudErrorRow;
}

const exact = new Map<string, CloudErrorRow>();
const families: CloudErrorRow[] = [];
const suffixes: CloudErrorRow[] = [];
for (const row of cloudErrorTable) {
  if (row.code.startsWith("*.")) suffixes.push(row);
  else if (row.code.endsWith(".*")) families.push(row);
  else exact.set(row.code, row);
}
families.sort((a, b) => b.code.length - a.code.length);

function rowOf(code: string): CloudErrorRow {
  const hit = exact.get(code);
  if (hit) return hit;
  for (const row of families) {
    const name = row.code.slice(0, -2);
    if (code.startsWith(`${name}.`)) return row;
  }
  for (const row of suffixes) if (code.endsWith(row.code.slice(1))) return row;
  return UNKNOWN_CODE_ROW;
}

/** Pure: what a cloud error code means and what keygate does about it. */
export function classify(code: string): CloudErrorMeaning {
  const row = rowOf(code);
  const treatment = treatmentOfKind[row.kind];
  return {
    kind: row.kind,
    status: treatment.status,
    action: row.action ?? treatment.action,
    ...(treatment.retryAfterMs === undefined ? {} : { retryAfterMs: treatment.retryAfterMs }),
    reason: code,
    row,
  };
}

/** The gRPC status a cloud code gives the caller. */
export function statusOf(code: string): ErrorKind {
  return classify(code).status;
}

/** What the caller reads when keygate's own cloud identity was refused. */
export const OPERATOR_PROBLEM_MESSAGE =
  "the cloud refused keygate's own cloud identity (its credentials, CAM permissions or MFA), not your request: " +
  "keygate's operators must fix it; retrying before they have does not help";

/**
 * The one way to build the error for a cloud code, so its status and `retry_after_ms` always come
 * from the table.
 */
export function cloudCodeError(
  code: string,
  message: string,
  extra: Omit<KeygateErrorInit, "kind" | "reason" | "message"> = {},
): KeygateError {
  const meaning = classify(code);
  return new KeygateError({
    retryAfterMs: meaning.retryAfterMs,
    ...extra,
    kind: meaning.status,
    reason: code,
    message: meaning.kind === "operator_problem" ? `${OPERATOR_PROBLEM_MESSAGE} (${message})` : message,
  });
}

/** Whether a failure is keygate's own cloud identity being refused (an operator problem). */
export const isOperatorProblem = (f: { upstreamCode?: string | undefined }): boolean =>
  f.upstreamCode !== undefined && classify(f.upstreamCode).kind === "operator_problem";

/**
 * Instance states that end by themselves (DescribeInstances `InstanceState`): while an instance is
 * in one, it is not idle, and the action's `UnsupportedOperation.InstanceState*` answer for it is
 * "transitional" (docs/upstream-facts.md lists the states).
 */
export const TRANSITIONAL_INSTANCE_STATES: ReadonlySet<string> = new Set([
  "PENDING",
  "STARTING",
  "STOPPING",
  "REBOOTING",
  "EXIT_RESCUE_MODE",
  "ENTER_SERVICE_LIVE_MIGRATE",
  "SERVICE_LIVE_MIGRATE",
  "EXIT_SERVICE_LIVE_MIGRATE",
]);

/** keygate's own reasons for an attempt that got no usable answer from the cloud. */
const NO_ANSWER_REASONS: ReadonlySet<string> = new Set([
  Reason.UPSTREAM_UNAVAILABLE,
  Reason.UPSTREAM_TIMEOUT,
  Reason.UPSTREAM_BAD_RESPONSE,
]);

/** A failed attempt, as much of it as the retry decision reads. */
export type Failure = Pick<KeygateError, "upstreamCode" | "reason">;

/**
 * What keygate does after this failure: the cloud's code decides through the table; no answer at
 * all (unreachable, timed out, garbled) counts as transient; keygate's own reasons are answered.
 */
export function actionFor(f: Failure): CloudAction {
  if (f.upstreamCode !== undefined) return classify(f.upstreamCode).action;
  return NO_ANSWER_REASONS.has(f.reason) ? treatmentOfKind.transient.action : "answer";
}

export const isRateLimitedUpstream = (f: Failure): boolean => actionFor(f) === "penalize";
export const isMutexBusy = (f: Failure): boolean => actionFor(f) === "wait";
export const isTransientUpstream = (f: Failure): boolean => actionFor(f) === "retry";

/**
 * The cloud may have acted on an attempt that failed this way, so a resend must first wait until
 * the instances are idle (else it collides with keygate's own task, G3). Conservative: a refused
 * connection costs one needless DescribeInstances, a wrong "no" costs a collision.
 */
export const mayHaveReachedUpstream = (f: Failure): boolean => isTransientUpstream(f);

/** The numbers of the retry decision (README "When things are down"). */
export const retryPolicy = {
  /** How long every replica holds off the bucket after the cloud's own rate limit. */
  penaltyMs: 1_000,
  /**
   * AssociateInstancesKeyPairs calls one request may cause at most, first attempt included; each
   * spends a token, so a request the cloud keeps refusing cannot eat everybody's quota.
   */
  maxCloudCalls: 5,
  /** Backoff retries of transient failures per call (within `maxCloudCalls`). */
  maxTransientRetries: 3,
  /** The first backoff; it doubles with each retry, with jitter. */
  backoffBaseMs: 400,
  /** No backoff grows beyond this. */
  backoffMaxMs: 5_000,
} as const;

export type NextStep =
  | { step: "answer" }
  | { step: "penalize"; penaltyMs: number }
  /**
   * Sleep `delayMs`, wait until the instances are idle, and resend; but reconcile first when the
   * failed send may have reached the cloud.
   */
  | { step: "backoff"; delayMs: number; reconcile: boolean };

export interface FailedAttempt {
  failure: Failure;
  /** Backoff retries this call already made (busy and transient alike). */
  retries: number;
  /** Of those, retries after a transient failure. */
  transientRetries: number;
  /** AssociateInstancesKeyPairs calls this request already caused (the failed one included). */
  cloudCalls: number;
  /** Until the caller's deadline: 0 once it passed or the caller left, Infinity without one. */
  timeLeftMs: number;
  /** A uniform draw in [0, 1) for the jitter (injected so the decision stays pure). */
  random: number;
}

const ANSWER: NextStep = { step: "answer" };

/** Exponential backoff with "equal jitter": half fixed, half random, so retries of many callers spread. */
export function backoffDelay(retries: number, random: number): number {
  const full = Math.min(retryPolicy.backoffBaseMs * 2 ** retries, retryPolicy.backoffMaxMs);
  return Math.round(full / 2 + (full / 2) * random);
}

/** Pure: the retry decision after a failed attempt. */
export function nextStep(a: FailedAttempt): NextStep {
  const action = actionFor(a.failure);
  if (action === "answer") return ANSWER;
  // Penalties do not count: the limiter, not the request, decides when the next token comes.
  if (action === "penalize") return { step: "penalize", penaltyMs: retryPolicy.penaltyMs };
  if (a.timeLeftMs <= 0 || a.cloudCalls >= retryPolicy.maxCloudCalls) return ANSWER;
  if (action === "retry" && a.transientRetries >= retryPolicy.maxTransientRetries) return ANSWER;
  return {
    step: "backoff",
    delayMs: Math.min(backoffDelay(a.retries, a.random), a.timeLeftMs),
    reconcile: action === "retry" && mayHaveReachedUpstream(a.failure),
  };
}
