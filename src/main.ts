/**
 * The one place that constructs implementations and wires them together (envoy's runner.go).
 * Everything else depends on the small interfaces in src/core/ports.ts.
 */
import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import type { AddressInfo } from "node:net";
import { createApiServer } from "./api/server.js";
import { createHealth } from "./api/health.js";
import { createKeyPairServiceImpl } from "./api/keypair-service.js";
import { createStoreBackends } from "./backends.js";
import type { Settings } from "./config/settings.js";
import { ASSOCIATE_ACTION, bucketsOf, DESCRIBE_ACTION, WARM_UP_INSTANCE_ID } from "./core/actions.js";
import { createAssociateService } from "./core/associate-service.js";
import { type Clock, systemClock } from "./core/clock.js";
import { armCrashPoint } from "./core/crash-point.js";
import { isKeygateError } from "./core/errors.js";
import { neverSuspect } from "./core/ports.js";
import { createTaskWatcher } from "./leases/task-watcher.js";
import { DEFAULT_BOOK_AHEAD_MS } from "./limiter/limiter.js";
import { createAdaptiveMargin } from "./limiter/margin.js";
import { spanOf } from "./limiter/window.js";
import { createAuditSink } from "./observability/audit.js";
import type { Logger } from "./observability/logger.js";
import { createMetrics, limiterMetrics, recordUpstreamCall } from "./observability/metrics.js";
import { createMetricsServer } from "./observability/metrics-server.js";
import { createPolicyGate } from "./policy/gate.js";
import { createInstanceCache } from "./policy/instance-cache.js";
import { createPolicySource, createStaticPolicySource } from "./policy/source.js";
import { openSharedStore } from "./store/shared-store.js";
import { createDescribeBatcher } from "./upstream/describe-batcher.js";
import { createMeteredDescribe, type MeteredDescribe } from "./upstream/metered-describe.js";
import { cloudProxy } from "./upstream/proxy.js";
import {
  createCredentialProvider,
  credentialIdentity,
  createTencentUpstream,
} from "./upstream/tencent-upstream.js";

export interface AppOptions {
  settings: Settings;
  logger: Logger;
  clock?: Clock;
  /** Policy given as text instead of KEYGATE_POLICY_FILE (used by `keygate dev`). */
  policyText?: { text: string; source: string } | undefined;
  /** Registers default process metrics (off in tests that start several apps in one process). */
  defaultMetrics?: boolean;
  /** Longest `start()` waits for the warm-up before it returns (readiness stays NOT_SERVING until warm). Default 10 s. */
  warmWaitMs?: number;
}

