/**
 * The fingerprint lives in core (the orchestration computes it before calling `Operations`);
 * it is re-exported here so dedup code and its property tests use the very same function.
 */
export { fingerprintOf } from "../core/fingerprint.js";
