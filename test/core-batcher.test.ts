/**
 * The batcher's decisions with a fake clock, a hand-driven token source and a hand-made cloud:
 * who rides along, one token per call, splitting on per-instance errors (and its bound), a member
 * leaving, the grant travelling with the call. End-to-end proofs: test/batching.test.ts.
 */
import { describe, expect, it } from "vitest";
import {
  type BatchMember,
  type BatcherOptions,
  createBatcher,
  FULL_LINGER_MS,
  FULL_RECENTLY_MS,
  concernsSomeInstances,
  newProgress,
  splitBound,
} from "../src/core/batcher.js";
import { cloudCodeError } from "../src/core/cloud-errors.js";
import { isKeygateError, keygateError } from "../src/core/errors.js";
import type { AssociateInput } from "../src/core/model.js";
import type { AcquireRequest, CallOptions, Grant, RateLimiter, Upstream } from "../src/core/ports.js";
import { FakeClock } from "./support/fake-clock.js";

const REGION = "ap-guangzhou";
const K1 = "skey-11111111";
const K2 = "skey-22222222";
const id = (n: number) => `ins-${String(n).padStart(8, "0")}`;
const tick = () => new Promise((r) => setImmediate(r));

/** Tokens handed out only when the test says so, in request order; records who asked. */
function handTokens(clock: FakeClock) {
  const waiting: { req: AcquireRequest; resolve(g: Grant): void; reject(e: unknown): void }[] = [];
  const asked: string[] = [];
  let granted = 0;
  const limiter: RateLimiter = {
    acquire(req) {
      asked.push(req.tenant);
      return new Promise<Grant>((resolve, reject) => {
        const w = { req, resolve, reject };
        waiting.push(w);
        req.signal.addEventListener(
          "abort",
          () => {
            const i = waiting.indexOf(w);
            if (i >= 0) waiting.splice(i, 1);
            reject(keygateError("CANCELLED", "gone"));
          },
          { once: true },
        );
      });
    },
    penalize: () => Promise.resolve(),
    close: () => Promise.resolve(),
  };
  return {
    limiter,
    asked,
    queued: () => waiting.length,
    get granted() {
      return granted;
    },
    /** Grants the oldest request a token that must be sent by `sendBy`. */
    async grant(sendBy = clock.now() + 15): Promise<void> {
      const w = waiting.shift();
      if (!w) throw new Error("nobody is waiting for a token");
      granted += 1;
      w.resolve({ waitedMs: 0, sendBy });
      await tick();
      await tick();
    },
    /** Refuses the oldest request as a full queue would. */
    async refuse(): Promise<void> {
      const w = waiting.shift();
      if (!w) throw new Error("nobody is waiting for a token");
      w.reject(keygateError("RATE_LIMITED", "queue full", { retryAfterMs: 100 }));
      await tick();
    },
    /** Grants until nobody waits (bounded). */
    async drain(max = 100): Promise<void> {
      for (let i = 0; i < max && waiting.length > 0; i++) await this.grant();
    },
  };
}

interface Seen {
  input: AssociateInput;
  grant: Grant | undefined;
  signal: AbortSignal;
  deadline: number | undefined;
}

/** A cloud that refuses calls naming `missing` instances (all-or-nothing, like the real one). */
function handCloud(missing: ReadonlySet<string> = new Set(), vague = false) {
  const calls: Seen[] = [];
  const held: { resolve(): void }[] = [];
  let hold = false;
  const upstream: Upstream = {
    async associateInstancesKeyPairs(input, opts: CallOptions & { grant?: Grant }) {
      calls.push({ input, grant: opts.grant, signal: opts.signal, deadline: opts.deadline });
      if (hold) await new Promise<void>((resolve) => held.push({ resolve }));
      const bad = input.instanceIds.filter((i) => missing.has(i));
      if (bad.length > 0) {
        throw cloudCodeError(
          "InvalidInstanceId.NotFound",
          vague ? "An instance does not exist." : `The instance \`${bad.join(",")}\` does not exist.`,
          {
            upstreamCode: "InvalidInstanceId.NotFound",
            upstreamRequestId: `req-${calls.length}`,
          },
        );
      }
      return { requestId: `req-${calls.length}` };
    },
    describeInstances: () => Promise.reject(new Error("not used")),
  };
  return {
    upstream,
    calls,
    holdReplies() {
      hold = true;
    },
    async release() {
      hold = false;
      for (const h of held.splice(0)) h.resolve();
      await tick();
      await tick();
    },
  };
}

