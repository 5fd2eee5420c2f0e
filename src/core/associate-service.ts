import { setMaxListeners } from "node:events";
import type { Clock } from "./clock.js";
import { crashPoint } from "./crash-point.js";
import type { KeygateError } from "./errors.js";
import { isKeygateError, keygateError } from "./errors.js";
import type { AssociateInput, AssociateRequest, AssociateResult } from "./model.js";
import type {
  AuditEntry,
  BucketSpec,
  CallOptions,
  CallerCredential,
  Execution,
  InstanceLookup,
  Leases,
  LeaseHandle,
  Operations,
  PolicyGate,
  RateLimiter,
  StoreIntegrity,
  TaskWatcher,
  Tenant,
  Upstream,
} from "./ports.js";
import { isTransientUpstream, mayHaveReachedUpstream, nextStep } from "./cloud-errors.js";
import { reconcile, type SendHistory } from "./reconcile.js";
import { fingerprintOf } from "./fingerprint.js";
import { validateRequest } from "./validate.js";
import { createBatcher, newProgress } from "./batcher.js";
import { linkSignals } from "./call-wait.js";

/** Observers the orchestration reports to; all optional so tests can leave them out. */
export interface AssociateHooks {
  audit?: (entry: AuditEntry) => void;
  upstreamCall?: (action: string, code: string, seconds: number) => void;
  leaseWait?: (seconds: number) => void;
  dedupJoin?: () => void;
  /**
   * Something went wrong after the answer was sent (background task watch), with the request id
   * of the call it belongs to, so the log line joins that call's audit line.
   */
  backgroundError?: (err: unknown, requestId: string) => void;
  /** One AssociateInstancesKeyPairs call went out carrying `instances` for `members` callers. */
  batchCall?: (instances: number, members: number) => void;
  /** A call that failed for some of its instances was split in two (docs/decisions/batching.md). */
  batchSplit?: () => void;
  /** Members of a call refused as not found were answered from a DescribeInstances (same doc). */
  batchSortedOut?: (members: number) => void;
}

export interface AssociateServiceOptions {
  clock: Clock;
  upstream: Upstream;
  limiter: RateLimiter;
  leases: Leases;
  operations: Operations;
  policy: PolicyGate;
  lookup: InstanceLookup;
  tasks: TaskWatcher;
  /** The AssociateInstancesKeyPairs bucket of this credential + endpoint. */
  bucket: BucketSpec;
  /** Credential identity + endpoint: the namespace of leases and coalescing. */
  scope: string;
  /** This replica's name, recorded as the lease owner. */
  owner: string;
  /** Upper bound for the task watch that keeps leases after the call returned. */
  taskMaxWaitMs: number;
  /**
   * How long after a send started an original may still reach the cloud; a resend after an
   * uncertain outcome waits at least this long (docs/decisions/operation-lifecycle.md). Default 20 s.
   */
  resendHorizonMs?: number;
  /** Whether the shared store may have lost its data (src/store/epoch.ts). Default `neverSuspect`. */
  integrity?: StoreIntegrity | undefined;
  /**
   * Carrying several callers' attempts in one cloud call (docs/decisions/batching.md): on by
   * default, with no linger.
   */
  batching?: { enabled: boolean; lingerMs: number; idPrefix?: string };
  /**
   * Which instances the cloud knows now (a fresh DescribeInstances): lets the batcher sort out a
   * merged call refused as not found instead of bisecting it. Optional.
   */
  known?: (region: string, ids: string[], call: CallOptions) => Promise<ReadonlySet<string>>;
  /** Jitter source for retry backoff. */
  random?: () => number;
  hooks?: AssociateHooks;
}

/** How one execution's cloud call ended. */
interface Sent {
  requestId: string;
  /** The cloud call that carried the instances, when this execution sent it. */
  batch?: { id: string; instances: number };
  /** Set when a reconcile found the call applied: the instances are idle, nothing to watch. */
  settled?: AssociateResult["instances"];
}

export interface AssociateCall extends CallOptions {
  requestId: string;
  credential: CallerCredential;
  request: AssociateRequest;
}

