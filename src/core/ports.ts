/**
 * The small interfaces the orchestration depends on. Redis, the Tencent SDK and the
 * emulator implement them; only `src/main.ts` constructs the implementations.
 */
import type { AssociateInput, AssociateResult, InstanceInfo, InstanceOutcome } from "./model.js";

/** Cancellation and deadline of the caller, passed down to every wait and every upstream call. */
export interface CallOptions {
  signal: AbortSignal;
  /** Epoch milliseconds (same clock as `Clock.now()`); undefined = no deadline of the caller's own. */
  deadline?: number | undefined;
}

/**
 * The cloud. Implementations throw `KeygateError` only: with `upstreamCode` when the cloud
 * answered an error, with reason UPSTREAM_* when it could not be reached or answered garbage.
 */
export interface Upstream {
  associateInstancesKeyPairs(
    input: AssociateInput,
    opts: CallOptions & UpstreamSendOptions,
  ): Promise<{ requestId: string }>;
  /** At most 100 ids per call. */
  describeInstances(
    region: string,
    instanceIds: string[],
    opts: CallOptions & UpstreamSendOptions,
  ): Promise<{ requestId: string; instances: InstanceInfo[] }>;
}

/**
 * The limiter's grant a call is sent on. An upstream that can see the moment its request is
 * written (the Tencent adapter, through its own http agent) checks `sendBy` there, and throws
 * SEND_TOO_LATE without writing anything when it has passed; it reports the real departure
 * through `grant.sent` (docs/decisions/limiter.md, "The last check is at the socket").
 */
export interface UpstreamSendOptions {
  grant?: Grant | undefined;
}

/** One cluster-wide sliding-window bucket: at most `limit` grants in any `windowMs`. */
export interface BucketSpec {
  /** Identifies credential + endpoint + action; never contains a secret. */
  key: string;
  limit: number;
  windowMs: number;
  /**
   * Least ms between this bucket's slots while it is backlogged (overrides the limiter's
   * `slotGapMs`). Spreads a window's grants so that sending one does not make the next late.
   */
  slotGapMs?: number;
}

export interface AcquireRequest extends CallOptions {
  bucket: BucketSpec;
  tenant: string;
  /** The tenant's policy weight, > 0. */
  weight: number;
}

export interface Grant {
  waitedMs: number;
  /**
   * Epoch ms by which the upstream request must have been sent; a later send could bunch
   * up with later grants at the cloud, so the caller acquires again instead (the grant is wasted).
   */
  sendBy?: number;
  /** Epoch ms the grant's slot was planned for: the request should leave then. */
  plannedAt?: number;
  /**
   * Tells the limiter when the request actually left (epoch ms); a departure later than
   * `plannedAt` moves the shared window so the 10th call after it still keeps the span.
   */
  sent?(at: number): void;
  /** Tells the limiter the request was not sent: it would have left after `sendBy` (a wasted grant). */
  notSent?(at: number): void;
}

/** Whether a request sent at `now` on `grant` would leave later than the grant allows. */
export const pastSendBy = (grant: Grant, now: number): boolean =>
  grant.sendBy !== undefined && now > grant.sendBy;

/**
 * The cluster-wide limiter. `acquire` resolves when one upstream call may be sent now, or
 * throws KeygateError RATE_LIMITED (with retryAfterMs, no token spent) / STORE_UNAVAILABLE.
 */
export interface RateLimiter {
  acquire(req: AcquireRequest): Promise<Grant>;
  /** The upstream said RequestLimitExceeded: every replica holds off this bucket for `ms`. */
  penalize(bucket: BucketSpec, ms: number): Promise<void>;
  close(): Promise<void>;
}

/** Held leases on a set of instances; renewed in the background until released. */
export interface LeaseHandle {
  readonly fence: number;
  /** Aborts if the lease was lost (could not be renewed). */
  readonly lost: AbortSignal;
  /**
   * True when this acquisition took over a lease that EXPIRED (its holder stalled or crashed, and
   * its cloud task may still run), not one that was released: check the instances before sending.
   */
  readonly tookOver?: boolean;
  release(): Promise<void>;
}

/** Per-instance leases shared by all replicas. */
export interface Leases {
  /**
   * Takes the leases of all `instanceIds` at once (all or none), waiting while any is held,
   * until the deadline (KeygateError INSTANCE_BUSY) or the signal aborts.
   */
  acquire(scope: string, instanceIds: string[], opts: CallOptions & { owner: string }): Promise<LeaseHandle>;
  close(): Promise<void>;
}

/** How far an execution got with its cloud call (docs/decisions/operation-lifecycle.md). */
export type SendPhase = "sending" | "sent" | "uncertain";
/** What an execution may record: a send phase, or "claimed" again when a `sending` mark led to no send. */
export type MarkPhase = SendPhase | "claimed";