function member(
  n: number | number[],
  over: Partial<AssociateInput> = {},
  tenant = "t1",
  call: Partial<CallOptions> = {},
): BatchMember {
  const ids = Array.isArray(n) ? n.map(id) : [id(n)];
  return {
    tenant: { name: tenant, weight: 1 },
    input: { region: REGION, instanceIds: ids, keyIds: [K1], forceStop: false, ...over },
    call: { signal: new AbortController().signal, ...call },
  };
}

function setup(
  opts: {
    enabled?: boolean;
    missing?: Set<string>;
    vague?: boolean;
    lingerMs?: number;
    known?: BatcherOptions["known"];
  } = {},
) {
  const clock = new FakeClock();
  const tokens = handTokens(clock);
  const cloud = handCloud(opts.missing, opts.vague);
  const splits: number[] = [];
  const sortedOut: number[] = [];
  const sizes: number[] = [];
  const batcher = createBatcher({
    clock,
    limiter: tokens.limiter,
    upstream: cloud.upstream,
    bucket: { key: "assoc", limit: 10, windowMs: 1000 },
    enabled: opts.enabled ?? true,
    lingerMs: opts.lingerMs ?? 0,
    known: opts.known,
    hooks: {
      split: () => splits.push(1),
      sortedOut: (n) => sortedOut.push(n),
      call: (_c, _s, instances) => sizes.push(instances),
    },
  });
  const send = (m: BatchMember) => {
    const progress = newProgress();
    const p = batcher.send(m, progress).then(
      (s) => ({ ok: true as const, s, progress }),
      (e: unknown) => ({ ok: false as const, e, progress }),
    );
    return p;
  };
  return { clock, tokens, cloud, batcher, send, splits, sortedOut, sizes };
}

