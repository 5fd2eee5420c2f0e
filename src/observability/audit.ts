import type { AuditEntry } from "../core/ports.js";
import type { Logger } from "./logger.js";
import type { Metrics } from "./metrics.js";

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
        region: entry.region,
        instances: entry.instances.slice(0, 100),
        keys: entry.keys.slice(0, 100),
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
        durationMs: entry.durationMs,
      },
      "decision",
    );
  };
}