export async function createApp(opts: AppOptions) {
  const { settings, logger } = opts;
  armCrashPoint(settings.testCrashAt);
  const clock = opts.clock ?? systemClock;
  const metrics = createMetrics({
    defaultMetrics: opts.defaultMetrics ?? true,
    revision: settings.buildRevision,
  });
  const health = createHealth();
  // Ready means warm: not SERVING until the send path to the cloud has run once (warmUp below).
  health.set("upstream", false);
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
  const store = await openSharedStore({
    url: settings.redisUrl,
    caFile: settings.redisCaFile,
    connectionName: `keygate:${owner}`,
    timeoutMs: settings.storeTimeoutMs,
    onStoreDown: settings.onStoreDown,
    rebuildMs: settings.taskMaxWaitMs,
    // Slots booked before a loss lie at most one booking horizon past it: one span more, none is left.
    quietOutageMs: spanOf(1_000, settings.rateMarginMs) + DEFAULT_BOOK_AHEAD_MS + 100,
    clock,
    logger,
    hooks: {
      ready: (up) => health.set("redis", up),
      localShare: (active) => metrics.storeLocalShare.set(active ? 1 : 0),
      suspect: (s) => metrics.storeSuspect.set(s ? 1 : 0),
      error: () => metrics.redisErrors.inc(),
    },
  });
  closers.push(() => store.close());
  const { redis, epoch } = store;

  // --- upstream ------------------------------------------------------------------------------
  const credential = createCredentialProvider(settings.credentials);
  // The margin follows the path: widened while round trips to the cloud are jittery (margin.ts).
  const margin = createAdaptiveMargin({ floorMs: settings.rateMarginMs });
  const upstream = createTencentUpstream({
    endpoint: settings.endpoint,
    upstreamUrl: settings.upstreamUrl,
    proxy: settings.proxy,
    credential,
    reqTimeoutMs: settings.upstreamTimeoutMs,
    onRoundTrip: (ms) => margin.observe(ms),
  });
  closers.push(() => Promise.resolve(upstream.close()));
  const proxy = cloudProxy(settings.proxy, settings.endpoint, settings.upstreamUrl);
  if (proxy) logger.info({ proxy }, "cloud calls go through a proxy");
  const scope = `${await credentialIdentity(credential)}:${settings.endpoint}`;
  const buckets = bucketsOf(scope, { associate: settings.rateLimit, describe: settings.describeRateLimit });

  // --- limiter, leases, coalescing/idempotency -------------------------------------------------
  const { limiter, leases, operations } = createStoreBackends({
    redis,
    onStoreDown: settings.onStoreDown,
    replicas: settings.replicas,
    clock,
    limiter: {
      marginMs: settings.rateMarginMs,
      margin,
      maxWaitMs: settings.maxWaitMs,
      maxQueue: settings.maxQueue,
      hooks: limiterMetrics(metrics, buckets),
      ...(epoch ? { coldHoldOffWaived: epoch.coldHoldOffWaived } : {}),
    },
    leases: { maxWaitersPerInstance: settings.maxInstanceWaiters, recheckMs: settings.leaseRecheckMs },
    onModeChange: (part, mode) =>
      logger.warn({ mode }, `${part} mode changed (KEYGATE_ON_STORE_DOWN=local-share)`),
  });
  metrics.onCollect(() => {
    metrics.limiterQueueDepth.set({ action: ASSOCIATE_ACTION }, limiter.queueDepth(buckets.associate.key));
    metrics.limiterQueueDepth.set({ action: DESCRIBE_ACTION }, limiter.queueDepth(buckets.describe.key));
    metrics.limiterMargin.set(margin.current());
  });
  const describe = createMeteredDescribe({
    upstream,
    limiter,
    clock,
    bucket: buckets.describe,
    tenantBudget: settings.lookupRatePerTenant,
    hooks: {
      call: (code, seconds) => recordUpstreamCall(metrics, DESCRIBE_ACTION, code, seconds),
      // Late grants are counted by the limiter (keygate_limiter_wasted_grants_total, keygate_late_sends_total).
    },
  });

  // keygate's own polls (task watching, idle checks, reconciling) share merged calls; policy
  // lookups keep the instance cache's batching and their tenant's budget (docs/decisions/upstream.md).
  const pollDescribe = createDescribeBatcher({
    describe,
    clock,
    gapMs: settings.describeMergeMs,
    hooks: {
      merged: (ids, requests) => {
        metrics.describeIdsPerCall.observe(ids);
        metrics.describeRequestsPerCall.observe(requests);
      },
    },
  });

  // --- the request path ----------------------------------------------------------------------
  const audit = createAuditSink(logger, metrics);
  const service = createAssociateService({
    clock,
    upstream,
    limiter,
    leases,
    operations,
    policy: createPolicyGate(() => policySource.current()),
    lookup: createInstanceCache({ describe, clock }),
    tasks: createTaskWatcher({
      describe: pollDescribe,
      clock,
      pollMs: settings.taskPollMs,
      maxWaitMs: settings.taskMaxWaitMs,
    }),
    bucket: buckets.associate,
    // A fresh poll (not the policy cache): whether an instance exists now.
    known: async (region, ids, call) =>
      new Set((await pollDescribe(region, ids, call)).map((i) => i.instanceId)),
    scope,
    owner,
    taskMaxWaitMs: settings.taskMaxWaitMs,
    integrity: epoch ?? neverSuspect,
    resendHorizonMs: 2 * settings.upstreamTimeoutMs,
    batching: {
      enabled: settings.batch,
      lingerMs: settings.batchLingerMs,
      idPrefix: `b${randomUUID().slice(0, 8)}`,
    },
    hooks: {
      audit,
      upstreamCall: (action, code, seconds) => recordUpstreamCall(metrics, action, code, seconds),
      leaseWait: (seconds) => metrics.leaseWait.observe(seconds),
      dedupJoin: () => metrics.dedupJoins.inc(),
      batchCall: (instances) => metrics.batchInstances.observe(instances),
      batchSplit: () => metrics.batchSplits.inc(),
      batchSortedOut: (members) => metrics.batchSortedOut.inc(members),
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
    limits: settings.limits,
    maxDeadlineMs: settings.defaultDeadlineMs,
    corsOrigins: settings.corsOrigins,
    audit,
    log: logger,
    health: health.impl,
    keyPairService: createKeyPairServiceImpl({
      service,
      clock,
      defaultDeadlineMs: settings.defaultDeadlineMs,
      audit,
      isDraining: () => draining,
      onInflight: (d) => {
        inflight += d;
        metrics.inflight.set(inflight);
      },
    }),
  });
  const metricsServer = createMetricsServer(metrics.registry, settings.host, settings.metricsPort, () =>
    health.readiness(),
  );

  const warming = new AbortController();
  let warm: Promise<void> | undefined;

  let apiAddress: AddressInfo | undefined;
  let metricsAddress: AddressInfo | undefined;
  let stopping: Promise<void> | undefined;

  return {
    settings,
    health,
    metrics,
    policy: policySource,
    limiter,
    /**
     * Listens, then waits for the warm-up (see `warmUp`). `onListening` runs as soon as both ports
     * listen, before that wait: the CLI installs its signal handlers there, so a SIGTERM during
     * the warm-up drains as usual.
     */
    async start(
      startOpts: { onListening?: () => void } = {},
    ): Promise<{ api: AddressInfo; metrics: AddressInfo }> {
      apiAddress = await api.listen();
      metricsAddress = await metricsServer.listen();

      startOpts.onListening?.();
      // Readiness waits for the warm-up; start() returns once warm (or after WARM_WAIT_MS, while
      // the warm-up keeps trying in the background and readiness stays NOT_SERVING).
      warm ??= warmUp(describe, clock, warming.signal, logger).then(async (ok) => {
        if (!ok) return;
        health.set("upstream", true);
        // After SERVING, not before it: readiness does not wait for them. start() (and with it the
        // "keygate listening" line that scripts and tests wait for) does: little else comes after.
        await seedMargin(describe, clock, warming.signal);
      });
      const waited = new AbortController();
      const onStop = () => waited.abort();
      warming.signal.addEventListener("abort", onStop, { once: true });
      await Promise.race([
        warm,
        clock.sleep(opts.warmWaitMs ?? WARM_WAIT_MS, waited.signal).catch(() => undefined),
      ]);
      waited.abort();
      warming.signal.removeEventListener("abort", onStop);
      // Logged once warm (or once the wait is over): what scripts and tests wait for.
      logger.info(
        {
          api: `${apiAddress.address}:${apiAddress.port}`,
          metrics: `${metricsAddress.address}:${metricsAddress.port}`,
          ready: health.isServing(),
        },
        "keygate listening",
      );
      return { api: apiAddress, metrics: metricsAddress };
    },
    /**
     * Graceful drain, ending with the work rather than the timer: NOT_SERVING and no new
     * connections at once; in-flight calls may finish; callers still queued for an associate token
     * get SHUTTING_DOWN, while DescribeInstances keeps working so that task watchers see their
     * tasks end and release each lease at once; then everything closes and the process exits.
     */
    stop(drainMs = settings.drainMs): Promise<void> {
      stopping ??= (async () => {
        draining = true;
        health.setDraining();
        warming.abort();
        logger.info({ inflight, drainMs }, "draining");
        const until = clock.now() + drainMs;
        void api.stopAccepting();
        // Keep 20% of the budget to answer the queued callers before the grace period ends.
        const softUntil = clock.now() + drainMs * 0.8;
        while (inflight > 0 && clock.now() < softUntil) await clock.sleep(25);
        limiter.closeBucket(buckets.associate.key);
        while (inflight > 0 && clock.now() < until) await clock.sleep(25);
        await service.drain(Math.max(0, until - clock.now()));
        await limiter.close();
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

/** How long start() waits for the warm-up before returning (readiness stays NOT_SERVING until warm). */
const WARM_WAIT_MS = 10_000;
const WARM_REGION = "ap-guangzhou";
/** Round trips after the warm-up call that seed the adaptive margin (margin.ts needs 5 samples). */
const SEED_ROUND_TRIPS = 4;

/**
 * Ready means warm (docs/decisions/limiter.md, "Ready means warm"): one DescribeInstances through
 * the whole send path — the describe bucket's grant, credentials, SDK signing, the send gate and a
 * keep-alive connection to the cloud — before this replica reports SERVING, so its first granted
 * calls are not its slowest. Any answer of the cloud counts (a coded refusal ran the path too);
 * an unreachable cloud is tried again with backoff until it answers or the app stops.
 */
async function warmUp(
  describe: MeteredDescribe,
  clock: Clock,
  signal: AbortSignal,
  logger: Logger,
): Promise<boolean> {
  for (let attempt = 0; !signal.aborted; attempt++) {
    try {
      await describe(WARM_REGION, [WARM_UP_INSTANCE_ID], { signal, deadline: clock.now() + 10_000 });
      return true;
    } catch (err) {
      if (isKeygateError(err) && err.upstreamCode !== undefined) return true;
      if (signal.aborted) break;
      logger.warn({ err: errorText(err), attempt }, "warm-up call to the cloud failed; not ready yet");
      await clock.sleep(Math.min(5_000, 200 * 2 ** attempt), signal).catch(() => undefined);
    }
  }
  return false; // stopped before warm: never SERVING
}

/**
 * A few more round trips right after the warm-up (best effort), so that the adaptive margin follows
 * this path's jitter from the replica's first seconds; until they are in, the configured margin
 * holds (it is never less). Stopped with the app.
 */
async function seedMargin(describe: MeteredDescribe, clock: Clock, signal: AbortSignal): Promise<void> {
  for (let i = 0; i < SEED_ROUND_TRIPS && !signal.aborted; i++) {
    await describe(WARM_REGION, [WARM_UP_INSTANCE_ID], { signal, deadline: clock.now() + 2_000 }).catch(
      () => undefined,
    );
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