describe("batcher: who rides along", () => {
  it("one token carries every compatible waiting attempt; the grant travels with the call", async () => {
    const t = setup();
    const answers = Array.from({ length: 30 }, (_, i) => t.send(member(i + 1, {}, i % 2 ? "t1" : "t2")));
    await tick();
    // 30 single-instance attempts need one call: one of them asks the limiter, the rest ride.
    expect(t.tokens.queued()).toBe(1);
    await t.tokens.grant();
    const done = await Promise.all(answers);
    expect(t.cloud.calls).toHaveLength(1);
    expect(t.cloud.calls[0]!.input.instanceIds).toEqual(Array.from({ length: 30 }, (_, i) => id(i + 1)));
    expect(t.cloud.calls[0]!.input.keyIds).toEqual([K1]);
    expect(t.cloud.calls[0]!.grant?.sendBy).toBeDefined();
    for (const d of done) {
      expect(d.ok).toBe(true);
      if (!d.ok) continue;
      expect(d.s).toMatchObject({ requestId: "req-1", batchInstances: 30 });
      expect(d.progress.calls).toBe(1);
    }
    expect(new Set(done.map((d) => (d.ok ? d.s.batchId : "")))).toHaveProperty("size", 1);
    expect(t.tokens.granted).toBe(1);
  });

  it("never more than 100 instances per call: 250 waiting instances take three tokens", async () => {
    const t = setup();
    const answers = [
      ...Array.from({ length: 50 }, (_, i) => t.send(member([2 * i + 1, 2 * i + 2]))),
      ...Array.from({ length: 150 }, (_, i) => t.send(member(1000 + i))),
    ];
    await tick();
    expect(t.tokens.queued()).toBe(3);
    await t.tokens.drain();
    const done = await Promise.all(answers);
    expect(done.every((d) => d.ok)).toBe(true);
    expect(t.cloud.calls.map((c) => c.input.instanceIds.length)).toEqual([100, 100, 50]);
    const all = t.cloud.calls.flatMap((c) => c.input.instanceIds);
    expect(new Set(all).size).toBe(250);
    expect(t.tokens.granted).toBe(3);
  });

  it("only the same region, key set (as a set) and force_stop merge", async () => {
    const t = setup();
    const a = t.send(member(1, { keyIds: [K1, K2] }));
    const b = t.send(member(2, { keyIds: [K2, K1] }));
    const c = t.send(member(3, { keyIds: [K1] }));
    const d = t.send(member(4, { keyIds: [K1, K2], forceStop: true }));
    const e = t.send(member(5, { keyIds: [K1, K2], region: "ap-shanghai" }));
    await tick();
    await t.tokens.drain();
    await Promise.all([a, b, c, d, e]);
    const shapes = t.cloud.calls.map((x) => x.input.instanceIds.join(",")).sort();
    expect(shapes).toEqual([`${id(1)},${id(2)}`, id(3), id(4), id(5)]);
    expect(t.tokens.granted).toBe(4);
  });

  it("overlapping instances never share a call", async () => {
    const t = setup();
    const a = t.send(member([1, 2]));
    const b = t.send(member([2, 3]));
    await tick();
    await t.tokens.drain();
    await Promise.all([a, b]);
    expect(t.cloud.calls).toHaveLength(2);
  });

  it("off: one token and one call per attempt, as without a batcher", async () => {
    const t = setup({ enabled: false });
    const answers = Array.from({ length: 5 }, (_, i) => t.send(member(i + 1)));
    await tick();
    expect(t.tokens.queued()).toBe(5);
    await t.tokens.drain();
    await Promise.all(answers);
    expect(t.cloud.calls.map((c) => c.input.instanceIds.length)).toEqual([1, 1, 1, 1, 1]);
  });

  it("a grant too late to use is not sent on: the head asks again and nothing went out", async () => {
    const t = setup();
    const a = t.send(member(1));
    await tick();
    await t.tokens.grant(t.clock.now() - 1);
    expect(t.cloud.calls).toHaveLength(0);
    expect(t.tokens.queued()).toBe(1);
    await t.tokens.grant();
    expect((await a).ok).toBe(true);
    expect(t.cloud.calls).toHaveLength(1);
  });

  it("a call the adapter stopped at the socket (SEND_TOO_LATE) is no cloud call: a new token sends it", async () => {
    const t = setup();
    const real = t.cloud.upstream.associateInstancesKeyPairs.bind(t.cloud.upstream);
    let refusals = 0;
    t.cloud.upstream.associateInstancesKeyPairs = (input, opts) => {
      if (refusals++ === 0) return Promise.reject(keygateError("SEND_TOO_LATE", "not sent"));
      return real(input, opts);
    };
    const a = t.send(member(1));
    const b = t.send(member(2));
    await tick();
    await t.tokens.grant();
    // Nothing was answered yet: both members wait for the next token together.
    expect(t.tokens.queued()).toBe(1);
    await t.tokens.grant();
    const done = await Promise.all([a, b]);
    expect(t.cloud.calls.map((c) => c.input.instanceIds.length)).toEqual([2]);
    for (const d of done) {
      expect(d.ok).toBe(true);
      // Only the call that went out counts as an attempt.
      expect(d.progress.calls).toBe(1);
    }
    expect(t.sizes).toEqual([2]);
  });

  it("with no linger set, an attempt waits FULL_LINGER_MS only while the group's calls leave full", async () => {
    const t = setup();
    // Nothing full yet: a lone attempt asks for its token at once (no added latency).
    const lone = t.send(member(1));
    await tick();
    expect(t.tokens.queued()).toBe(1);
    await t.tokens.grant();
    await lone;
    // 150 attempts: the first call leaves full (100 instances), the rest ride the next one.
    const crowd = Array.from({ length: 150 }, (_, i) => t.send(member(100 + i)));
    await tick();
    await t.tokens.grant();
    await t.tokens.grant();
    await Promise.all(crowd);
    expect(t.sizes).toEqual([1, 100, 50]);
    // Now a lone attempt waits for company before it asks; one arriving meanwhile shares its call.
    const a = t.send(member(300));
    await tick();
    expect(t.tokens.queued()).toBe(0);
    await t.clock.advance(FULL_LINGER_MS - 5);
    const b = t.send(member(301));
    await t.clock.advance(5);
    expect(t.tokens.queued()).toBe(1);
    await t.tokens.grant();
    await Promise.all([a, b]);
    expect(t.sizes).toEqual([1, 100, 50, 2]);
    // Once no call has left full for FULL_RECENTLY_MS, attempts go at once again.
    await t.clock.advance(FULL_RECENTLY_MS);
    const c = t.send(member(302));
    await tick();
    expect(t.tokens.queued()).toBe(1);
    await t.tokens.grant();
    await c;
    expect(t.sizes).toEqual([1, 100, 50, 2, 1]);
  });

  it("a linger lets attempts that arrive within it share the first call", async () => {
    const t = setup({ lingerMs: 20 });
    const a = t.send(member(1));
    await t.clock.advance(10);
    const b = t.send(member(2));
    expect(t.tokens.queued()).toBe(0);
    await t.clock.advance(10);
    expect(t.tokens.queued()).toBe(1);
    await t.tokens.grant();
    await Promise.all([a, b]);
    expect(t.cloud.calls.map((c) => c.input.instanceIds.length)).toEqual([2]);
  });
});

