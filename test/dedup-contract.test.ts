import { createHash, randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { systemClock } from "../src/core/clock.js";
import { isKeygateError, KeygateError, keygateError, type ErrorKind } from "../src/core/errors.js";
import type { AssociateResult } from "../src/core/model.js";
import type { Execution, Operations } from "../src/core/ports.js";
import { createLocalShareOperations } from "../src/dedup/local-share-operations.js";
import { createMemoryOperationStore } from "../src/dedup/memory-operation-store.js";
import { idempotencyKey, type OperationStore } from "../src/dedup/operation-store.js";
import { createOperations, type OperationsOptions } from "../src/dedup/operations.js";
import { createRedisOperationStore } from "../src/dedup/redis-operation-store.js";
import { redisClients } from "./support/redis-client.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";
import { deferred, eventCounter, sleep } from "./support/wait.js";

/** Several "replicas" over one backend (separate Redis clients, or one in-memory store). */
interface Backend {
  name: string;
  /** `joins` (see `joinWatch`) counts the replicas' claims found held by another call. */
  replicas(n: number, opts?: Partial<OperationsOptions>, joins?: Wrapper): Promise<Operations[]>;
  /** Direct access to the primitives, to play a replica that crashed mid-call. */
  rawStore(): Promise<OperationStore>;
}

let redis: RedisProcess;
const clients = redisClients();
const memoryStore = createMemoryOperationStore({ clock: systemClock });
const connectedClient = () => clients.connect(redis.url);

const backends: Backend[] = [
  {
    name: "memory",
    replicas: (n, opts, joins) =>
      Promise.resolve(
        Array.from({ length: n }, () =>
          createOperations({ store: joins?.wrap(memoryStore) ?? memoryStore, clock: systemClock, ...opts }),
        ),
      ),
    rawStore: () => Promise.resolve(memoryStore),
  },
  {
    name: "redis",
    async replicas(n, opts, joins) {
      const made: Operations[] = [];
      for (let i = 0; i < n; i++) {
        const raw = createRedisOperationStore({ client: await connectedClient() });
        const store = joins?.wrap(raw) ?? raw;
        made.push(createOperations({ store, clock: systemClock, ...opts }));
      }
      return made;
    },
    rawStore: async () => createRedisOperationStore({ client: await connectedClient() }),
  },
];

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  clients.closeAll();
  await redis?.stop();
});

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");
const ttls = (claimTtlMs: number) => ({ claimTtlMs, recordTtlMs: 60_000 });
const call = (ms = 10_000) => ({ signal: new AbortController().signal, deadline: Date.now() + ms });
/**
 * An execute that counts its calls and answers with a fresh request id each time. With `held`,
 * every execution waits until the test calls `release()`, so "still running" is a fact, not a race.
 */
function counted(
  opts: { held?: boolean; fail?: () => unknown; body?: (e: Execution, n: number) => Promise<void> } = {},
) {
  const started = eventCounter();
  const gate = deferred();
  const inherited: Execution["inherited"][] = [];
  if (!opts.held) gate.resolve();
  const execute = async (execution: Execution): Promise<AssociateResult> => {
    inherited.push(execution.inherited);
    started.bump();
    const n = started.count();
    await gate.promise;
    await opts.body?.(execution, n);
    if (opts.fail) throw opts.fail();
    return { requestId: `req-${n}-${randomUUID()}`, deduplicated: false, instances: [] };
  };
  return {
    execute,
    calls: started.count,
    running: started.reached,
    release: () => gate.resolve(),
    inherited: () => inherited,
  };
}

interface Wrapper {
  wrap(store: OperationStore): OperationStore;
}

