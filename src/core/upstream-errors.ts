import { Reason, type KeygateError } from "./errors.js";

/**
 * What the cloud's error codes mean for the orchestration (codes from the API page and the
 * common error list). The upstream adapter classifies codes with the same predicates.
 */
const TRANSIENT_CODES: ReadonlySet<string> = new Set([
  "InternalError",
  "InternalServerError",
  "ServiceUnavailable",
  "ResourceUnavailable",
]);

/** The cloud failed on its side (5xx-like); the request may or may not have been applied. */
export function isTransientUpstreamCode(code: string): boolean {
  return TRANSIENT_CODES.has(code) || TRANSIENT_CODES.has(code.split(".")[0] ?? "");
}

/** Another operation is running on an instance (a person in the console, or another tool). */
export function isMutexCode(code: string): boolean {
  return code.startsWith("MutexOperation.") || code === "OperationDenied.InstanceOperationInProgress";
}

/** The cloud's own rate limit rejected the call (all sub-codes). */
export function isRateLimitCode(code: string): boolean {
  return code === "RequestLimitExceeded" || code.startsWith("RequestLimitExceeded.");
}

const TRANSPORT_REASONS: ReadonlySet<string> = new Set([
  Reason.UPSTREAM_UNAVAILABLE,
  Reason.UPSTREAM_TIMEOUT,
  Reason.UPSTREAM_BAD_RESPONSE,
]);

export function isRateLimitedUpstream(e: KeygateError): boolean {
  return e.upstreamCode !== undefined && isRateLimitCode(e.upstreamCode);
}

export function isMutexBusy(e: KeygateError): boolean {
  return e.upstreamCode !== undefined && isMutexCode(e.upstreamCode);
}

/** Worth another attempt within the deadline: 5xx-like codes, timeouts, unreachable, garbled replies. */
export function isTransientUpstream(e: KeygateError): boolean {
  return e.upstreamCode !== undefined
    ? isTransientUpstreamCode(e.upstreamCode)
    : TRANSPORT_REASONS.has(e.reason);
}

/**
 * The cloud may have acted on a call that failed this way, so a resend must first wait until the
 * instances are idle (else it collides with our own task, G3). Conservative: a refused connection
 * costs one needless DescribeInstances, a wrong "no" costs a collision.
 */
export function mayHaveReachedUpstream(e: KeygateError): boolean {
  return isTransientUpstream(e);
}