/** What one execution of an operation may know and record about its cloud call. */
export interface Execution {
  /**
   * Left by an earlier executor of the same operation that vanished (crashed, stalled) after it
   * may have sent: the new executor must not send blindly (watch `requestId`, or reconcile).
   */
  inherited?: { phase: SendPhase; sentAt: number; requestId?: string | undefined } | undefined;
  /**
   * Records the cloud call's progress before and after the send. Fenced: it rejects when this
   * execution no longer owns the operation, and then nothing may be sent.
   */
  mark(phase: MarkPhase, detail?: { sentAt?: number; requestId?: string }): Promise<void>;
}

/** An execution that records nothing (no shared store behind it). */
export const unrecordedExecution: Execution = { mark: () => Promise.resolve() };

/**
 * Whether the shared store may have lost its state (e.g. Redis restarted empty) and has not been
 * verified since: until it has, keygate checks with the cloud before it sends.
 */
export interface StoreIntegrity {
  suspect(): boolean;
}

/** No shared store that could lose data behind keygate's back (memory store, tests). */
export const neverSuspect: StoreIntegrity = { suspect: () => false };

export interface OperationRun {
  /** Identical requests (same credential scope, region, instance set, key set, force_stop) share it. */
  fingerprint: string;
  /** Present when the caller gave an idempotency_key. */
  idempotency?: { tenant: string; key: string } | undefined;
  /** Does the work; called at most once cluster-wide per fingerprint in flight / idempotency key. */
  execute: (execution: Execution) => Promise<AssociateResult>;
}

/** Coalescing of identical in-flight calls and idempotency keys (24 h), shared by all replicas. */
export interface Operations {
  /** Runs or joins; `deduplicated` is true for callers that did not execute. */
  run(op: OperationRun, opts: CallOptions): Promise<AssociateResult>;
  close(): Promise<void>;
}

/** The tenant a caller authenticated as. */
export interface Tenant {
  name: string;
  /** Share of the global limit when tenants compete. */
  weight: number;
}

/** How the caller proved who it is: a bearer token and/or a verified mTLS client certificate. */
export interface CallerCredential {
  bearer?: string | undefined;
  /** URI SANs (SPIFFE IDs) and DNS SANs of a verified client certificate. */
  uris?: string[] | undefined;
  dnsNames?: string[] | undefined;
}

export type PolicyDecision =
  { allowed: true } | { allowed: false; rule: string; message: string; offending: string[] };

/** The tenant policy in force (hot-reloaded behind this interface). */
export interface PolicyGate {
  authenticate(credential: CallerCredential): Tenant | undefined;
  /** Instance ids whose decision needs DescribeInstances (tags / projects selectors). */
  needsLookup(tenant: Tenant, input: AssociateInput): string[];
  decide(
    tenant: Tenant,
    input: AssociateInput,
    lookup: ReadonlyMap<string, InstanceInfo | undefined>,
  ): PolicyDecision;
}

/** Cached, batched, rate-limited DescribeInstances for policy decisions. */
export interface InstanceLookup {
  /** `opts.tenant`: whose lookup budget and fair share the describe spends. */
  get(
    region: string,
    instanceIds: string[],
    opts: CallOptions & { tenant?: Tenant | undefined },
  ): Promise<ReadonlyMap<string, InstanceInfo | undefined>>;
}

/** Watches the cloud tasks an associate started (DescribeInstances polling). */
export interface TaskWatcher {
  /** Resolves with each instance's state once all tasks of `requestId` finished, or at the time limit. */
  waitForTasks(
    region: string,
    instanceIds: string[],
    requestId: string,
    opts: CallOptions,
  ): Promise<InstanceOutcome[]>;
  /**
   * Resolves when none of the instances is OPERATING (or at the time limit), with the last
   * DescribeInstances view of each instance that could be read.
   */
  waitUntilIdle(region: string, instanceIds: string[], opts: CallOptions): Promise<InstanceInfo[]>;
}

/** One structured line per decision (G7). */
export interface AuditEntry {
  requestId: string;
  tenant: string | undefined;
  region: string;
  instances: string[];
  keys: string[];
  forceStop: boolean;
  decision: "allowed" | "denied" | "failed";
  rule?: string | undefined;
  reason?: string | undefined;
  deduplicated: boolean;
  limiterWaitMs: number;
  leaseWaitMs: number;
  attempts: number;
  upstreamRequestId?: string | undefined;
  upstreamCode?: string | undefined;
  /** The cloud call that carried this caller's instances (docs/decisions/batching.md). */
  batchId?: string | undefined;
  /** Instances that call carried (this caller's and its companions'). */
  batchSize?: number | undefined;
  /** Why a request that could not be read was refused (bounded, printable). */
  error?: string | undefined;
  durationMs: number;
}
