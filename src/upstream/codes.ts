import type { ErrorKind } from "../core/errors.js";
import { isTransientUpstreamCode } from "../core/upstream-errors.js";

/** Exact codes whose kind does not follow from their prefix. */
const EXACT: Readonly<Record<string, ErrorKind>> = {
  MissingParameter: "invalid_argument",
  UnsupportedRegion: "invalid_argument",
  InvalidParameter: "invalid_argument",
  InvalidParameterValue: "invalid_argument",
  "InvalidParameterValue.LimitExceeded": "invalid_argument",
  "InvalidParameterValue.InstanceIdMalformed": "invalid_argument",
  "InvalidParameterValue.KeyPairNotSupported": "failed_precondition",
  "InvalidInstance.NotSupported": "failed_precondition",
  "InvalidInstanceId.Malformed": "invalid_argument",
  "InvalidKeyPairId.Malformed": "invalid_argument",
  UnknownParameter: "invalid_argument",
  RequestSizeLimitExceeded: "invalid_argument",
  "InvalidInstanceId.NotFound": "not_found",
  "InvalidKeyPairId.NotFound": "not_found",
  ResourceNotFound: "not_found",
  "OperationDenied.InstanceOperationInProgress": "aborted",
  ResourceInUse: "aborted",
  LimitExceeded: "failed_precondition",
  FailedOperation: "failed_precondition",
  // keygate asked for something the cloud does not offer: a bug in keygate, not the caller's fault.
  InvalidAction: "internal",
  ActionOffline: "internal",
  NoSuchVersion: "internal",
};

/** Prefix rules, most specific first. */
const PREFIXES: readonly (readonly [string, ErrorKind])[] = [
  ["RequestLimitExceeded", "resource_exhausted"],
  ["MutexOperation.", "aborted"],
  ["UnsupportedOperation", "failed_precondition"],
  ["OperationDenied.", "failed_precondition"],
  // keygate's own credentials or CAM role are wrong: the caller cannot fix that, operators must.
  // `unavailable` (not `internal`) so the API layer still shows the code and alerts fire on it.
  ["AuthFailure", "unavailable"],
  ["UnauthorizedOperation", "unavailable"],
  ["InvalidParameterValue.", "invalid_argument"],
  ["InvalidParameter.", "invalid_argument"],
  ["MissingParameter.", "invalid_argument"],
  [".NotFound", "not_found"],
];

/**
 * The kind of failure an upstream error code means, following SPEC.md's status table.
 * Unknown codes are `internal`: keygate does not know whether retrying or changing the request
 * would help, so it must not promise either.
 */
export function classifyUpstreamCode(code: string): ErrorKind {
  const exact = EXACT[code];
  if (exact) return exact;
  if (isTransientUpstreamCode(code)) return "unavailable";
  for (const [pattern, kind] of PREFIXES) {
    if (pattern.startsWith(".") ? code.endsWith(pattern) : code.startsWith(pattern)) return kind;
  }
  return "internal";
}