/** The latest a send can happen for a call without a deadline (the API layer always sets one). */
const DEFAULT_SEND_BOUND_MS = 60_000;
const DENIALS: ReadonlySet<string> = new Set(["unauthenticated", "permission_denied", "invalid_argument"]);

/**
 * The request's whole path: authenticate → validate → policy → coalesce/idempotency → lease →
 * token → upstream (with retries that spend tokens) → task watch. Depends only on ports.
 */
export function createAssociateService(opts: AssociateServiceOptions) {
  const { clock, upstream, limiter, leases, operations, policy, lookup, tasks, bucket, scope, owner } = opts;
  const hooks = opts.hooks ?? {};
  const integrity: StoreIntegrity = opts.integrity ?? { suspect: () => false };
  const random = opts.random ?? Math.random;
  const reconcileDeps = { clock, tasks, resendHorizonMs: opts.resendHorizonMs ?? 20_000 };
  /** Leases held after an answer until the cloud task ends; awaited on drain. */
  const background = new Set<Promise<void>>();
  const backgroundAbort = new AbortController();
  // Every background watch listens to it (linkSignals): hundreds at once is normal, not a leak.
  setMaxListeners(0, backgroundAbort.signal);
  const batcher = createBatcher({
    clock,
    limiter,
    upstream,
    bucket,
    enabled: opts.batching?.enabled ?? true,
    lingerMs: opts.batching?.lingerMs ?? 0,
    idPrefix: opts.batching?.idPrefix,
    known: opts.known,
    hooks: {
      call: (code, seconds, instances, members) => {
        hooks.upstreamCall?.("AssociateInstancesKeyPairs", code, seconds);
        hooks.batchCall?.(instances, members);
      },
      split: () => hooks.batchSplit?.(),
      sortedOut: (members) => hooks.batchSortedOut?.(members),
    },
  });

  async function associate(call: AssociateCall): Promise<AssociateResult> {
    const started = clock.now();
    const { request } = call;
    const entry: AuditEntry = {
      requestId: call.requestId,
      tenant: undefined,
      region: request.region,
      instances: request.instanceIds,
      keys: request.keyIds,
      forceStop: request.forceStop,
      decision: "denied",
      deduplicated: false,
      limiterWaitMs: 0,
      leaseWaitMs: 0,
      attempts: 0,
      durationMs: 0,
    };
    try {
      const tenant = policy.authenticate(call.credential);
      if (!tenant) {
        entry.rule = "authentication";
        throw keygateError(
          "UNAUTHENTICATED",
          "missing or unknown credentials: send `authorization: Bearer <token>`",
        );
      }
      entry.tenant = tenant.name;
      validateRequest(request);
      const input: AssociateInput = {
        region: request.region,
        instanceIds: request.instanceIds,
        keyIds: request.keyIds,
        forceStop: request.forceStop,
      };
      await authorize(tenant, input, call, entry);
      entry.decision = "allowed";
      const result = await operations.run(
        {
          fingerprint: fingerprintOf(scope, input, request.waitForCompletion),
          idempotency: request.idempotencyKey
            ? { tenant: tenant.name, key: request.idempotencyKey }
            : undefined,
          execute: (execution) => execute(tenant, input, request.waitForCompletion, call, entry, execution),
        },
        call,
      );
      crashPoint("after-record");
      if (result.deduplicated) {
        entry.deduplicated = true;
        hooks.dedupJoin?.();
      }
      entry.upstreamRequestId = result.requestId;
      return result;
    } catch (err) {
      const e = asKeygateError(err, call);
      // Refused by keygate's own checks = denied; anything else (a lookup or store failure before
      // the policy could decide, or a failure after it allowed) = failed.
      entry.decision = entry.decision !== "allowed" && DENIALS.has(e.kind) ? "denied" : "failed";
      entry.reason = e.reason;
      entry.upstreamCode ??= e.upstreamCode;
      entry.upstreamRequestId ??= e.upstreamRequestId;
      throw e;
    } finally {
      entry.durationMs = clock.now() - started;
      hooks.audit?.(entry);
    }
  }

  async function authorize(tenant: Tenant, input: AssociateInput, call: AssociateCall, entry: AuditEntry) {
    const need = policy.needsLookup(tenant, input);
    const found = need.length > 0 ? await lookup.get(input.region, need, { ...call, tenant }) : new Map();
    const decision = policy.decide(tenant, input, found);
    if (!decision.allowed) {
      entry.rule = decision.rule;
      throw keygateError("POLICY_DENIED", `${decision.message} (policy rule: ${decision.rule})`);
    }
  }

  async function execute(
    tenant: Tenant,
    input: AssociateInput,
    waitForCompletion: boolean,
    call: AssociateCall,
    entry: AuditEntry,
    execution: Execution,
  ): Promise<AssociateResult> {
    crashPoint("after-claim");
    const leaseStart = clock.now();
    const lease = await leases.acquire(scope, input.instanceIds, { ...call, owner });
    crashPoint("after-lease");
    entry.leaseWaitMs = clock.now() - leaseStart;
    hooks.leaseWait?.(entry.leaseWaitMs / 1000);
    let handedOff = false;
    const linked = linkSignals([call.signal, lease.lost]);
    try {
      const opts = { signal: linked.signal, deadline: call.deadline };
      const sent = await send(
        tenant,
        input,
        { hasIdempotencyKey: call.request.idempotencyKey !== "", waits: waitForCompletion },
        lease,
        execution,
        opts,
        entry,
      );
      const { requestId } = sent;
      entry.upstreamRequestId = requestId;
      const batch = { batchId: sent.batch?.id ?? "", batchInstances: sent.batch?.instances ?? 0 };
      if (sent.settled)
        return { requestId, deduplicated: false, instances: waitForCompletion ? sent.settled : [], ...batch };
      if (waitForCompletion) {
        const instances = await tasks.waitForTasks(input.region, input.instanceIds, requestId, opts);
        return { requestId, deduplicated: false, instances, ...batch };
      }
      // The cloud task outlives the call: keep the instances leased until it ends (G3).
      handedOff = true;
      const watch = holdUntilTaskEnds(input, requestId, lease, call.requestId);
      background.add(watch);
      void watch.finally(() => background.delete(watch));
      return { requestId, deduplicated: false, instances: [], ...batch };
    } finally {
      linked.unlink();
      if (!handedOff) await lease.release().catch((e: unknown) => hooks.backgroundError?.(e, call.requestId));
    }
  }

  /**
   * Gets the operation applied at most once: follows what an earlier executor left, reconciles
   * before any resend whose predecessor may have reached the cloud, and checks the instances are
   * idle when the lease or the store cannot be trusted.
   */
  async function send(
    tenant: Tenant,
    input: AssociateInput,
    { hasIdempotencyKey, waits }: { hasIdempotencyKey: boolean; waits: boolean },
    lease: LeaseHandle,
    execution: Execution,
    call: CallOptions,
    entry: AuditEntry,
  ): Promise<Sent> {
    const inherited = execution.inherited;
    // The vanished executor's call was accepted: its task is the operation; never send again.
    if (inherited?.phase === "sent" && inherited.requestId) return { requestId: inherited.requestId };
    let history: SendHistory | undefined;
    if (inherited) {
      history = { sentAt: inherited.sentAt, requestIds: inherited.requestId ? [inherited.requestId] : [] };
    } else if (integrity.suspect() && hasIdempotencyKey) {
      // The store may have lost this key's record: the key's first call may have been applied.
      history = { sentAt: 0, requestIds: [] };
    }
    // An expired lease's holder may still have a task running on the instances.
    let checkIdle = lease.tookOver === true;
    return callWithRetries(tenant, input, call, entry, {
      execution,
      // Without a wait for the task, the finish comes next and records the RequestId itself.
      recordSent: waits,
      history,
      checkIdle: () => {
        const c = checkIdle || integrity.suspect();
        checkIdle = false;
        return c;
      },
    });
  }

  async function holdUntilTaskEnds(
    input: AssociateInput,
    requestId: string,
    lease: { lost: AbortSignal; release(): Promise<void> },
    callRequestId: string,
  ): Promise<void> {
    const linked = linkSignals([backgroundAbort.signal, lease.lost]);
    try {
      await tasks.waitForTasks(input.region, input.instanceIds, requestId, {
        signal: linked.signal,
        deadline: clock.now() + opts.taskMaxWaitMs,
      });
    } catch (err) {
      if (!backgroundAbort.signal.aborted) hooks.backgroundError?.(err, callRequestId);
    } finally {
      linked.unlink();
      await lease.release().catch((e: unknown) => hooks.backgroundError?.(e, callRequestId));
    }
  }

  async function callWithRetries(
    tenant: Tenant,
    input: AssociateInput,
    call: CallOptions,
    entry: AuditEntry,
    state: {
      execution: Execution;
      recordSent: boolean;
      history: SendHistory | undefined;
      checkIdle: () => boolean;
    },
  ): Promise<Sent> {
    const { execution } = state;
    /** Set while an earlier send may have reached the cloud: reconcile before sending again. */
    let uncertain = state.history;
    const requestIds = [...(uncertain?.requestIds ?? [])];
    let retries = 0;
    let transient = 0;
    /** This request's attempts that reached a cloud call. */
    let sends = 0;
    /** The cloud's answer that made us retry: what the caller hears if time runs out while retrying. */
    let retrying: KeygateError | undefined;
    const orLast = (err: unknown): never => {
      throw retrying && outOfTime(err, call) ? retrying : err;
    };
    if (uncertain) await execution.mark("uncertain", { sentAt: uncertain.sentAt });
    for (;;) {
      if (uncertain) {
        const verdict = await reconcile(reconcileDeps, input, { ...uncertain, requestIds }, call).catch(
          orLast,
        );
        if (verdict.applied) {
          await execution.mark("sent", { requestId: verdict.requestId });
          return { requestId: verdict.requestId, settled: verdict.instances };
        }
        uncertain = undefined;
        state.checkIdle(); // reconciling waited until idle
      } else if (state.checkIdle()) {
        const infos = await tasks.waitUntilIdle(input.region, input.instanceIds, call).catch(orLast);
        const idle = new Set(
          infos.filter((i) => i.latestOperationState !== "OPERATING").map((i) => i.instanceId),
        );
        const busy = input.instanceIds.find((id) => !idle.has(id));
        if (busy !== undefined) {
          throw retrying ?? keygateError("INSTANCE_BUSY", `instance ${busy} is still busy with a cloud task`);
        }
      }
      // "May be sending" is recorded before the attempt can take a token, so that a grant goes
      // out without another store round trip (a late send would bunch at the cloud: G1). The
      // attempt queues while the record is written, and goes out only once it is. Until the
      // send, the latest moment it could happen stands as sentAt: a takeover reconciles after it.
      // Rejected = another executor took the operation over: it, not we, may send.
      const marking = execution.mark("sending", {
        sentAt: call.deadline ?? clock.now() + DEFAULT_SEND_BOUND_MS,
      });
      const markFailure = marking.then(
        () => undefined,
        (err: unknown) => ({ err }),
      );
      // Every attempt, first or retry, spends a token (G1); the batcher may carry it in one call
      // with other callers' attempts that wait for a token too (docs/decisions/batching.md).
      const progress = newProgress();
      const carried = await batcher
        .send({ tenant, input, call, ready: marking }, progress)
        .then((s) => ({ ok: true as const, s }))
        .catch((err: unknown) => ({ ok: false as const, err }));
      entry.limiterWaitMs += progress.waitedMs;
      entry.attempts += progress.calls;
      entry.batchId = progress.batchId ?? entry.batchId;
      if (progress.batchId !== undefined) entry.batchSize = progress.batchInstances;
      if (carried.ok) {
        const { requestId } = carried.s;
        // Not recorded = a peer took over; it reconciles and finds this call applied.
        if (state.recordSent) await execution.mark("sent", { requestId }).catch(() => undefined);
        return { requestId, batch: { id: carried.s.batchId, instances: carried.s.batchInstances } };
      }
      const sentAt = progress.sentAt;
      if (sentAt === undefined) {
        // The record could not say "may be sending" (taken over, store down): nothing went out.
        const failed = await markFailure;
        if (failed) throw failed.err;
        // No token, so nothing went out: unless an earlier send may have, say so.
        if (!uncertain) await execution.mark("claimed").catch(() => undefined);
        return orLast(carried.err);
      }
      sends += 1;
      const e = asKeygateError(carried.err, call);
      entry.upstreamCode = e.upstreamCode;
      entry.upstreamRequestId = e.upstreamRequestId;
      if (mayHaveReachedUpstream(e)) {
        // A coded answer shows the request arrived: nothing of it is still on its way.
        uncertain = { sentAt: e.upstreamCode === undefined ? (sentAt ?? 0) : 0, requestIds };
        await execution.mark("uncertain", { sentAt: sentAt ?? 0 }).catch(orLast);
      }
      const step = nextStep({
        failure: e,
        retries,
        transientRetries: transient,
        // Splits (a few more calls for the same attempt) are bounded on their own.
        cloudCalls: sends,
        timeLeftMs: hasTimeLeft(call) ? remaining(call) : 0,
        random: random(),
      });
      switch (step.step) {
        case "penalize":
          // Someone outside keygate spent the quota: make every replica hold off, then retry.
          retrying = undefined;
          await limiter.penalize(bucket, step.penaltyMs);
          continue;
        case "backoff":
          retries += 1;
          if (isTransientUpstream(e)) transient += 1;
          retrying = e;
          await clock.sleep(step.delayMs, call.signal).catch(orLast);
          // Busy: another task runs; wait it out (a reconcile waits too).
          if (!uncertain) {
            await tasks.waitUntilIdle(input.region, input.instanceIds, call).catch(orLast);
            if (!hasTimeLeft(call)) throw e;
          }
          continue;
        case "answer":
          // An uncertain last send: the cloud may have applied it, ask before saying it failed.
          if (uncertain && hasTimeLeft(call)) {
            const verdict = await reconcile(reconcileDeps, input, { ...uncertain, requestIds }, call).catch(
              () => undefined,
            );
            if (verdict?.applied) {
              await execution.mark("sent", { requestId: verdict.requestId }).catch(() => undefined);
              return { requestId: verdict.requestId, settled: verdict.instances };
            }
          }
          // Every send so far was answered with a code: nothing is on its way, a rerun need not wait.
          if (!uncertain && e.upstreamCode !== undefined)
            await execution.mark("claimed").catch(() => undefined);
          throw e;
      }
    }
  }

  function remaining(call: CallOptions): number {
    return call.deadline === undefined ? Number.POSITIVE_INFINITY : Math.max(0, call.deadline - clock.now());
  }
  function hasTimeLeft(call: CallOptions): boolean {
    return remaining(call) > 0 && !call.signal.aborted;
  }
  /** A wait that ended because the deadline is (about to be) reached, not because of a new problem. */
  function outOfTime(err: unknown, call: CallOptions): boolean {
    if (remaining(call) <= 0) return true;
    if (!isKeygateError(err)) return call.signal.aborted;
    return err.reason === "DEADLINE_EXCEEDED" || err.reason === "RATE_LIMITED";
  }

  function asKeygateError(err: unknown, call: CallOptions): KeygateError {
    if (isKeygateError(err)) return err;
    if (call.signal.aborted) {
      return remaining(call) <= 0
        ? keygateError("DEADLINE_EXCEEDED", "the deadline passed before keygate could answer")
        : keygateError("CANCELLED", "the call was cancelled");
    }
    return keygateError("INTERNAL", "internal error", { cause: err });
  }

  return {
    associate,
    /** Leases still held for cloud tasks that outlive their calls. */
    backgroundCount: () => background.size,
    /** Waits (up to `ms`) for background task watches, then stops them and releases their leases. */
    async drain(ms: number): Promise<void> {
      if (background.size > 0) {
        await Promise.race([Promise.allSettled([...background]), clock.sleep(ms)]);
      }
      backgroundAbort.abort(keygateError("SHUTTING_DOWN", "keygate is shutting down"));
      await Promise.allSettled([...background]);
    },
  };
}

export type AssociateService = ReturnType<typeof createAssociateService>;
