import type { KeygateError } from "./errors.js";

/** How the orchestration reacts to what the cloud answered; codes are from the API page. */
const MUTEX_CODES = new Set(["MutexOperation.TaskRunning", "OperationDenied.InstanceOperationInProgress"]);
const TRANSIENT_CODES = new Set([
  "InternalError",
  "InternalServerError",
  "ServiceUnavailable",
  "ResourceUnavailable",
]);
const TRANSIENT_REASONS = new Set(["UPSTREAM_UNAVAILABLE", "UPSTREAM_TIMEOUT", "UPSTREAM_BAD_RESPONSE"]);

export function isRateLimitedUpstream(e: KeygateError): boolean {
  return e.upstreamCode !== undefined && e.upstreamCode.startsWith("RequestLimitExceeded");
}

export function isMutexBusy(e: KeygateError): boolean {
  return e.upstreamCode !== undefined && MUTEX_CODES.has(e.upstreamCode);
}

/** Worth another attempt within the deadline. */
export function isTransientUpstream(e: KeygateError): boolean {
  return e.upstreamCode !== undefined ? TRANSIENT_CODES.has(e.upstreamCode) : TRANSIENT_REASONS.has(e.reason);
}

/** The cloud may have acted on the call even though we saw no answer. */
export function mayHaveReachedUpstream(e: KeygateError): boolean {
  return (
    e.reason === "UPSTREAM_TIMEOUT" || e.reason === "UPSTREAM_BAD_RESPONSE" || e.upstreamCode !== undefined
  );
}
