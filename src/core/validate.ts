import { cloudCodeError } from "./cloud-errors.js";
import type { KeygateError } from "./errors.js";
import { INSTANCE_ID_PATTERN, KEY_ID_PATTERN } from "./ids.js";
import { isSupportedRegion } from "./regions.js";
import type { AssociateRequest } from "./model.js";

export const MAX_IDS = 100;
export const MAX_IDEMPOTENCY_KEY = 128;

function invalid(code: string, message: string): KeygateError {
  return cloudCodeError(code, message);
}

/**
 * Mirrors the upstream's validation so a malformed request is answered with the cloud's own
 * code without spending a token. Ids are checked verbatim: "INS-…" or " ins-…" are malformed,
 * never normalised, so what the policy approves is exactly what the cloud receives.
 */
export function validateRequest(req: AssociateRequest): void {
  if (req.region === "") throw invalid("MissingParameter", 'region is required, e.g. "ap-guangzhou"');
  if (!isSupportedRegion(req.region)) {
    throw invalid(
      "UnsupportedRegion",
      `region "${printable(req.region)}" does not support AssociateInstancesKeyPairs`,
    );
  }
  checkIds(
    req.instanceIds,
    "instance_ids",
    INSTANCE_ID_PATTERN,
    "InvalidInstanceId.Malformed",
    "ins-xxxxxxxx",
  );
  checkIds(req.keyIds, "key_ids", KEY_ID_PATTERN, "InvalidKeyPairId.Malformed", "skey-xxxxxxxx");
  if (req.idempotencyKey.length > MAX_IDEMPOTENCY_KEY) {
    throw invalid(
      "InvalidParameterValue",
      `idempotency_key is ${req.idempotencyKey.length} characters; at most ${MAX_IDEMPOTENCY_KEY} are allowed`,
    );
  }
}

function checkIds(ids: string[], field: string, pattern: RegExp, malformed: string, shape: string): void {
  if (ids.length === 0) throw invalid("MissingParameter", `${field} needs at least one id`);
  if (ids.length > MAX_IDS) {
    throw invalid(
      "InvalidParameterValue.LimitExceeded",
      `${field} has ${ids.length} ids; at most ${MAX_IDS} are allowed`,
    );
  }
  const seen = new Set<string>();
  for (const [i, id] of ids.entries()) {
    if (!pattern.test(id)) {
      throw invalid(
        malformed,
        `${field}[${i}] "${printable(id)}" is malformed: expected ${shape} (8 lower-case letters or digits)`,
      );
    }
    if (seen.has(id)) throw invalid("InvalidParameterValue", `${field}[${i}] "${id}" is listed twice`);
    seen.add(id);
  }
}

/** Caller input echoed in a message: bounded and without control characters. */
function printable(s: string): string {
  const clean = s.replace(/[^\x20-\x7e]/g, "?");
  return clean.length > 40 ? `${clean.slice(0, 40)}…` : clean;
}