describe("batcher: one caller's problem is not the others'", () => {
  it("a missing instance the message names: its caller apart, the 15 others in one more call", async () => {
    const t = setup({ missing: new Set([id(11)]) });
    const answers = Array.from({ length: 16 }, (_, i) => t.send(member(i + 1)));
    await tick();
    await t.tokens.drain();
    const done = await Promise.all(answers);
    for (const [i, d] of done.entries()) {
      if (i === 10) {
        expect(d.ok).toBe(false);
        if (!d.ok) expect(isKeygateError(d.e) && d.e.upstreamCode).toBe("InvalidInstanceId.NotFound");
        // Alone in its last call: the error is its own.
        expect(d.progress.batchInstances).toBe(1);
      } else {
        expect(d.ok).toBe(true);
      }
    }
    const extra = t.cloud.calls.length - 1;
    expect(extra).toBeGreaterThan(0);
    expect(extra).toBeLessThanOrEqual(splitBound(16, 1));
    // Every call spent a token of its own.
    expect(t.tokens.granted).toBe(t.cloud.calls.length);
    expect(t.splits.length).toBe(1);
    expect(t.cloud.calls.map((c) => c.input.instanceIds.length)).toEqual([16, 1, 15]);
    // Every good instance went out exactly once in a call that was accepted.
    const accepted = t.cloud.calls.filter((c) => !c.input.instanceIds.includes(id(11)));
    const applied = accepted.flatMap((c) => c.input.instanceIds).sort();
    expect(applied).toEqual(Array.from({ length: 16 }, (_, i) => id(i + 1)).filter((x) => x !== id(11)));
  });

  it("a missing instance the message does not name: halving, within the split bound", async () => {
    const t = setup({ missing: new Set([id(11)]), vague: true });
    const answers = Array.from({ length: 16 }, (_, i) => t.send(member(i + 1)));
    await tick();
    await t.tokens.drain();
    const done = await Promise.all(answers);
    for (const [i, d] of done.entries()) {
      if (i === 10) {
        expect(d.ok).toBe(false);
        if (!d.ok) expect(isKeygateError(d.e) && d.e.upstreamCode).toBe("InvalidInstanceId.NotFound");
        // Alone in its last call: the error is its own.
        expect(d.progress.batchInstances).toBe(1);
      } else {
        expect(d.ok).toBe(true);
      }
    }
    const extra = t.cloud.calls.length - 1;
    expect(extra).toBeGreaterThan(0);
    expect(extra).toBeLessThanOrEqual(splitBound(16, 1));
    // Every call spent a token of its own.
    expect(t.tokens.granted).toBe(t.cloud.calls.length);
    expect(t.splits.length).toBe(4); // halving 16 → 8 → 4 → 2 → 1
    // Every good instance went out exactly once in a call that was accepted.
    const accepted = t.cloud.calls.filter((c) => !c.input.instanceIds.includes(id(11)));
    const applied = accepted.flatMap((c) => c.input.instanceIds).sort();
    expect(applied).toEqual(Array.from({ length: 16 }, (_, i) => id(i + 1)).filter((x) => x !== id(11)));
  });

  it("k bad callers among n stay within 2·k·ceil(log2 n) extra calls", async () => {
    const bad = new Set([id(3), id(17), id(40)]);
    const t = setup({ missing: bad, vague: true });
    const answers = Array.from({ length: 64 }, (_, i) => t.send(member(i + 1)));
    await tick();
    await t.tokens.drain(200);
    const done = await Promise.all(answers);
    const failed = done.flatMap((d, i) => (d.ok ? [] : [id(i + 1)]));
    expect(new Set(failed)).toEqual(bad);
    expect(t.cloud.calls.length - 1).toBeLessThanOrEqual(splitBound(64, 3));
  });

  it("three missing instances the message names: the rest go in one call, the named ones alone", async () => {
    const bad = new Set([id(3), id(17), id(40)]);
    const t = setup({ missing: bad });
    const answers = Array.from({ length: 64 }, (_, i) => t.send(member(i + 1)));
    await tick();
    await t.tokens.drain(200);
    const done = await Promise.all(answers);
    expect(new Set(done.flatMap((d, i) => (d.ok ? [] : [id(i + 1)])))).toEqual(bad);
    // 64 → (3 named | 61 rest): the rest succeed at once; the 3 named ones are halved until alone.
    const extra = t.cloud.calls.length - 1;
    expect(extra).toBeLessThanOrEqual(1 + (2 * 3 - 1));
    expect(extra).toBeLessThanOrEqual(splitBound(64, 3));
    expect(t.cloud.calls.some((c) => c.input.instanceIds.length === 61)).toBe(true);
  });

  it("whole-call errors are not split: every member hears them", () => {
    const e = (code: string) => cloudCodeError(code, "x", { upstreamCode: code });
    expect(concernsSomeInstances(e("InvalidInstanceId.NotFound"))).toBe(true);
    expect(concernsSomeInstances(e("UnsupportedOperation.InstanceOsWindows"))).toBe(true);
    expect(concernsSomeInstances(e("UnsupportedOperation.InstanceStateStarting"))).toBe(true);
    expect(concernsSomeInstances(e("MutexOperation.TaskRunning"))).toBe(true);
    expect(concernsSomeInstances(e("InvalidKeyPairId.NotFound"))).toBe(false);
    expect(concernsSomeInstances(e("RequestLimitExceeded"))).toBe(false);
    expect(concernsSomeInstances(e("InternalError"))).toBe(false);
    expect(concernsSomeInstances(e("AuthFailure.SignatureFailure"))).toBe(false);
    expect(concernsSomeInstances(e("InvalidAction"))).toBe(false);
    expect(concernsSomeInstances(e("MissingParameter"))).toBe(false);
    expect(concernsSomeInstances(keygateError("UPSTREAM_TIMEOUT", "x"))).toBe(false);
    expect(splitBound(1, 1)).toBe(0);
    expect(splitBound(100, 1)).toBe(14);
  });

  it("a key the cloud does not know fails every member with one call", async () => {
    const t = setup();
    const cloud = t.cloud.upstream;
    const orig = cloud.associateInstancesKeyPairs.bind(cloud);
    cloud.associateInstancesKeyPairs = async (input, opts) => {
      await orig(input, opts);
      throw cloudCodeError("InvalidKeyPairId.NotFound", "no key", {
        upstreamCode: "InvalidKeyPairId.NotFound",
      });
    };
    const answers = Array.from({ length: 8 }, (_, i) => t.send(member(i + 1)));
    await tick();
    await t.tokens.drain();
    const done = await Promise.all(answers);
    expect(done.every((d) => !d.ok)).toBe(true);
    expect(t.cloud.calls).toHaveLength(1);
  });
});

