import { createHash } from "node:crypto";
import type { AssociateInput } from "../core/model.js";

/**
 * Identifies "the same request" for coalescing and idempotency: credential scope, region,
 * instance set, key set and force_stop. Sets are sorted and deduplicated so that neither order
 * nor repetition in the caller's lists makes two identical requests look different.
 */
export function fingerprintOf(scope: string, input: AssociateInput): string {
  const canonical = JSON.stringify([
    "keygate.associate.v1",
    scope,
    input.region,
    [...new Set(input.instanceIds)].sort(),
    [...new Set(input.keyIds)].sort(),
    input.forceStop,
  ]);
  return createHash("sha256").update(canonical).digest("hex");
}
