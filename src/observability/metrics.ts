import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { actionOfBucket } from "../core/actions.js";
import { classify } from "../core/cloud-errors.js";
import type { BucketSpec } from "../core/ports.js";
import type { LimiterHooks } from "../limiter/limiter.js";
import { buildInfo } from "../version.js";

/**
 * Every keygate metric, prefix `keygate_`. Labels are bounded: tenant names come from the
 * policy file, codes from the upstream's finite catalogue; instance ids never appear.
 */
export function createMetrics(opts: { defaultMetrics?: boolean; revision?: string | undefined } = {}) {
  const registry = new Registry();
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry, prefix: "keygate_" });
  const r = [registry];
  const collectHooks: (() => void)[] = [];
  const build = buildInfo(opts.revision);
  new Gauge({
    name: "keygate_build_info",
    help: "Always 1; the labels say which keygate build runs (version, source revision, Node.js version)",
    labelNames: ["version", "revision", "node"] as const,
    registers: r,
  }).set(build, 1);
  return {
    registry,
    /** Runs before each scrape, to sample gauges owned by other components. */
    onCollect: (hook: () => void) => collectHooks.push(hook),
    requests: new Counter({
      name: "keygate_requests_total",
      help: "Final answers by tenant, outcome (ok|denied|error) and code",
      labelNames: ["tenant", "outcome", "code"] as const,
      registers: r,
    }),
    requestDuration: new Histogram({
      name: "keygate_request_duration_seconds",
      help: "Time from receiving a request to its final answer",
      labelNames: ["outcome"] as const,
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120],
      registers: r,
    }),
    limiterWait: new Histogram({
      name: "keygate_limiter_wait_seconds",
      help: "Time a request waited for an upstream token",
      labelNames: ["action"] as const,
      buckets: [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
      registers: r,
    }),
    limiterQueueDepth: new Gauge({
      name: "keygate_limiter_queue_depth",
      help: "Requests waiting for an upstream token on this replica",
      labelNames: ["action"] as const,
      registers: r,
      collect: () => collectHooks.forEach((h) => h()),
    }),
    tokensGranted: new Counter({
      name: "keygate_limiter_tokens_granted_total",
      help: "Upstream tokens granted by the cluster-wide limiter",
      labelNames: ["action"] as const,
      registers: r,
    }),
    limiterWastedGrants: new Counter({
      name: "keygate_limiter_wasted_grants_total",
      help: "Grants not used: they came too late to be sent safely (late) or their caller had left (no_waiter)",
      labelNames: ["action", "reason"] as const,
      registers: r,
    }),
    lateSends: new Counter({
      name: "keygate_late_sends_total",
      help: "Granted requests that left later than their slot (shifted: the shared window was moved by the lateness) or were not sent because they would have left after their grant allowed (not_sent)",
      labelNames: ["action", "outcome"] as const,
      registers: r,
    }),
    limiterMargin: new Gauge({
      name: "keygate_limiter_margin_ms",
      help: "The limiter's margin in force (ms added to the 1000 ms window): the configured value, widened while round trips to the cloud are jittery",
      // Set by the collect hooks that keygate_limiter_queue_depth (registered earlier) runs.
      registers: r,
    }),
    limiterRejected: new Counter({
      name: "keygate_limiter_rejected_total",
      help: "Requests refused RATE_LIMITED without spending a token",
      labelNames: ["tenant"] as const,
      registers: r,
    }),
    upstreamCalls: new Counter({
      name: "keygate_upstream_calls_total",
      help: "Calls to the cloud by action and result code (OK or the upstream/transport code)",
      labelNames: ["action", "code"] as const,
      registers: r,
    }),
    operatorProblems: new Counter({
      name: "keygate_operator_problems_total",
      help: "Cloud answers refusing keygate's own cloud identity (AuthFailure.*, UnauthorizedOperation.*): operators must act",
      labelNames: ["code"] as const,
      registers: r,
    }),
    upstreamDuration: new Histogram({
      name: "keygate_upstream_duration_seconds",
      help: "Latency of calls to the cloud",
      labelNames: ["action"] as const,
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10],
      registers: r,
    }),
    describeIdsPerCall: new Histogram({
      name: "keygate_describe_ids_per_call",
      help: "Distinct instance ids in each merged DescribeInstances poll (task watching, idle checks)",
      buckets: [1, 2, 5, 10, 20, 50, 100],
      registers: r,
    }),
    describeRequestsPerCall: new Histogram({
      name: "keygate_describe_requests_per_call",
      help: "Polls answered by each merged DescribeInstances call",
      buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500],
      registers: r,
    }),
    dedupJoins: new Counter({
      name: "keygate_dedup_joins_total",
      help: "Requests answered by joining an identical call or replaying an idempotency key",
      registers: r,
    }),
    batchInstances: new Histogram({
      name: "keygate_batch_instances",
      help: "Instances carried by one AssociateInstancesKeyPairs call (several callers' when calls merge)",
      buckets: [1, 2, 5, 10, 20, 50, 80, 100],
      registers: r,
    }),
    batchSplits: new Counter({
      name: "keygate_batch_splits_total",
      help: "Merged calls split in two because the cloud refused some of their instances",
      registers: r,
    }),
    batchSortedOut: new Counter({
      name: "keygate_batch_sorted_out_total",
      help: "Callers answered not found from a DescribeInstances after a merged call carrying them was refused as not found",
      registers: r,
    }),
    leaseWait: new Histogram({
      name: "keygate_lease_wait_seconds",
      help: "Time a request waited for its instances' leases",
      buckets: [0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60],
      registers: r,
    }),
    policyReloads: new Counter({
      name: "keygate_policy_reloads_total",
      help: "Policy file reloads by result (ok|rejected)",
      labelNames: ["result"] as const,
      registers: r,
    }),
    policyLoaded: new Gauge({
      name: "keygate_policy_last_reload_success_timestamp_seconds",
      help: "When the policy in force was loaded",
      registers: r,
    }),
    redisErrors: new Counter({
      name: "keygate_redis_errors_total",
      help: "Redis operations that failed (the affected requests got STORE_UNAVAILABLE)",
      registers: r,
    }),
    storeSuspect: new Gauge({
      name: "keygate_store_suspect",
      help: "1 while the shared store may have lost its data and is not yet verified or rebuilt (keygate checks with the cloud before sending)",
      registers: r,
    }),
    /** Named before the mode was called local-share; kept, since dashboards and alerts use it. */
    storeLocalShare: new Gauge({
      name: "keygate_store_degraded",
      help: "1 while Redis is unreachable and this replica runs on its own (KEYGATE_ON_STORE_DOWN=local-share)",
      registers: r,
    }),
    inflight: new Gauge({
      name: "keygate_inflight_requests",
      help: "Requests being handled on this replica",
      registers: r,
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;

/**
 * Counts one call to the cloud: by action and code, its latency, and, when the cloud refused
 * keygate's own identity, the operator-problem counter the README's alerts watch.
 */
export function recordUpstreamCall(metrics: Metrics, action: string, code: string, seconds: number): void {
  metrics.upstreamCalls.inc({ action, code });
  metrics.upstreamDuration.observe({ action }, seconds);
  if (code !== "OK" && classify(code).kind === "operator_problem") metrics.operatorProblems.inc({ code });
}

/**
 * The limiter's observer callbacks, counted into the metrics (the limiter knows nothing of
 * prom-client). Only the two cloud buckets are metered.
 */
export function limiterMetrics(
  metrics: Metrics,
  buckets: Record<"associate" | "describe", BucketSpec>,
): LimiterHooks {
  const actionOf = (bucket: string) => actionOfBucket(buckets, bucket);
  return {
    onGrant: (bucket, _tenant, waitedMs) => {
      const action = actionOf(bucket);
      if (action === undefined) return;
      metrics.tokensGranted.inc({ action });
      metrics.limiterWait.observe({ action }, waitedMs / 1000);
    },
    onReject: (reason, _bucket, tenant) => {
      if (reason === "deadline" || reason === "queue_full") metrics.limiterRejected.inc({ tenant });
    },
    onStoreError: () => metrics.redisErrors.inc(),
    onWastedGrant: (bucket, reason) => {
      const action = actionOf(bucket);
      if (action !== undefined) metrics.limiterWastedGrants.inc({ action, reason });
    },
    onLateSend: (bucket, outcome) => {
      const action = actionOf(bucket);
      if (action !== undefined) metrics.lateSends.inc({ action, outcome });
    },
  };
}