describe("batcher: leaving", () => {
  it("a member that leaves after the send hears CANCELLED at once; the call goes on for the others", async () => {
    const t = setup();
    t.cloud.holdReplies();
    const leaving = new AbortController();
    const a = t.send(member(1, {}, "t1", { signal: leaving.signal }));
    const b = t.send(member(2));
    await tick();
    await t.tokens.grant();
    expect(t.cloud.calls).toHaveLength(1);
    leaving.abort();
    const gone = await a;
    expect(gone.ok).toBe(false);
    if (!gone.ok) expect(isKeygateError(gone.e) && gone.e.reason).toBe("CANCELLED");
    // It was sent: the caller's record keeps "sending" and an heir reconciles (operation-lifecycle.md).
    expect(gone.progress.sentAt).toBeDefined();
    expect(t.cloud.calls[0]!.signal.aborted).toBe(false);
    await t.cloud.release();
    const stayed = await b;
    expect(stayed.ok && stayed.s.requestId).toBe("req-1");
  });

  it("the call is cancelled only when every member left; its deadline is the latest member's", async () => {
    const t = setup();
    t.cloud.holdReplies();
    const c1 = new AbortController();
    const c2 = new AbortController();
    const now = t.clock.now();
    const a = t.send(member(1, {}, "t1", { signal: c1.signal, deadline: now + 1_000 }));
    const b = t.send(member(2, {}, "t1", { signal: c2.signal, deadline: now + 5_000 }));
    await tick();
    await t.tokens.grant();
    const seen = t.cloud.calls[0]!;
    expect(seen.deadline).toBe(now + 5_000);
    c1.abort();
    await tick();
    expect(seen.signal.aborted).toBe(false);
    c2.abort();
    await tick();
    expect(seen.signal.aborted).toBe(true);
    await t.cloud.release();
    await Promise.all([a, b]);
  });

  it("a member whose deadline passes while the call is out hears DEADLINE_EXCEEDED then", async () => {
    const t = setup();
    t.cloud.holdReplies();
    const now = t.clock.now();
    const a = t.send(member(1, {}, "t1", { deadline: now + 1_000 }));
    const b = t.send(member(2, {}, "t1", { deadline: now + 5_000 }));
    await tick();
    await t.tokens.grant();
    await t.clock.advance(1_000);
    const late = await a;
    expect(late.ok).toBe(false);
    if (!late.ok) expect(isKeygateError(late.e) && late.e.reason).toBe("DEADLINE_EXCEEDED");
    await t.cloud.release();
    expect((await b).ok).toBe(true);
  });

  it("a waiting rider that leaves is not carried; the acquirer that leaves hands its turn on", async () => {
    const t = setup();
    const c1 = new AbortController();
    const c2 = new AbortController();
    const a = t.send(member(1, {}, "t1", { signal: c1.signal }));
    const b = t.send(member(2, {}, "t1", { signal: c2.signal }));
    const c = t.send(member(3));
    await tick();
    expect(t.tokens.queued()).toBe(1);
    c1.abort(); // the acquirer
    c2.abort(); // a rider
    await tick();
    expect(t.tokens.queued()).toBe(1); // the remaining member asks now
    await t.tokens.grant();
    const [ra, rb, rc] = await Promise.all([a, b, c]);
    expect(ra.ok || rb.ok).toBe(false);
    expect(rc.ok).toBe(true);
    expect(t.cloud.calls.map((x) => x.input.instanceIds)).toEqual([[id(3)]]);
  });

  it("the limiter's refusal reaches the acquirer only; a rider asks in its place", async () => {
    const t = setup();
    const a = t.send(member(1));
    const b = t.send(member(2));
    await tick();
    expect(t.tokens.queued()).toBe(1);
    await t.tokens.refuse();
    const ra = await a;
    expect(ra.ok).toBe(false);
    if (!ra.ok) expect(isKeygateError(ra.e) && ra.e.reason).toBe("RATE_LIMITED");
    expect(t.tokens.queued()).toBe(1);
    await t.tokens.grant();
    const rb = await b;
    expect(rb.ok && rb.s.batchInstances).toBe(1);
  });
});

