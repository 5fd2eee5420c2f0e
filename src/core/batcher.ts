import type { Clock } from "./clock.js";
import { classify, cloudCodeError } from "./cloud-errors.js";
import { crashPoint } from "./crash-point.js";
import { isKeygateError, keygateError, type KeygateError } from "./errors.js";
import type { AssociateInput } from "./model.js";
import {
  type BucketSpec,
  type CallOptions,
  type Grant,
  pastSendBy,
  type RateLimiter,
  type Tenant,
  type Upstream,
} from "./ports.js";

/**
 * Carries the attempts of many callers in one AssociateInstancesKeyPairs call when they wait for a
 * token anyway (docs/decisions/batching.md). Pure logic over the ports: the limiter gives tokens,
 * the upstream is called; every caller keeps its own record, lease and retry decisions outside.
 */

/** The cloud's limits per call (docs/upstream-facts.md). */
export const MAX_BATCH_INSTANCES = 100;
export const MAX_BATCH_KEYS = 100;

/**
 * While a group's calls leave full (a call reached the instance cap less than `FULL_RECENTLY_MS`
 * ago), an attempt that would start a call waits this long for company first. Callers then
 * outnumber what the tokens carry, so a token used at once for a few instances is a token taken
 * from a full call; with no such queue there is no wait (docs/decisions/batching.md, "Linger").
 */
export const FULL_LINGER_MS = 15;
export const FULL_RECENTLY_MS = 1_000;

export interface BatchMember {
  tenant: Tenant;
  input: AssociateInput;
  call: CallOptions;
  /**
   * What must be done before this member may go out (its record saying "may be sending"). The
   * member queues meanwhile, so the store round trip overlaps the wait for a token, but no call
   * carries it and no token is asked for it until this resolves; a rejection is its answer.
   */
  ready?: Promise<void>;
}

/** What the batcher learnt about one member's attempt, filled in as it goes (also when it fails). */
export interface BatchProgress {
  /** Time this member's own token request waited (0 for a rider). */
  waitedMs: number;
  /** Cloud calls that carried this member's instances in this attempt (splits add some). */
  calls: number;
  /** When the last call carrying it was sent; undefined until one was. */
  sentAt: number | undefined;
  /** Id and size (instances) of the last call that carried it. */
  batchId: string | undefined;
  batchInstances: number;
}

export interface BatchSent {
  requestId: string;
  batchId: string;
  /** Instances of the cloud call that carried this member's instances. */
  batchInstances: number;
}

export interface BatcherHooks {
  /** One cloud call ended: its cloud code ("OK" or the error's code/reason), duration, instances, members. */
  call?(code: string, seconds: number, instances: number, members: number): void;
  /** A call that failed for some of its instances was split in two. */
  split?(): void;
  /** `members` of a call refused as not found were answered from a DescribeInstances instead. */
  sortedOut?(members: number): void;
}

export interface BatcherOptions {
  clock: Clock;
  limiter: RateLimiter;
  upstream: Upstream;
  bucket: BucketSpec;
  /** Off: every attempt takes its own token and call, as without a batcher. Default on. */
  enabled?: boolean;
  /**
   * How long an attempt that would take a token at once waits for company first. Default 0:
   * only `FULL_LINGER_MS`, and only while the group's calls leave full.
   */
  lingerMs?: number;
  /** Names this replica's batch ids. */
  idPrefix?: string;
  /**
   * Which of `ids` the cloud knows now: one fresh DescribeInstances (keygate's own poll budget).
   * When given, a merged call refused as not found is sorted out with it instead of bisected.
   */
  known?: (region: string, ids: string[], call: CallOptions) => Promise<ReadonlySet<string>>;
  hooks?: BatcherHooks;
}

const NOT_FOUND = "InvalidInstanceId.NotFound";

export interface Batcher {
  /**
   * Gets the member's instances into one cloud call, alone or with others: resolves with the
   * RequestId of the call that carried them, rejects with the error that concerns them (or with
   * CANCELLED / DEADLINE_EXCEEDED as soon as the member leaves or its deadline passes).
   */
  send(member: BatchMember, progress: BatchProgress): Promise<BatchSent>;
  /** Attempts waiting for a call on this replica. */
  waiting(): number;
}

