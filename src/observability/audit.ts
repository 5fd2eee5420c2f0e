import type { AuditEntry } from "../core/ports.js";
import type { Logger } from "./logger.js";
import type { Metrics } from "./metrics.js";

/** A valid request has at most 100 of each; a hostile one is logged by count, not in full. */
const MAX_LOGGED_IDS = 100;
const MAX_LOGGED_CHARS = 40;

/** Caller-supplied text in a log line: bounded, so a line never grows with the request. */
function clip(s: string, max = MAX_LOGGED_CHARS): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

/**
 * One structured line per decision (G7) plus the request metrics derived from it, so the
 * two can never disagree. The entry holds ids and codes only, never a token or a secret.
 */
export function createAuditSink(logger: Logger, metrics: Metrics) {
  return (entry: AuditEntry): void => {
    const outcome = entry.decision === "allowed" ? "ok" : entry.decision === "denied" ? "denied" : "error";
    const code = entry.decision === "allowed" ? "OK" : (entry.reason ?? "UNKNOWN");
    metrics.requests.inc({ tenant: entry.tenant ?? "(unauthenticated)", outcome, code });
    metrics.requestDuration.observe({ outcome }, entry.durationMs / 1000);
    logger.info(
      {
        audit: true,
        requestId: entry.requestId,
        tenant: entry.tenant ?? null,
        region: clip(entry.region),
        instances: entry.instances.slice(0, MAX_LOGGED_IDS).map((id) => clip(id)),
        instanceCount: entry.instances.length,
        keys: entry.keys.slice(0, MAX_LOGGED_IDS).map((id) => clip(id)),
        keyCount: entry.keys.length,
        forceStop: entry.forceStop,
        decision: entry.decision,
        rule: entry.rule ?? null,
        reason: entry.reason ?? null,
        deduplicated: entry.deduplicated,
        limiterWaitMs: entry.limiterWaitMs,
        leaseWaitMs: entry.leaseWaitMs,
        attempts: entry.attempts,
        upstreamRequestId: entry.upstreamRequestId ?? null,
        upstreamCode: entry.upstreamCode ?? null,
        batchId: entry.batchId ?? null,
        batchSize: entry.batchSize ?? null,
        ...(entry.error === undefined ? {} : { error: clip(entry.error, 200) }),
        durationMs: entry.durationMs,
      },
      "decision",
    );
  };
}
