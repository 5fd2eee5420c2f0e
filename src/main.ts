/**
 * The one place that constructs implementations and wires them together (envoy's runner.go).
 * Everything else depends on the small interfaces in src/core/ports.ts.
 */
import { hostname } from "node:os";
import type { AddressInfo } from "node:net";
import { createApiServer } from "./api/server.js";
import { createHealth } from "./api/health.js";
import { createKeyPairServiceImpl } from "./api/keypair-service.js";
import type { Settings } from "./config/settings.js";
import { createAssociateService } from "./core/associate-service.js";
import { type Clock, systemClock } from "./core/clock.js";
import type { BucketSpec, PolicyGate, Tenant } from "./core/ports.js";
import { createFallbackOperations } from "./dedup/fallback-operations.js";
import { createMemoryOperations } from "./dedup/memory-operations.js";
import { createRedisOperations } from "./dedup/redis-operations.js";
import { createFallbackLeases } from "./leases/fallback-leases.js";
import { createMemoryLeases } from "./leases/memory-leases.js";
import { createRedisLeases } from "./leases/redis-leases.js";
import { createTaskWatcher } from "./leases/task-watcher.js";
import { createFallbackLimiter } from "./limiter/degraded-limiter.js";
import { createMemoryLimiter, createRedisLimiter, type Limiter } from "./limiter/index.js";
import { createAuditSink } from "./observability/audit.js";
import type { Logger } from "./observability/logger.js";
import { createMetrics } from "./observability/metrics.js";
import { createMetricsServer } from "./observability/metrics-server.js";
import { authenticateBearer, authenticateIdentity } from "./policy/authenticate.js";
import { decide, needsLookup } from "./policy/decide.js";
import { createInstanceCache } from "./policy/instance-cache.js";
import type { Policy } from "./policy/policy.js";
import { createPolicySource, createStaticPolicySource } from "./policy/source.js";
import { createRedis, redact, type RedisClient } from "./store/redis.js";
import {
  createCredentialProvider,
  credentialIdentity,
  createTencentUpstream,
} from "./upstream/tencent-upstream.js";
import { createMeteredDescribe, DESCRIBE_ACTION } from "./upstream/metered-describe.js";

export interface AppOptions {
  settings: Settings;
  logger: Logger;
  clock?: Clock;
  /** Policy given as text instead of KEYGATE_POLICY_FILE (used by `keygate dev`). */
  policyText?: { text: string; source: string } | undefined;
  /** Registers default process metrics (off in tests that start several apps in one process). */
  defaultMetrics?: boolean;
}

export const ASSOCIATE_ACTION = "AssociateInstancesKeyPairs";
export { DESCRIBE_ACTION };

