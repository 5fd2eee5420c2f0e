import { createHash } from "node:crypto";
import type { AssociateInput } from "./model.js";

/**
 * Identifies "the same request" for coalescing and idempotency: order and repeats of ids do
 * not matter, the credential scope does (two accounts never share an answer). Whether the
 * caller waits for completion is part of it: a call that waits cannot join one that does not,
 * since only the executor holds the leases while the cloud task runs (see docs/decisions.md).
 */
export function fingerprintOf(scope: string, input: AssociateInput, waitForCompletion: boolean): string {
  const canonical = JSON.stringify([
    scope,
    input.region,
    [...new Set(input.instanceIds)].sort(),
    [...new Set(input.keyIds)].sort(),
    input.forceStop,
    waitForCompletion,
  ]);
  return createHash("sha256").update(canonical).digest("hex");
}
