import { createHash } from "node:crypto";
import type { AssociateInput } from "./model.js";

/**
 * Identifies "the same request" for coalescing and idempotency: order and repeats of ids do
 * not matter, the credential scope does (two accounts never share an answer).
 */
export function fingerprintOf(scope: string, input: AssociateInput): string {
  const canonical = JSON.stringify([
    scope,
    input.region,
    [...new Set(input.instanceIds)].sort(),
    [...new Set(input.keyIds)].sort(),
    input.forceStop,
  ]);
  return createHash("sha256").update(canonical).digest("hex");
}