export async function createApp(opts: AppOptions) {
  const { settings, logger } = opts;
  const clock = opts.clock ?? systemClock;
  const metrics = createMetrics({ defaultMetrics: opts.defaultMetrics ?? true });
  const health = createHealth();
  const owner = `${hostname()}:${process.pid}`;
  const closers: (() => Promise<unknown>)[] = [];

  // --- policy --------------------------------------------------------------------------------
  const policySource = opts.policyText
    ? createStaticPolicySource(opts.policyText.text, opts.policyText.source)
    : createPolicySource({
        path: settings.policyFile ?? "",
        onReload: (p) => {
          metrics.policyReloads.inc({ result: "ok" });
          metrics.policyLoaded.set(clock.now() / 1000);
          logger.info({ policy: p.source, digest: p.digest, tenants: p.tenants.size }, "policy loaded");
        },
        onError: (errors) => {
          metrics.policyReloads.inc({ result: "rejected" });
          logger.error({ errors }, "policy file rejected; the last good version stays in force");
        },
      });
  const initial = await policySource.start();
  if (!initial.ok) {
    throw new StartupError(
      `policy file ${settings.policyFile ?? ""} is invalid:\n${initial.errors.map((e) => `  - ${e}`).join("\n")}`,
    );
  }
  health.set("policy", true);
  closers.push(() => policySource.close());

  // --- store ---------------------------------------------------------------------------------
  let redis: RedisClient | undefined;
  if (settings.redisUrl) {
    redis = createRedis(settings.redisUrl, { connectionName: `keygate:${owner}` });
    const client = redis;
    // local-share: Redis is not a readiness component; an outage is a degraded mode, logged and gauged.
    let degraded: boolean | undefined;
    const redisUp = (up: boolean) => {
      if (settings.onStoreDown !== "local-share") return health.set("redis", up);
      if (degraded === !up) return;
      if (!up && degraded === false)
        logger.warn("redis unreachable: local-share mode, this replica limits, leases and dedups on its own");
      degraded = !up;
      metrics.storeDegraded.set(up ? 0 : 1);
    };
    redisUp(false);
    client.on("ready", () => {
      redisUp(true);
      logger.info({ redis: redact(settings.redisUrl ?? "") }, "redis connected");
    });
    client.on("error", (err: Error) => {
      metrics.redisErrors.inc();
      logger.warn({ err: err.message }, "redis error");
    });
    client.on("end", () => redisUp(false));
    client.on("close", () => redisUp(false));
    closers.push(async () => {
      await client.quit().catch(() => client.disconnect());
    });
    // Commands fail fast while disconnected (no offline queue), so give the first connection a
    // moment; if Redis is still down we start anyway, NOT_SERVING, and recover when it returns.
    await waitReady(client, clock, 5_000).catch(() =>
      logger.error(
        { redis: redact(settings.redisUrl ?? "") },
        settings.onStoreDown === "local-share"
          ? "redis is not reachable yet; local-share: this replica works on its own until it is"
          : "redis is not reachable yet; answering STORE_UNAVAILABLE until it is",
      ),
    );
  } else {
    logger.warn("KEYGATE_REDIS_URL is not set: in-memory store, safe for ONE replica only");
  }

  // --- upstream ------------------------------------------------------------------------------
  const credential = createCredentialProvider(settings.credentials);
  const upstream = createTencentUpstream({
    endpoint: settings.endpoint,
    upstreamUrl: settings.upstreamUrl,
    credential,
    reqTimeoutMs: settings.upstreamTimeoutMs,
  });
  closers.push(() => Promise.resolve(upstream.close()));
  const identity = await credentialIdentity(credential);
  const scope = `${identity}:${settings.endpoint}`;
  const associateBucket: BucketSpec = {
    key: `${scope}:${ASSOCIATE_ACTION}`,
    limit: settings.rateLimit,
    windowMs: 1000,
  };
  const describeBucket: BucketSpec = {
    key: `${scope}:${DESCRIBE_ACTION}`,
    limit: settings.describeRateLimit,
    windowMs: 1000,
    // 40 grants due in the same ms cannot all be sent within the send-by bound by one event
    // loop; spread over half the window they can (no cost in rate: rounds keep their spread).
    slotGapMs: Math.floor(500 / settings.describeRateLimit),
  };

  // --- limiter -------------------------------------------------------------------------------
  // Only the two cloud buckets are metered; a tenant's lookup budget is not a cloud action.
  const actionOf = (bucketKey: string) =>
    bucketKey === describeBucket.key
      ? DESCRIBE_ACTION
      : bucketKey === associateBucket.key
        ? ASSOCIATE_ACTION
        : undefined;
  const limiterOptions = {
    clock,
    marginMs: settings.rateMarginMs,
    maxWaitMs: settings.maxWaitMs,
    maxQueue: settings.maxQueue,
    hooks: {
      onGrant: (bucket: string, _tenant: string, waitedMs: number) => {
        const action = actionOf(bucket);
        if (action === undefined) return;
        metrics.tokensGranted.inc({ action });
        metrics.limiterWait.observe({ action }, waitedMs / 1000);
      },
      onReject: (reason: string, _bucket: string, tenant: string) => {
        if (reason === "deadline" || reason === "queue_full") metrics.limiterRejected.inc({ tenant });
      },
      onStoreError: () => metrics.redisErrors.inc(),
      onWastedGrant: (bucket: string, reason: "late" | "no_waiter") => {
        const action = actionOf(bucket);
        if (action !== undefined) metrics.limiterWastedGrants.inc({ action, reason });
      },
    },
  };
  const redisForLimiter = redis;
  const limiter: Limiter = !redisForLimiter
    ? createMemoryLimiter(limiterOptions)
    : settings.onStoreDown === "local-share"
      ? createFallbackLimiter({
          primary: createRedisLimiter({ ...limiterOptions, client: redisForLimiter }),
          createFallback: () => createMemoryLimiter(limiterOptions),
          replicas: settings.replicas,
          primaryReady: () => redisForLimiter.status === "ready",
          clock,
          marginMs: settings.rateMarginMs,
          onModeChange: (mode) =>
            logger.warn({ mode }, "rate limiter mode changed (KEYGATE_ON_STORE_DOWN=local-share)"),
        })
      : createRedisLimiter({ ...limiterOptions, client: redisForLimiter });
  metrics.onCollect(() => {
    metrics.limiterQueueDepth.set({ action: ASSOCIATE_ACTION }, limiter.queueDepth(associateBucket.key));
    metrics.limiterQueueDepth.set({ action: DESCRIBE_ACTION }, limiter.queueDepth(describeBucket.key));
  });

  /** DescribeInstances through its own cluster-wide bucket (policy lookups and task polling share it). */
  const describe = createMeteredDescribe({
    upstream,
    limiter,
    clock,
    bucket: describeBucket,
    tenantBudget: settings.lookupRatePerTenant,
    hooks: {
      call: (code, seconds) => {
        metrics.upstreamCalls.inc({ action: DESCRIBE_ACTION, code });
        metrics.upstreamDuration.observe({ action: DESCRIBE_ACTION }, seconds);
      },
      late: () => metrics.limiterWastedGrants.inc({ action: DESCRIBE_ACTION, reason: "late" }),
    },
  });

  // --- leases, coalescing, task watch ---------------------------------------------------------
  const localShare = redis && settings.onStoreDown === "local-share" ? redis : undefined;
  const onStoreMode = (what: string) => (mode: string) =>
    logger.warn({ mode }, `${what} mode changed (KEYGATE_ON_STORE_DOWN=local-share)`);
  const leaseOptions = {
    clock,
    maxWaitersPerInstance: settings.maxInstanceWaiters,
    recheckMs: settings.leaseRecheckMs,
  };
  const leases = localShare
    ? createFallbackLeases({
        primary: createRedisLeases({ client: localShare, ...leaseOptions }),
        fallback: createMemoryLeases(leaseOptions),
        primaryReady: () => localShare.status === "ready",
        clock,
        onModeChange: onStoreMode("leases"),
      })
    : redis
      ? createRedisLeases({ client: redis, ...leaseOptions })
      : createMemoryLeases(leaseOptions);
  const operations = localShare
    ? createFallbackOperations({
        primary: createRedisOperations({ client: localShare, clock }),
        fallback: createMemoryOperations({ clock }),
        primaryReady: () => localShare.status === "ready",
        clock,
        onModeChange: onStoreMode("coalescing/idempotency"),
      })
    : redis
      ? createRedisOperations({ client: redis, clock })
      : createMemoryOperations({ clock });
  const tasks = createTaskWatcher({
    describe,
    clock,
    pollMs: settings.taskPollMs,
    maxWaitMs: settings.taskMaxWaitMs,
  });
  const lookup = createInstanceCache({ describe, clock });

  const gate = policyGate(() => policySource.current());
  const service = createAssociateService({
    clock,
    upstream,
    limiter,
    leases,
    operations,
    policy: gate,
    lookup,
    tasks,
    bucket: associateBucket,
    scope,
    owner,
    taskMaxWaitMs: settings.taskMaxWaitMs,
    hooks: {
      audit: createAuditSink(logger, metrics),
      upstreamCall: (action, code, seconds) => {
        metrics.upstreamCalls.inc({ action, code });
        metrics.upstreamDuration.observe({ action }, seconds);
      },
      leaseWait: (seconds) => metrics.leaseWait.observe(seconds),
      dedupJoin: () => metrics.dedupJoins.inc(),
      backgroundError: (err, requestId) =>
        logger.warn({ requestId, err: errorText(err) }, "background task watch failed"),
    },
  });

  // --- servers -------------------------------------------------------------------------------
  let draining = false;
  let inflight = 0;
  const api = createApiServer({
    host: settings.host,
    port: settings.port,
    tls: settings.tls,
    health: health.impl,
    keyPairService: createKeyPairServiceImpl({
      service,
      clock,
      defaultDeadlineMs: settings.defaultDeadlineMs,
      isDraining: () => draining,
      onInflight: (d) => {
        inflight += d;
        metrics.inflight.set(inflight);
      },
    }),
  });
  const metricsServer = createMetricsServer(metrics.registry, settings.host, settings.metricsPort);

  let apiAddress: AddressInfo | undefined;
  let metricsAddress: AddressInfo | undefined;
  let stopping: Promise<void> | undefined;

  return {
    settings,
    health,
    metrics,
    policy: policySource,
    limiter,
    async start(): Promise<{ api: AddressInfo; metrics: AddressInfo }> {
      apiAddress = await api.listen();
      metricsAddress = await metricsServer.listen();
      logger.info(
        {
          api: `${apiAddress.address}:${apiAddress.port}`,
          metrics: `${metricsAddress.address}:${metricsAddress.port}`,
        },
        "keygate listening",
      );
      return { api: apiAddress, metrics: metricsAddress };
    },
    /**
     * Graceful drain: NOT_SERVING at once, no new connections, in-flight calls may finish;
     * callers still queued for a token get a clean UNAVAILABLE before `drainMs` runs out.
     */
    stop(drainMs = settings.drainMs): Promise<void> {
      stopping ??= (async () => {
        draining = true;
        health.setDraining();
        logger.info({ inflight, drainMs }, "draining");
        const until = clock.now() + drainMs;
        void api.stopAccepting();
        // Keep 20% of the budget to answer the queued callers before the grace period ends.
        const softUntil = clock.now() + drainMs * 0.8;
        while (inflight > 0 && clock.now() < softUntil) await clock.sleep(25);
        await limiter.close();
        while (inflight > 0 && clock.now() < until) await clock.sleep(25);
        await service.drain(Math.max(0, until - clock.now()));
        // Health Watch streams end after reporting NOT_SERVING; give their last bytes a moment to
        // leave before cutting the connections that are still open.
        health.close();
        await api.settle(500);
        api.destroy();
        await metricsServer.close();
        await leases.close();
        await operations.close();
        for (const close of closers.reverse()) await close().catch(() => undefined);
        logger.info({ inflight }, "stopped");
      })();
      return stopping;
    },
  };
}