export const newProgress = (): BatchProgress => ({
  waitedMs: 0,
  calls: 0,
  sentAt: undefined,
  batchId: undefined,
  batchInstances: 0,
});

/**
 * Whether a cloud error may concern only some instances of a call, so that splitting the call can
 * spare the members it does not concern. Key-pair errors concern every member (they share the key
 * set) and whole-call kinds (rate limit, cloud failure, keygate's credentials) concern everyone.
 */
export function concernsSomeInstances(e: KeygateError): boolean {
  const code = e.upstreamCode;
  if (code === undefined || code.startsWith("InvalidKeyPairId")) return false;
  const { kind } = classify(code);
  if (kind === "caller_mistake")
    return code.startsWith("InvalidInstanceId") || code.endsWith("InstanceIdMalformed");
  return kind === "not_found" || kind === "precondition" || kind === "transitional" || kind === "busy";
}

/** The bound on extra calls splitting costs: k members with a bad instance among n (docs/decisions/batching.md). */
export function splitBound(n: number, k: number): number {
  return n <= 1 || k <= 0 ? 0 : 2 * k * Math.ceil(Math.log2(n));
}

interface Member {
  m: BatchMember;
  group: string;
  progress: BatchProgress;
  /** waiting → taken (in a call) → done (answered). */
  state: "waiting" | "taken" | "done";
  /** False until `m.ready` resolved: only ready members head or ride a call. */
  ready: boolean;
  /** Set while this member asks the limiter for a token on the group's behalf. */
  acquiring: AbortController | undefined;
  resolve: (s: BatchSent) => void;
  reject: (e: unknown) => void;
}