describe("batcher: members that are not ready yet (their record is still being written)", () => {
  function deferred() {
    let resolve!: () => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  }

  it("queue without asking for a token, ride only once ready, and never go out before", async () => {
    const t = setup();
    const headReady = deferred();
    const late = deferred();
    const head = t.send({ ...member(1), ready: headReady.promise });
    await tick();
    expect(t.tokens.asked).toEqual([]); // nobody ready: no token is asked for
    headReady.resolve();
    await tick();
    expect(t.tokens.queued()).toBe(1);
    const rider = t.send({ ...member(2), ready: late.promise });
    const other = t.send(member(3));
    await tick();
    await t.tokens.grant();
    // The not-ready member stays behind; the ready ones go in one call.
    expect(t.cloud.calls.map((c) => c.input.instanceIds)).toEqual([[id(1), id(3)]]);
    expect((await head).ok && (await other).ok).toBe(true);
    late.resolve();
    await tick();
    await t.tokens.grant();
    expect(t.cloud.calls.map((c) => c.input.instanceIds)).toEqual([[id(1), id(3)], [id(2)]]);
    expect((await rider).ok).toBe(true);
    expect(t.tokens.granted).toBe(2);
  });

  it("a member whose record could not be written hears why, and nothing is sent for it", async () => {
    const t = setup();
    const ready = deferred();
    const failed = t.send({ ...member(1), ready: ready.promise });
    ready.reject(keygateError("OPERATION_TAKEN_OVER", "another replica took it over"));
    const got = await failed;
    expect(got.ok).toBe(false);
    expect(!got.ok && isKeygateError(got.e) && got.e.reason).toBe("OPERATION_TAKEN_OVER");
    expect(got.progress.sentAt).toBeUndefined();
    expect(t.tokens.asked).toEqual([]);
    expect(t.cloud.calls).toEqual([]);
  });

  it("a member that leaves before it is ready is answered at once", async () => {
    const t = setup();
    const ready = deferred();
    const leave = new AbortController();
    const gone = t.send({ ...member(1, {}, "t1", { signal: leave.signal }), ready: ready.promise });
    leave.abort(keygateError("CANCELLED", "the caller left"));
    const got = await gone;
    expect(!got.ok && isKeygateError(got.e) && got.e.reason).toBe("CANCELLED");
    ready.resolve();
    await tick();
    expect(t.tokens.asked).toEqual([]);
    expect(t.cloud.calls).toEqual([]);
  });
});