export type App = Awaited<ReturnType<typeof createApp>>;

/** A start-up problem the CLI prints as is (no stack trace). */
export class StartupError extends Error {
  override name = "StartupError";
}

/** Adapts the hot-reloaded policy to the orchestration's port. Each call reads the version in force. */
function policyGate(current: () => Policy): PolicyGate {
  const tenantOf = (t: Tenant) => current().tenants.get(t.name);
  return {
    authenticate(cred) {
      const p = current();
      // A bearer token, when sent, decides alone: an unknown token is refused even if the
      // connection also has a valid client certificate (no silent fallback to another identity).
      const t =
        cred.bearer !== undefined
          ? authenticateBearer(p, cred.bearer)
          : cred.uris || cred.dnsNames
            ? authenticateIdentity(p, { spiffe: cred.uris ?? [], dns: cred.dnsNames ?? [] })
            : undefined;
      return t ? { name: t.name, weight: t.weight } : undefined;
    },
    needsLookup(t, input) {
      const tp = tenantOf(t);
      return tp ? needsLookup(tp, input) : [];
    },
    decide(t, input, found) {
      const tp = tenantOf(t);
      if (!tp)
        return {
          allowed: false,
          rule: "tenant",
          message: "the tenant no longer exists in the policy",
          offending: [],
        };
      return decide(tp, input, found);
    },
  };
}

async function waitReady(client: RedisClient, clock: Clock, ms: number): Promise<void> {
  const until = clock.now() + ms;
  while (client.status !== "ready") {
    if (clock.now() > until) throw new Error("redis not ready");
    await clock.sleep(20);
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