export function createBatcher(opts: BatcherOptions): Batcher {
  const { clock, limiter, upstream, bucket } = opts;
  const enabled = opts.enabled ?? true;
  const lingerMs = Math.max(0, opts.lingerMs ?? 0);
  const hooks = opts.hooks ?? {};
  const prefix = opts.idPrefix ?? "b";
  let seq = 0;
  /** Waiting members per compatibility group, oldest first. */
  const groups = new Map<string, Member[]>();
  /** When each group's last call that reached the instance cap was sent. */
  const fullAt = new Map<string, number>();

  /** The wait before an attempt of `group` may start a call (see FULL_LINGER_MS). */
  function lingerFor(group: string): number {
    if (!enabled) return 0;
    if (lingerMs > 0) return lingerMs;
    const at = fullAt.get(group);
    return at !== undefined && clock.now() - at < FULL_RECENTLY_MS ? FULL_LINGER_MS : 0;
  }

  const groupOf = (i: AssociateInput) =>
    `${i.region}\u0000${[...new Set(i.keyIds)].sort().join(",")}\u0000${String(i.forceStop)}`;

  function waitingIn(group: string): Member[] {
    return groups.get(group) ?? [];
  }

  function unlist(member: Member): void {
    const list = groups.get(member.group);
    if (!list) return;
    const at = list.indexOf(member);
    if (at >= 0) list.splice(at, 1);
    if (list.length === 0) groups.delete(member.group);
  }

  function left(member: Member): KeygateError {
    const { call } = member.m;
    if (isKeygateError(call.signal.reason)) return call.signal.reason;
    return call.deadline !== undefined && clock.now() >= call.deadline
      ? keygateError("DEADLINE_EXCEEDED", "the deadline passed before keygate could answer")
      : keygateError("CANCELLED", "the call was cancelled");
  }

  function settle(member: Member, f: () => void): void {
    if (member.state === "done") return;
    member.state = "done";
    member.acquiring?.abort();
    member.acquiring = undefined;
    unlist(member);
    f();
  }

  /**
   * Enough members of the group ask the limiter for tokens to carry everyone waiting in it (one
   * per 100 instances), so a queue of riders costs the limiter's fair queue one entry per call.
   */
  function ensureAcquirers(group: string): void {
    const list = waitingIn(group).filter((x) => x.ready);
    let active = list.filter((x) => x.acquiring).length;
    const instances = list.reduce((n, x) => n + x.m.input.instanceIds.length, 0);
    const need = enabled ? Math.ceil(instances / MAX_BATCH_INSTANCES) : list.length;
    for (const x of list) {
      if (active >= need) break;
      if (x.acquiring) continue;
      active += 1;
      void acquireFor(x);
    }
  }

  async function acquireFor(member: Member): Promise<void> {
    const stop = new AbortController();
    member.acquiring = stop;
    const { tenant, call } = member.m;
    for (;;) {
      let grant: Grant;
      try {
        grant = await limiter.acquire({
          bucket,
          tenant: tenant.name,
          weight: tenant.weight,
          // Off, a member never rides, so only its own signal can end its wait.
          signal: enabled ? AbortSignal.any([call.signal, stop.signal]) : call.signal,
          deadline: call.deadline,
        });
      } catch (err) {
        if (member.acquiring === stop) member.acquiring = undefined;
        // Taken as a rider (or answered) meanwhile: nothing to report.
        if (stop.signal.aborted || member.state !== "waiting") {
          ensureAcquirers(member.group);
          return;
        }
        settle(member, () => member.reject(err));
        ensureAcquirers(member.group);
        return;
      }
      member.progress.waitedMs += grant.waitedMs;
      // The token came just as this member was taken along by another: the oldest waiter heads.
      const head = member.state === "waiting" ? member : oldestWaiting();
      if (member.acquiring === stop) member.acquiring = undefined;
      if (!head) return; // a wasted token is safe (fewer calls, never more)
      const sent = sendWithGrant(grant, () => gather(head));
      if (sent) {
        void deliver(sent);
        ensureAcquirers(head.group);
        return;
      }
      // Too late to send on this token: ask again (the head keeps its place).
      if (head !== member || member.state !== "waiting") {
        ensureAcquirers(head.group);
        return;
      }
      member.acquiring = stop;
    }
  }

  function oldestWaiting(): Member | undefined {
    for (const list of groups.values()) for (const x of list) if (x.state === "waiting" && x.ready) return x;
    return undefined;
  }

  /** The head and every compatible waiting member that fits, oldest first. */
  function gather(head: Member): Member[] {
    const taken = [head];
    if (enabled) {
      const ids = new Set(head.m.input.instanceIds);
      for (const x of waitingIn(head.group)) {
        if (x === head || !x.ready) continue;
        const more = x.m.input.instanceIds;
        if (ids.size + more.length > MAX_BATCH_INSTANCES) continue;
        if (more.some((id) => ids.has(id))) continue; // leases keep them disjoint; never merge overlaps
        for (const id of more) ids.add(id);
        taken.push(x);
      }
    }
    for (const x of taken) {
      x.state = "taken";
      x.acquiring?.abort();
      x.acquiring = undefined;
      unlist(x);
    }
    return taken;
  }

  interface InFlight {
    members: Member[];
    id: string;
    input: AssociateInput;
    sentAt: number;
    reply: Promise<{ requestId: string }>;
    /** Stops listening to the members' signals once the call ended. */
    release: () => void;
  }

  /**
   * Grant → last lateness check → the cloud call, in this one function: nothing may come between
   * them (the grant travels with the call in its options). Undefined = too late, nothing sent.
   */
  function sendWithGrant(grant: Grant, pick: () => Member[]): InFlight | undefined {
    if (pastSendBy(grant, clock.now())) {
      grant.notSent?.(clock.now());
      return undefined;
    }
    const members = pick();
    if (members.length === 0) return undefined; // everyone left: the token goes unused
    const first = members[0]!.m.input;
    const input: AssociateInput = {
      region: first.region,
      instanceIds: members.flatMap((x) => x.m.input.instanceIds),
      keyIds: first.keyIds,
      forceStop: first.forceStop,
    };
    const id = `${prefix}-${(++seq).toString(36)}`;
    const sentAt = clock.now();
    if (input.instanceIds.length >= MAX_BATCH_INSTANCES) {
      fullAt.set(members[0]!.group, sentAt);
      // Groups that stopped calling keep no entry for long (key sets are many; calls of each, few).
      if (fullAt.size > 1_000) {
        for (const [group, at] of fullAt) if (sentAt - at >= FULL_RECENTLY_MS) fullAt.delete(group);
      }
    }
    for (const x of members) {
      x.progress.calls += 1;
      x.progress.sentAt = sentAt;
      x.progress.batchId = id;
      x.progress.batchInstances = input.instanceIds.length;
    }
    const { call, release } = callOf(members);
    crashPoint("before-send");
    // The adapter checks the grant once more at the socket (SEND_TOO_LATE: nothing was sent).
    const reply = upstream.associateInstancesKeyPairs(input, { ...call, grant });
    return { members, id, input, sentAt, reply, release };
  }

  /**
   * The call's own cancellation and deadline: it aborts only when every member left, and its
   * deadline is the latest member's (none if any member has none).
   */
  function callOf(members: Member[]): { call: CallOptions; release: () => void } {
    const only = members.length === 1 ? members[0] : undefined;
    if (only) return { call: only.m.call, release: () => undefined };
    const all = new AbortController();
    let present = members.length;
    const listening: (() => void)[] = [];
    for (const x of members) {
      const s = x.m.call.signal;
      const gone = () => {
        present -= 1;
        if (present === 0) all.abort(s.reason);
      };
      if (s.aborted) gone();
      else {
        s.addEventListener("abort", gone, { once: true });
        listening.push(() => s.removeEventListener("abort", gone));
      }
    }
    const deadlines = members.map((x) => x.m.call.deadline);
    const deadline = deadlines.some((d) => d === undefined)
      ? undefined
      : Math.max(...deadlines.map((d) => d ?? 0));
    return { call: { signal: all.signal, deadline }, release: () => listening.forEach((f) => f()) };
  }

  async function deliver(f: InFlight): Promise<void> {
    let result: { requestId: string } | undefined;
    let failure: unknown;
    try {
      result = await f.reply;
      crashPoint("after-send");
    } catch (err) {
      failure = err;
    } finally {
      f.release();
    }
    if (!result && isKeygateError(failure) && failure.reason === "SEND_TOO_LATE") {
      // Stopped at the socket: nothing went out, so it was no cloud call; a new token sends it.
      for (const x of f.members) x.progress.calls -= 1;
      await resend(f.members.filter((x) => x.state !== "done"));
      return;
    }
    const code = result
      ? "OK"
      : isKeygateError(failure)
        ? (failure.upstreamCode ?? failure.reason)
        : "INTERNAL";
    hooks.call?.(code, (clock.now() - f.sentAt) / 1000, f.input.instanceIds.length, f.members.length);
    if (result) {
      const sent: BatchSent = {
        requestId: result.requestId,
        batchId: f.id,
        batchInstances: f.input.instanceIds.length,
      };
      for (const x of f.members) settle(x, () => x.resolve(sent));
      return;
    }
    const present = f.members.filter((x) => x.state !== "done");
    if (present.length > 1 && isKeygateError(failure) && concernsSomeInstances(failure)) {
      if (failure.upstreamCode === NOT_FOUND && (await sortOut(present, failure))) return;
      hooks.split?.();
      const [a, b] = splitFor(present, failure);
      await Promise.all([resend(a), resend(b)]);
      return;
    }
    for (const x of present) settle(x, () => x.reject(failure));
  }

  /**
   * A call refused because some instance does not exist: one DescribeInstances of the call's
   * instances names the members whose instances the cloud does not know. They hear NotFound with
   * the refused call's RequestId (the call carried them, and the cloud confirms), and the others
   * go again together: one more call instead of a bisection. False = nothing sorted out (no
   * lookup, it failed, or it knows every instance): split as usual.
   */
  async function sortOut(present: Member[], failure: KeygateError): Promise<boolean> {
    if (!opts.known) return false;
    const { call, release } = callOf(present);
    let known: ReadonlySet<string>;
    try {
      known = await opts.known(
        present[0]!.m.input.region,
        present.flatMap((x) => x.m.input.instanceIds),
        call,
      );
    } catch {
      return false;
    } finally {
      release();
    }
    const gone = present.filter(
      (x) => x.state !== "done" && x.m.input.instanceIds.some((id) => !known.has(id)),
    );
    if (gone.length === 0) return false;
    hooks.sortedOut?.(gone.length);
    for (const x of gone) {
      const missing = x.m.input.instanceIds.filter((id) => !known.has(id));
      const err = cloudCodeError(
        NOT_FOUND,
        `The instance \`${missing.join(",")}\` does not exist (DescribeInstances does not list it; the call ` +
          `that carried it with other callers' instances was refused ${NOT_FOUND}).`,
        { upstreamCode: NOT_FOUND, upstreamRequestId: failure.upstreamRequestId },
      );
      settle(x, () => x.reject(err));
    }
    const rest = present.filter((x) => x.state !== "done");
    if (rest.length > 0) await resend(rest);
    return true;
  }

  /**
   * The two parts a failed call is resent as. The cloud's message usually names the instances it
   * refused: their members go apart from the others (one extra call for the rest); a message that
   * names none (or all) falls back to halves. Either way a member only ever hears a per-instance
   * error from a call that carried it alone, so a misleading message costs calls, never answers.
   */
  function splitFor(present: Member[], failure: KeygateError): [Member[], Member[]] {
    const named = present.filter((x) => x.m.input.instanceIds.some((id) => failure.message.includes(id)));
    if (named.length > 0 && named.length < present.length) {
      return [named, present.filter((x) => !named.includes(x))];
    }
    const half = Math.ceil(present.length / 2);
    return [present.slice(0, half), present.slice(half)];
  }

  /** One part of a split call: a token of its own (its first member's tenant asks), then the call. */
  async function resend(part: Member[]): Promise<void> {
    for (;;) {
      const present = part.filter((x) => x.state !== "done");
      if (present.length === 0) return;
      const head = present[0]!;
      let grant: Grant;
      const { call, release } = callOf(present);
      try {
        grant = await limiter.acquire({
          bucket,
          tenant: head.m.tenant.name,
          weight: head.m.tenant.weight,
          ...call,
        });
      } catch (err) {
        for (const x of present) settle(x, () => x.reject(err));
        return;
      } finally {
        release();
      }
      const sent = sendWithGrant(grant, () => part.filter((x) => x.state !== "done"));
      if (sent) {
        await deliver(sent);
        return;
      }
      if (part.every((x) => x.state === "done")) return;
    }
  }

  return {
    send(m: BatchMember, progress: BatchProgress): Promise<BatchSent> {
      return new Promise<BatchSent>((resolve, reject) => {
        const member: Member = {
          m,
          group: groupOf(m.input),
          progress,
          state: "waiting",
          ready: m.ready === undefined,
          acquiring: undefined,
          resolve,
          reject,
        };
        const { signal, deadline } = m.call;
        if (signal.aborted) {
          reject(left(member));
          return;
        }
        // A member that leaves (or whose deadline passes) hears it at once; a call already sent
        // for it goes on for the others.
        const onLeave = () => settle(member, () => reject(left(member)));
        signal.addEventListener("abort", onLeave, { once: true });
        const cancelTimer = deadline !== undefined ? clock.timer(deadline - clock.now(), onLeave) : undefined;
        const done = member.resolve;
        const fail = member.reject;
        const cleanup = () => {
          signal.removeEventListener("abort", onLeave);
          cancelTimer?.();
        };
        member.resolve = (s) => {
          cleanup();
          done(s);
        };
        member.reject = (e) => {
          cleanup();
          fail(e);
        };
        const list = groups.get(member.group);
        if (list) list.push(member);
        else groups.set(member.group, [member]);
        const start = () => {
          const linger = lingerFor(member.group);
          if (linger > 0) {
            clock.sleep(linger, signal).then(
              () => ensureAcquirers(member.group),
              () => undefined,
            );
          } else {
            ensureAcquirers(member.group);
          }
        };
        if (member.ready) start();
        else {
          m.ready!.then(
            () => {
              if (member.state !== "waiting") return;
              member.ready = true;
              start();
            },
            (err: unknown) => settle(member, () => member.reject(err)),
          );
        }
      });
    },
    waiting: () => [...groups.values()].reduce((n, l) => n + l.length, 0),
  };
}