describe("batcher: a call refused as not found is sorted out with one DescribeInstances", () => {
  const everything = (_region: string, ids: string[]) => Promise.resolve(new Set(ids));

  it("the missing instance's caller hears NotFound with the refused call's RequestId; the rest go again together", async () => {
    const missing = new Set([id(3)]);
    const looked: string[][] = [];
    const t = setup({
      missing,
      known: (_region, ids) => {
        looked.push(ids);
        return Promise.resolve(new Set(ids.filter((i) => !missing.has(i))));
      },
    });
    const answers = [1, 2, 3, 4, 5].map((n) => t.send(member(n)));
    await tick();
    await t.tokens.grant();
    await t.tokens.grant();
    const got = await Promise.all(answers);
    expect(looked).toEqual([[1, 2, 3, 4, 5].map(id)]);
    expect(t.cloud.calls.map((c) => c.input.instanceIds)).toEqual([
      [1, 2, 3, 4, 5].map(id),
      [1, 2, 4, 5].map(id),
    ]);
    const bad = got[2]!;
    expect(!bad.ok && isKeygateError(bad.e) && [bad.e.upstreamCode, bad.e.upstreamRequestId]).toEqual([
      "InvalidInstanceId.NotFound",
      "req-1",
    ]);
    expect(!bad.ok && isKeygateError(bad.e) && bad.e.message).toContain(id(3));
    for (const n of [0, 1, 3, 4]) expect(got[n]!.ok).toBe(true);
    expect([t.splits.length, t.sortedOut]).toEqual([0, [1]]);
    expect(t.tokens.granted).toBe(2);
  });

  it("falls back to splitting when the lookup knows every instance, or fails", async () => {
    for (const known of [everything, () => Promise.reject(new Error("describe down"))]) {
      const t = setup({ missing: new Set([id(2)]), known });
      const answers = [1, 2, 3, 4].map((n) => t.send(member(n)));
      await tick();
      await t.tokens.drain();
      const got = await Promise.all(answers);
      expect(got.map((g) => g.ok)).toEqual([true, false, true, true]);
      expect(t.splits.length).toBeGreaterThan(0);
      expect(t.sortedOut).toEqual([]);
    }
  });
});
