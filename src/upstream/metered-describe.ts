/**
 * DescribeInstances as keygate sends it: every attempt takes a grant from the cluster-wide
 * describe bucket (and, for policy lookups, first from the caller's tenant lookup budget), obeys
 * the same send-time rule as AssociateInstancesKeyPairs (a grant that can no longer be sent in
 * time is dropped and taken again), and maps the cloud's refusals like any other call: a
 * RequestLimitExceeded makes every replica hold the bucket off, then the attempt is retried; if
 * time runs out first the caller hears RATE_LIMITED, never the raw cloud code.
 * See docs/decisions.md ("Lookups are budgeted").
 */
import type { Clock } from "../core/clock.js";
import { isKeygateError, keygateError, type KeygateError } from "../core/errors.js";
import type { InstanceInfo } from "../core/model.js";
import {
  type BucketSpec,
  type CallOptions,
  type Grant,
  pastSendBy,
  type RateLimiter,
  type Tenant,
  type Upstream,
} from "../core/ports.js";
import { isRateLimitedUpstream, isTransientUpstream } from "../core/cloud-errors.js";

/** Who a describe is for: a tenant's policy lookup, or keygate's own task polling (undefined). */
export interface DescribeFor {
  tenant?: Tenant | undefined;
}

export type MeteredDescribe = (
  region: string,
  ids: string[],
  call: CallOptions & DescribeFor,
) => Promise<InstanceInfo[]>;

/**
 * The same, but the ids may be given as a function read when the grant arrives (and again, unchanged,
 * on a retry): a merged poll keeps taking in ids while it waits for its token (describe-batcher.ts).
 */
export type LazyMeteredDescribe = (
  region: string,
  ids: string[] | (() => string[]),
  call: CallOptions & DescribeFor,
) => Promise<InstanceInfo[]>;

export interface MeteredDescribeOptions {
  upstream: Pick<Upstream, "describeInstances">;
  limiter: RateLimiter;
  clock: Clock;
  /** The shared DescribeInstances bucket of this credential + endpoint. */
  bucket: BucketSpec;
  /**
   * Lookups per second each tenant may cause, cluster-wide (0 = no per-tenant budget). Keeps one
   * tenant's flood of (refused) requests from spending the bucket other tenants need.
   */
  tenantBudget: number;
  /** How long every replica holds off after the cloud said RequestLimitExceeded. Default 1000 ms. */
  penaltyMs?: number;
  /** Retries of 5xx-like failures and timeouts (describe is read-only, so resending is safe). Default 2. */
  maxTransientRetries?: number;
  hooks?: {
    call?(code: string, seconds: number): void;
    /** A grant could not be sent in time and was taken again. */
    late?(): void;
  };
}

/** The tenant name task polling is queued under in the describe bucket's fair queue. */
export const SYSTEM_TENANT = "(keygate)";
const MAX_LIMIT_RETRIES = 5;

export function createMeteredDescribe(options: MeteredDescribeOptions): LazyMeteredDescribe {
  const { upstream, limiter, clock, bucket } = options;
  const penaltyMs = options.penaltyMs ?? 1000;
  const maxTransient = options.maxTransientRetries ?? 2;
  const hooks = options.hooks ?? {};

  const budgetOf = (tenant: Tenant): BucketSpec => ({
    key: `${bucket.key}:tenant:${tenant.name}`,
    limit: options.tenantBudget,
    windowMs: 1000,
  });

  const remaining = (call: CallOptions) =>
    call.deadline === undefined ? Number.POSITIVE_INFINITY : call.deadline - clock.now();

  /** A grant of the shared bucket that is still good to send on when it returns. */
  async function sendableGrant(call: CallOptions, tenant: Tenant | undefined): Promise<Grant> {
    for (;;) {
      const grant: Grant = await limiter.acquire({
        bucket,
        tenant: tenant?.name ?? SYSTEM_TENANT,
        weight: tenant?.weight ?? 1,
        signal: call.signal,
        deadline: call.deadline,
      });
      if (!pastSendBy(grant, clock.now())) return grant;
      grant.notSent?.(clock.now());
      hooks.late?.();
    }
  }

  return async (region, ids, call) => {
    const tenant = call.tenant;
    const opts: CallOptions = { signal: call.signal, deadline: call.deadline };
    if (tenant && options.tenantBudget > 0) {
      // The tenant's own budget first: a flood waits (and is refused) behind itself.
      await limiter.acquire({ bucket: budgetOf(tenant), tenant: tenant.name, weight: 1, ...opts });
    }
    let transient = 0;
    for (let limitRetries = 0; ;) {
      // After a RequestLimitExceeded this waits out the hold-off; if the deadline comes first the
      // limiter refuses with RATE_LIMITED (a documented reason), not the cloud's code.
      const grant = await sendableGrant(opts, tenant);
      const t0 = clock.now();
      try {
        const send = typeof ids === "function" ? ids() : ids;
        // The adapter checks the grant once more at the socket (SEND_TOO_LATE: nothing was sent).
        const r = await upstream.describeInstances(region, send, { ...opts, grant });
        hooks.call?.("OK", (clock.now() - t0) / 1000);
        return r.instances;
      } catch (err) {
        const e: KeygateError | undefined = isKeygateError(err) ? err : undefined;
        if (e?.reason === "SEND_TOO_LATE") {
          hooks.late?.();
          continue;
        }
        hooks.call?.(e?.upstreamCode ?? e?.reason ?? "UNKNOWN", (clock.now() - t0) / 1000);
        if (!e) throw err;
        if (isRateLimitedUpstream(e)) {
          // Someone outside keygate spent the quota: every replica holds off, then try again.
          await limiter.penalize(bucket, penaltyMs);
          if (++limitRetries > MAX_LIMIT_RETRIES || remaining(opts) <= 0) {
            throw keygateError("RATE_LIMITED", "DescribeInstances: the cloud's rate limit was reached", {
              retryAfterMs: penaltyMs,
              upstreamCode: e.upstreamCode,
              upstreamRequestId: e.upstreamRequestId,
            });
          }
          continue;
        }
        if (
          isTransientUpstream(e) &&
          transient < maxTransient &&
          remaining(opts) > 0 &&
          !opts.signal.aborted
        ) {
          transient += 1;
          await clock.sleep(Math.min(100 * 2 ** transient, Math.max(0, remaining(opts))), opts.signal);
          continue;
        }
        throw e;
      }
    }
  };
}
