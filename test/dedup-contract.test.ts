import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { systemClock } from "../src/core/clock.js";
import { isKeygateError, KeygateError, keygateError } from "../src/core/errors.js";
import type { AssociateResult } from "../src/core/model.js";
import type { Operations } from "../src/core/ports.js";
import { createMemoryOperationStore } from "../src/dedup/memory-operation-store.js";
import type { OperationStore } from "../src/dedup/operation-store.js";
import { createOperations, type OperationsOptions } from "../src/dedup/operations.js";
import { createRedisOperationStore } from "../src/dedup/redis-operation-store.js";
import { redisClients } from "./support/redis-client.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";
import { deferred, eventCounter, sleep } from "./support/wait.js";

/** Several "replicas" over one backend (separate Redis clients, or one in-memory store). */
interface Backend {
  name: string;
  /** `joins` (see `joinWatch`) counts the replicas' claims found held by another call. */
  replicas(n: number, opts?: Partial<OperationsOptions>, joins?: JoinWatch): Promise<Operations[]>;
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

const call = (ms = 10_000) => ({ signal: new AbortController().signal, deadline: Date.now() + ms });
/**
 * An execute that counts its calls and answers with a fresh request id each time. With `held`,
 * every execution waits until the test calls `release()`, so "still running" is a fact, not a race.
 */
function counted(opts: { held?: boolean; fail?: () => unknown } = {}) {
  const started = eventCounter();
  const gate = deferred();
  if (!opts.held) gate.resolve();
  const execute = async (): Promise<AssociateResult> => {
    started.bump();
    const n = started.count();
    await gate.promise;
    if (opts.fail) throw opts.fail();
    return { requestId: `req-${n}-${randomUUID()}`, deduplicated: false, instances: [] };
  };
  return { execute, calls: started.count, running: started.reached, release: () => gate.resolve() };
}

interface JoinWatch {
  wrap(store: OperationStore): OperationStore;
  /** Resolves once `n` runs have found the claim held by another call (so they join it). */
  joined(n: number): Promise<void>;
  count(): number;
}

/** Watches the claim step: a refused claim means that run now waits for the call holding it. */
function joinWatch(): JoinWatch {
  const refused = eventCounter();
  return {
    wrap: (s) => ({
      beginIdempotent: (k, f, ttl) => s.beginIdempotent(k, f, ttl),
      completeIdempotent: (k, f, o, ttl) => s.completeIdempotent(k, f, o, ttl),
      abandonIdempotent: (k, f) => s.abandonIdempotent(k, f),
      claim: async (f, token, ttl) => {
        const c = await s.claim(f, token, ttl);
        if (!c.claimed) refused.bump();
        return c;
      },
      renewClaim: (f, token, ttl) => s.renewClaim(f, token, ttl),
      finish: (f, token, o, ttl) => s.finish(f, token, o, ttl),
      peek: (f, holder) => s.peek(f, holder),
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

  it("different fingerprints do not coalesce; a finished call is not joined by a later one", async () => {
    const [a] = await backend.replicas(1);
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
    expect(await store.claim(fingerprint, "dead-replica", 300)).toEqual({ claimed: true });
    const ex = counted();
    const r = await b!.run({ fingerprint, execute: ex.execute }, call());
    expect(r.deduplicated).toBe(false);
    expect(ex.calls()).toBe(1);
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

  it("refuses work after close", async () => {
    const [a] = await backend.replicas(1);
    await a!.close();
    const ex = counted();
    const err = await errorOf(a!.run({ fingerprint: randomUUID(), execute: ex.execute }, call()));
    expect(isKeygateError(err) && err.reason).toBe("SHUTTING_DOWN");
    expect(ex.calls()).toBe(0);
  });
});