/** `store` with some steps replaced (no release feed: the wrapped replicas poll). */
function wrapStore(s: OperationStore, over: Partial<OperationStore>): OperationStore {
  return {
    beginIdempotent: (k, f, ttl) => s.beginIdempotent(k, f, ttl),
    completeIdempotent: (k, f, o, ttl) => s.completeIdempotent(k, f, o, ttl),
    abandonIdempotent: (k, f) => s.abandonIdempotent(k, f),
    claim: (f, token, ttl) => s.claim(f, token, ttl),
    renewClaim: (f, token, ttl) => s.renewClaim(f, token, ttl),
    mark: (f, token, phase, detail, ttl) => s.mark(f, token, phase, detail, ttl),
    finish: (f, token, o, opts) => s.finish(f, token, o, opts),
    peek: (f, holder) => s.peek(f, holder),
    ...over,
  };
}

interface JoinWatch extends Wrapper {
  /** Resolves once `n` runs have found the claim held by another call (so they join it). */
  joined(n: number): Promise<void>;
  count(): number;
}

/** Watches the claim step: a refused claim means that run now waits for the call holding it. */
function joinWatch(): JoinWatch {
  const refused = eventCounter();
  return {
    wrap: (s) =>
      wrapStore(s, {
        claim: async (f, token, ttl) => {
          const c = await s.claim(f, token, ttl);
          if (c.state === "held") refused.bump();
          return c;
        },
      }),
    joined: refused.reached,
    count: refused.count,
  };
}

const errorOf = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: unknown) => e,
  );

describe.each(backends)("Operations contract ($name)", (backend) => {
  it("20 identical concurrent runs on two replicas execute once; the others join", async () => {
    const joins = joinWatch();
    const [a, b] = await backend.replicas(2, {}, joins);
    const fingerprint = randomUUID();
    const ex = counted({ held: true });
    const runs = Array.from({ length: 20 }, (_, i) =>
      (i % 2 ? a! : b!).run({ fingerprint, execute: ex.execute }, call()),
    );
    await joins.joined(19);
    ex.release();
    const results = await Promise.all(runs);
    expect(ex.calls()).toBe(1);
    expect(results.filter((r) => !r.deduplicated)).toHaveLength(1);
    expect(new Set(results.map((r) => r.requestId)).size).toBe(1);
  });

  it("different fingerprints do not coalesce; outside the join window a finished call is not joined", async () => {
    const [a] = await backend.replicas(1, { joinWindowMs: 0 });
    const ex = counted({ held: true });
    const fp = randomUUID();
    const both = Promise.all([
      a!.run({ fingerprint: fp, execute: ex.execute }, call()),
      a!.run({ fingerprint: randomUUID(), execute: ex.execute }, call()),
    ]);
    await ex.running(2); // both execute at once: neither joined the other
    ex.release();
    await both;
    expect(ex.calls()).toBe(2);
    const later = await a!.run({ fingerprint: fp, execute: ex.execute }, call());
    expect(later.deduplicated).toBe(false);
    expect(ex.calls()).toBe(3);
  });

  it("an idempotency key returns the first answer after completion, on another replica, without executing", async () => {
    const [a, b] = await backend.replicas(2);
    const fingerprint = randomUUID();
    const idempotency = { tenant: "team-a", key: randomUUID() };
    const ex = counted();
    const first = await a!.run({ fingerprint, idempotency, execute: ex.execute }, call());
    const again = await b!.run({ fingerprint, idempotency, execute: ex.execute }, call());
    expect(first.deduplicated).toBe(false);
    expect(again).toEqual({ ...first, deduplicated: true });
    expect(ex.calls()).toBe(1);
  });

  it("keys are per tenant", async () => {
    const [a] = await backend.replicas(1);
    const key = randomUUID();
    const ex = counted();
    await a!.run(
      { fingerprint: randomUUID(), idempotency: { tenant: "team-a", key }, execute: ex.execute },
      call(),
    );
    await a!.run(
      { fingerprint: randomUUID(), idempotency: { tenant: "team-b", key }, execute: ex.execute },
      call(),
    );
    expect(ex.calls()).toBe(2);
  });

  it("the same key with a different request is IDEMPOTENCY_MISMATCH and executes nothing", async () => {
    const [a, b] = await backend.replicas(2);
    const idempotency = { tenant: "team-a", key: randomUUID() };
    const ex = counted();
    await a!.run({ fingerprint: randomUUID(), idempotency, execute: ex.execute }, call());
    const err = await errorOf(
      b!.run({ fingerprint: randomUUID(), idempotency, execute: ex.execute }, call()),
    );
    expect(isKeygateError(err) && err.reason).toBe("IDEMPOTENCY_MISMATCH");
    expect(ex.calls()).toBe(1);
  });

  it("a transient failure before the upstream releases the key: a retry runs again", async () => {
    const [a, b] = await backend.replicas(2);
    const fingerprint = randomUUID();
    const idempotency = { tenant: "team-a", key: randomUUID() };
    const failing = counted({ fail: () => keygateError("RATE_LIMITED", "no token", { retryAfterMs: 100 }) });
    const err = await errorOf(a!.run({ fingerprint, idempotency, execute: failing.execute }, call()));
    expect(isKeygateError(err) && err.reason).toBe("RATE_LIMITED");
    const ok = counted();
    const r = await b!.run({ fingerprint, idempotency, execute: ok.execute }, call());
    expect(r.deduplicated).toBe(false);
    expect(ok.calls()).toBe(1);
  });

  it("an error the upstream returned is the definitive answer for the key", async () => {
    const [a, b] = await backend.replicas(2);
    const fingerprint = randomUUID();
    const idempotency = { tenant: "team-a", key: randomUUID() };
    const upstreamError = () =>
      new KeygateError({
        kind: "not_found",
        reason: "InvalidInstanceId.NotFound",
        message: "no such instance",
        upstreamCode: "InvalidInstanceId.NotFound",
        upstreamRequestId: "up-1",
      });
    const ex = counted({ fail: upstreamError });
    const first = await errorOf(a!.run({ fingerprint, idempotency, execute: ex.execute }, call()));
    const again = await errorOf(b!.run({ fingerprint, idempotency, execute: ex.execute }, call()));
    expect(ex.calls()).toBe(1);
    expect(again).toBeInstanceOf(KeygateError);
    const e = again as KeygateError;
    expect([e.kind, e.reason, e.message, e.upstreamCode, e.upstreamRequestId]).toEqual([
      "not_found",
      "InvalidInstanceId.NotFound",
      "no such instance",
      "InvalidInstanceId.NotFound",
      "up-1",
    ]);
    expect(first).toBeInstanceOf(KeygateError);
  });

  it("a call still in flight under the same key is joined", async () => {
    const joins = joinWatch();
    const [a] = await backend.replicas(1);
    const [b] = await backend.replicas(1, {}, joins);
    const fingerprint = randomUUID();
    const idempotency = { tenant: "team-a", key: randomUUID() };
    const ex = counted({ held: true });
    const first = a!.run({ fingerprint, idempotency, execute: ex.execute }, call());
    await ex.running(1);
    const second = b!.run({ fingerprint, idempotency, execute: ex.execute }, call());
    await joins.joined(1);
    ex.release();
    const [r1, r2] = await Promise.all([first, second]);
    expect(ex.calls()).toBe(1);
    expect([r1.deduplicated, r2.deduplicated]).toEqual([false, true]);
    expect(r2.requestId).toBe(r1.requestId);
  });

  it("joiners get the executor's transient error too", async () => {
    const joins = joinWatch();
    const [a] = await backend.replicas(1);
    const [b] = await backend.replicas(1, {}, joins);
    const fingerprint = randomUUID();
    const ex = counted({ held: true, fail: () => keygateError("UPSTREAM_TIMEOUT", "no answer") });
    const own = errorOf(a!.run({ fingerprint, execute: ex.execute }, call()));
    await ex.running(1);
    const joined = errorOf(b!.run({ fingerprint, execute: ex.execute }, call()));
    await joins.joined(1);
    ex.release();
    const errs = await Promise.all([own, joined]);
    expect(ex.calls()).toBe(1);
    expect(errs.map((e) => isKeygateError(e) && e.reason)).toEqual(["UPSTREAM_TIMEOUT", "UPSTREAM_TIMEOUT"]);
  });

  it("a bug in execute reaches joiners as INTERNAL without its message", async () => {
    const joins = joinWatch();
    const [a] = await backend.replicas(1);
    const [b] = await backend.replicas(1, {}, joins);
    const fingerprint = randomUUID();
    const ex = counted({ held: true, fail: () => new TypeError("secret detail") });
    const owning = errorOf(a!.run({ fingerprint, execute: ex.execute }, call()));
    await ex.running(1);
    const joining = errorOf(b!.run({ fingerprint, execute: ex.execute }, call()));
    await joins.joined(1);
    ex.release();
    const [own, joined] = await Promise.all([owning, joining]);
    expect(own).toBeInstanceOf(TypeError);
    expect(isKeygateError(joined) && joined.reason).toBe("INTERNAL");
    expect((joined as Error).message).not.toContain("secret");
  });

  it("when the executor crashed (claim left behind, never renewed), a joiner takes over after the claim expires", async () => {
    const store = await backend.rawStore();
    const [b] = await backend.replicas(1);
    const fingerprint = randomUUID();
    expect(await store.claim(fingerprint, "dead-replica", ttls(300))).toEqual({
      state: "claimed",
      inherited: undefined,
    });
    const ex = counted();
    const r = await b!.run({ fingerprint, execute: ex.execute }, call());
    expect(r.deduplicated).toBe(false);
    expect(ex.calls()).toBe(1);
    expect(ex.inherited()).toEqual([undefined]); // nothing had been sent: a plain execution
  });

  it("a long execution keeps its claim by renewing it; nobody takes over", async () => {
    const joins = joinWatch();
    const opts = { claimTtlMs: 300, claimRenewEveryMs: 50 };
    const [a] = await backend.replicas(1, opts);
    const [b] = await backend.replicas(1, opts, joins);
    const fingerprint = randomUUID();
    const ex = counted({ held: true });
    const first = a!.run({ fingerprint, execute: ex.execute }, call());
    await ex.running(1);
    const second = b!.run({ fingerprint, execute: ex.execute }, call());
    await joins.joined(1);
    await sleep(1_000); // over three claim lifetimes: only renewal keeps the claim alive this long
    ex.release();
    const rs = await Promise.all([first, second]);
    expect(ex.calls()).toBe(1);
    expect(rs.map((r) => r.deduplicated)).toEqual([false, true]);
  });

  it("a joiner stops at its deadline (DEADLINE_EXCEEDED) or when cancelled (CANCELLED)", async () => {
    const joins = joinWatch();
    const [a] = await backend.replicas(1);
    const [b] = await backend.replicas(1, {}, joins);
    const fingerprint = randomUUID();
    const ex = counted({ held: true });
    const running = a!.run({ fingerprint, execute: ex.execute }, call());
    await ex.running(1);
    const late = await errorOf(b!.run({ fingerprint, execute: ex.execute }, call(100)));
    expect(isKeygateError(late) && late.reason).toBe("DEADLINE_EXCEEDED");
    expect(joins.count()).toBe(1); // it had joined: the deadline ended a wait, not a claim
    const ctl = new AbortController();
    const cancelled = errorOf(b!.run({ fingerprint, execute: ex.execute }, { signal: ctl.signal }));
    await joins.joined(2);
    ctl.abort();
    const err = await cancelled;
    expect(isKeygateError(err) && err.reason).toBe("CANCELLED");
    ex.release();
    await running;
    expect(ex.calls()).toBe(1);
  });

  describe("joiners re-read: nothing executes twice because a claim was released", () => {
    /** A replica whose claim step waits for `mayClaim`, and that reports reaching it and seeing the key pending. */
    async function lateReplica(opts: Partial<OperationsOptions>) {
      const atClaim = deferred();
      const sawPending = deferred();
      const mayClaim = deferred();
      const [late] = await backend.replicas(1, opts, {
        wrap: (s) =>
          wrapStore(s, {
            beginIdempotent: async (k, f, ttl) => {
              const st = await s.beginIdempotent(k, f, ttl);
              if (st.state === "pending") sawPending.resolve();
              return st;
            },
            claim: async (f, token, ttl) => {
              atClaim.resolve();
              await mayClaim.promise;
              return s.claim(f, token, ttl);
            },
          }),
      });
      return { late: late!, atClaim, sawPending, mayClaim };
    }

    it.each([
      ["within the join window", {}],
      ["after the join window (the idempotency record is re-read)", { joinWindowMs: 0 }],
    ])("row 1 (idempotency key), claiming %s: the first's outcome, 0 executions", async (_, opts) => {
      const [a] = await backend.replicas(1, opts);
      const { late, sawPending, mayClaim } = await lateReplica(opts);
      const fingerprint = randomUUID();
      const idempotency = { tenant: "team-a", key: randomUUID() };
      const ex = counted({ held: true });
      const first = a!.run({ fingerprint, idempotency, execute: ex.execute }, call());
      await ex.running(1);
      const second = late.run({ fingerprint, idempotency, execute: ex.execute }, call());
      await sawPending.promise;
      ex.release();
      const r1 = await first; // finished: its claim is released
      mayClaim.resolve();
      const r2 = await second;
      expect(ex.calls()).toBe(1);
      expect(r2).toEqual({ ...r1, deduplicated: true });
      const raw = await backend.rawStore();
      expect((await raw.peek(fingerprint, "nobody")).claimHolder).toBeNull(); // the claim was given back
    });

    it("row 2 (no key): an identical call that claims just after the finish joins its outcome, 0 executions", async () => {
      const [a] = await backend.replicas(1);
      const { late, atClaim, mayClaim } = await lateReplica({});
      const fingerprint = randomUUID();
      const ex = counted({ held: true });
      const first = a!.run({ fingerprint, execute: ex.execute }, call());
      await ex.running(1);
      const second = late.run({ fingerprint, execute: ex.execute }, call());
      await atClaim.promise;
      ex.release();
      const r1 = await first;
      mayClaim.resolve();
      expect(await second).toEqual({ ...r1, deduplicated: true });
      expect(ex.calls()).toBe(1);
    });

    it("the join window serves final outcomes only: after a transient failure an identical call runs again", async () => {
      const [a] = await backend.replicas(1);
      const fingerprint = randomUUID();
      const failing = counted({ fail: () => keygateError("UPSTREAM_UNAVAILABLE", "5xx") });
      const err = await errorOf(a!.run({ fingerprint, execute: failing.execute }, call()));
      expect(isKeygateError(err) && err.reason).toBe("UPSTREAM_UNAVAILABLE");
      const ok = counted();
      expect((await a!.run({ fingerprint, execute: ok.execute }, call())).deduplicated).toBe(false);
      expect(ok.calls()).toBe(1);
    });
  });

  describe("records with phases, fencing and takeover", () => {
    it("an executor that stalled past its claim cannot mark `sending` (OPERATION_TAKEN_OVER); its heir inherits the phase", async () => {
      // a never renews (it "stalls"), so its claim runs out while it is held; 1 s leaves a loaded
      // machine ample time for its first mark.
      const [a] = await backend.replicas(1, { claimTtlMs: 1_000, claimRenewEveryMs: 600_000 });
      const [b] = await backend.replicas(1, { recheckMs: 20 });
      const fingerprint = randomUUID();
      const stall = deferred();
      let lateMark: unknown;
      const exA = counted({
        body: async (e) => {
          await e.mark("sending", { sentAt: 1234 });
          await stall.promise;
          lateMark = await errorOf(e.mark("sending"));
          throw lateMark;
        },
      });
      const first = errorOf(a!.run({ fingerprint, execute: exA.execute }, call()));
      await exA.running(1);
      const exB = counted();
      const second = b!.run({ fingerprint, execute: exB.execute }, call());
      await exB.running(1); // b took over once a's claim had run out
      expect(exB.inherited()).toEqual([{ phase: "sending", sentAt: 1234 }]);
      stall.resolve();
      const errA = await first;
      expect(isKeygateError(lateMark) && lateMark.reason).toBe("OPERATION_TAKEN_OVER");
      expect(isKeygateError(errA) && [errA.reason, errA.kind]).toEqual(["OPERATION_TAKEN_OVER", "aborted"]);
      expect((await second).deduplicated).toBe(false);
    });

    it("a call that joined the stalled executor gets the heir's answer, not OPERATION_TAKEN_OVER", async () => {
      const [a] = await backend.replicas(1, { claimTtlMs: 1_000, claimRenewEveryMs: 600_000 });
      const [b] = await backend.replicas(1, { recheckMs: 20 });
      const joined = deferred();
      const mayLook = deferred();
      const [c] = await backend.replicas(
        1,
        { recheckMs: 20 },
        {
          wrap: (s) =>
            wrapStore(s, {
              peek: async (f, holder) => {
                joined.resolve();
                await mayLook.promise; // c looks again only once a has finished with OPERATION_TAKEN_OVER
                return s.peek(f, holder);
              },
            }),
        },
      );
      const fingerprint = randomUUID();
      const stall = deferred();
      const exA = counted({
        body: async (e) => {
          await e.mark("sending");
          await stall.promise;
          await e.mark("sending");
        },
      });
      const first = errorOf(a!.run({ fingerprint, execute: exA.execute }, call()));
      await exA.running(1);
      const third = c!.run({ fingerprint, execute: exA.execute }, call());
      await joined.promise;
      const exB = counted();
      const heir = await b!.run({ fingerprint, execute: exB.execute }, call());
      stall.resolve();
      const errA = await first;
      expect(isKeygateError(errA) && errA.reason).toBe("OPERATION_TAKEN_OVER");
      mayLook.resolve();
      expect(await third).toEqual({ ...heir, deduplicated: true });
      expect([exA.calls(), exB.calls()]).toEqual([1, 1]);
    });

    it("row 3: the executor died after its cloud call; the retry with its key inherits `sent` and the request id", async () => {
      const store = await backend.rawStore();
      const [b] = await backend.replicas(1);
      const fingerprint = randomUUID();
      const idempotency = { tenant: "team-a", key: randomUUID() };
      const idem = idempotencyKey(idempotency.tenant, idempotency.key, sha256);
      // What the dead replica left: the key pending, its claim (never renewed again), phase sent.
      expect(await store.beginIdempotent(idem, fingerprint, 60_000)).toEqual({ state: "new" });
      expect((await store.claim(fingerprint, "dead-replica", ttls(1_000))).state).toBe("claimed");
      expect(await store.mark(fingerprint, "dead-replica", "sending", { sentAt: 1000 }, 60_000)).toBe(true);
      expect(await store.mark(fingerprint, "dead-replica", "sent", { requestId: "up-dead" }, 60_000)).toBe(
        true,
      );
      const ex = counted();
      const r = await b!.run({ fingerprint, idempotency, execute: ex.execute }, call());
      expect(ex.inherited()).toEqual([{ phase: "sent", sentAt: 1000, requestId: "up-dead" }]);
      expect(r.deduplicated).toBe(false);
      // The dead replica's token is fenced out for good.
      expect(await store.mark(fingerprint, "dead-replica", "uncertain", {}, 60_000)).toBe(false);
    });

    it("a transient failure after `sent` leaves the record to the next executor; a final outcome closes it", async () => {
      const [a] = await backend.replicas(1);
      const fingerprint = randomUUID();
      const timedOut = counted({
        body: async (e) => {
          await e.mark("sending");
          await e.mark("sent", { requestId: "up-1" });
        },
        fail: () => keygateError("DEADLINE_EXCEEDED", "the task outlived the deadline"),
      });
      const err = await errorOf(a!.run({ fingerprint, execute: timedOut.execute }, call()));
      expect(isKeygateError(err) && err.reason).toBe("DEADLINE_EXCEEDED");
      const next = counted();
      const r = await a!.run({ fingerprint, execute: next.execute }, call());
      expect(next.inherited()).toEqual([
        { phase: "sent", sentAt: expect.any(Number) as number, requestId: "up-1" },
      ]);
      // Closed with a final outcome: the next identical call joins it (join window), inheriting nothing.
      const again = await a!.run({ fingerprint, execute: next.execute }, call());
      expect(again).toEqual({ ...r, deduplicated: true });
      expect(next.calls()).toBe(1);
    });

    it("a transient failure before anything was sent leaves nothing to inherit", async () => {
      const [a] = await backend.replicas(1);
      const fingerprint = randomUUID();
      const busy = counted({ fail: () => keygateError("INSTANCE_BUSY", "leased") });
      await errorOf(a!.run({ fingerprint, execute: busy.execute }, call()));
      const next = counted();
      await a!.run({ fingerprint, execute: next.execute }, call());
      expect(next.inherited()).toEqual([undefined]);
    });

    it("a claim nobody renews (a crashed executor, or a SET Redis ran after its client gave up) blocks for one TTL only", async () => {
      const store = await backend.rawStore();
      const [b] = await backend.replicas(1, { recheckMs: 20 });
      const fingerprint = randomUUID();
      expect((await store.claim(fingerprint, "ghost", ttls(200))).state).toBe("claimed");
      const ex = counted();
      const r = await b!.run({ fingerprint, execute: ex.execute }, call());
      expect([r.deduplicated, ex.calls(), ex.inherited()]).toEqual([false, 1, [undefined]]);
    });
  });

  describe("idempotency stores final outcomes only", () => {
    const upstream = (kind: ErrorKind, code: string) => () =>
      new KeygateError({ kind, reason: code, message: code, upstreamCode: code, upstreamRequestId: "up-x" });
    it.each([
      ["InternalError (UNAVAILABLE, from the cloud)", upstream("unavailable", "InternalError")],
      [
        "MutexOperation.TaskRunning (ABORTED, from the cloud)",
        upstream("aborted", "MutexOperation.TaskRunning"),
      ],
      ["RequestLimitExceeded (RESOURCE_EXHAUSTED)", upstream("resource_exhausted", "RequestLimitExceeded")],
      ["DEADLINE_EXCEEDED", () => keygateError("DEADLINE_EXCEEDED", "late")],
      ["CANCELLED", () => keygateError("CANCELLED", "gone")],
      ["INTERNAL (a bug)", () => new TypeError("bug")],
    ])("%s is not stored: a retry with the same key runs again", async (_, fail) => {
      const [a, b] = await backend.replicas(2);
      const fingerprint = randomUUID();
      const idempotency = { tenant: "team-a", key: randomUUID() };
      const failing = counted({ fail });
      await errorOf(a!.run({ fingerprint, idempotency, execute: failing.execute }, call()));
      const ok = counted();
      const r = await b!.run({ fingerprint, idempotency, execute: ok.execute }, call());
      expect([r.deduplicated, ok.calls()]).toEqual([false, 1]);
      // ... and its success is what the key keeps.
      expect(await b!.run({ fingerprint, idempotency, execute: ok.execute }, call())).toEqual({
        ...r,
        deduplicated: true,
      });
    });
  });

  it("answers before its finish lands; a call arriving meanwhile joins it; close waits for the finish", async () => {
    const landed = deferred();
    let finishes = 0;
    const slowFinish: Wrapper = {
      wrap: (s) =>
        wrapStore(s, {
          finish: async (f, token, o, opts) => {
            await landed.promise;
            finishes += 1;
            return s.finish(f, token, o, opts);
          },
        }),
    };
    const [a] = await backend.replicas(1, {}, slowFinish);
    const fingerprint = randomUUID();
    const ex = counted();
    const first = await a!.run({ fingerprint, execute: ex.execute }, call());
    expect([first.deduplicated, ex.calls(), finishes]).toEqual([false, 1, 0]);
    // The claim is still held until the finish lands: an identical call joins it, runs nothing.
    const second = a!.run({ fingerprint, execute: ex.execute }, call());
    let closed = false;
    const closing = a!.close().then(() => (closed = true));
    await sleep(50);
    expect(closed).toBe(false);
    landed.resolve();
    await closing;
    expect(finishes).toBe(1);
    expect(await second).toEqual({ ...first, deduplicated: true });
    expect(ex.calls()).toBe(1);
  });

  it("refuses work after close", async () => {
    const [a] = await backend.replicas(1);
    await a!.close();
    const ex = counted();
    const err = await errorOf(a!.run({ fingerprint: randomUUID(), execute: ex.execute }, call()));
    expect(isKeygateError(err) && err.reason).toBe("SHUTTING_DOWN");
    expect(ex.calls()).toBe(0);
  });
});

describe("local-share wrapper keeps the same semantics", () => {
  const both = async () => {
    const primary = createOperations({
      store: createRedisOperationStore({ client: await connectedClient() }),
      clock: systemClock,
    });
    const own = createOperations({
      store: createMemoryOperationStore({ clock: systemClock }),
      clock: systemClock,
    });
    return createLocalShareOperations({ primary, own, clock: systemClock });
  };

  it("passes the shared record through: a takeover inherits, and a lost claim refuses mark", async () => {
    const ops = await both();
    const store = createRedisOperationStore({ client: await connectedClient() });
    const fingerprint = randomUUID();
    expect((await store.claim(fingerprint, "dead-replica", ttls(1_000))).state).toBe("claimed");
    expect(
      await store.mark(fingerprint, "dead-replica", "sent", { sentAt: 7, requestId: "up-7" }, 60_000),
    ).toBe(true);
    const ex = counted({ body: (e) => e.mark("sending") });
    await ops.run({ fingerprint, execute: ex.execute }, call());
    expect(ex.inherited()).toEqual([{ phase: "sent", sentAt: 7, requestId: "up-7" }]);
    expect(await store.mark(fingerprint, "dead-replica", "sending", {}, 60_000)).toBe(false);
  });

  it("joins a final outcome within the window and re-reads the key, like the stores it wraps", async () => {
    const [a, b] = [await both(), await both()];
    const fingerprint = randomUUID();
    const idempotency = { tenant: "team-a", key: randomUUID() };
    const ex = counted();
    const first = await a.run({ fingerprint, execute: ex.execute }, call());
    expect(await b.run({ fingerprint, execute: ex.execute }, call())).toEqual({
      ...first,
      deduplicated: true,
    });
    const failing = counted({ fail: () => keygateError("UPSTREAM_TIMEOUT", "no answer") });
    const fp2 = randomUUID();
    await errorOf(a.run({ fingerprint: fp2, idempotency, execute: failing.execute }, call()));
    const r = await b.run({ fingerprint: fp2, idempotency, execute: ex.execute }, call());
    expect([r.deduplicated, ex.calls()]).toEqual([false, 2]);
  });
});
