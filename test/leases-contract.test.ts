import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { systemClock } from "../src/core/clock.js";
import { isKeygateError, keygateError } from "../src/core/errors.js";
import type { Leases } from "../src/core/ports.js";
import type { LeaseStore } from "../src/leases/lease-store.js";
import { createLeases, type LeasesOptions } from "../src/leases/leases.js";
import { createMemoryLeaseStore } from "../src/leases/memory-lease-store.js";
import { createRedisLeaseStore } from "../src/leases/redis-lease-store.js";
import { redisClients } from "./support/redis-client.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";
import { eventCounter, pollUntil, sleep } from "./support/wait.js";

/** Several "replicas" sharing one backend: separate Redis clients, or one in-memory store. */
interface Backend {
  name: string;
  /** `attempts` (see `attemptWatch`) sees the replicas' refused acquisition attempts. */
  replicas(n: number, opts?: Partial<LeasesOptions>, attempts?: AttemptWatch): Promise<Leases[]>;
  closeAll(): Promise<void>;
}

let redis: RedisProcess;
const clients = redisClients();
const opened: Leases[] = [];

/** One in-memory store for the whole file, like one Redis: tests keep apart by scope. */
const memoryStore = createMemoryLeaseStore({ clock: systemClock });

const backends: Backend[] = [
  {
    name: "memory",
    replicas(n, opts, attempts) {
      const store = attempts?.wrap(memoryStore) ?? memoryStore;
      return Promise.resolve(
        track(Array.from({ length: n }, () => createLeases({ clock: systemClock, store, ...opts }))),
      );
    },
    closeAll: () => Promise.resolve(),
  },
  {
    name: "redis",
    async replicas(n, opts, attempts) {
      const made: Leases[] = [];
      for (let i = 0; i < n; i++) {
        const client = await clients.connect(redis.url);
        const raw = createRedisLeaseStore({ client });
        made.push(createLeases({ clock: systemClock, store: attempts?.wrap(raw) ?? raw, ...opts }));
      }
      return track(made);
    },
    closeAll: () => Promise.resolve(clients.closeAll()),
  },
];

function track(ls: Leases[]): Leases[] {
  opened.push(...ls);
  return ls;
}

const call = (ms = 10_000) => ({ signal: new AbortController().signal, deadline: Date.now() + ms });

interface AttemptWatch {
  wrap(store: LeaseStore): LeaseStore;
  /** Resolves once `n` attempts were refused: the acquirer is now waiting. */
  refused(n: number): Promise<void>;
  /** Resolves once `n` refused attempts also reserved their ids (fairness). */
  reserved(n: number): Promise<void>;
}

/** Watches `tryAcquire`, so a test knows an acquirer waits (and reserves) instead of guessing with a sleep. */
function attemptWatch(): AttemptWatch {
  const refused = eventCounter();
  const reserved = eventCounter();
  return {
    wrap: (s) => ({
      tryAcquire: async (scope, ids, owner, ttl, waiter) => {
        const r = await s.tryAcquire(scope, ids, owner, ttl, waiter);
        if (!r.ok) {
          refused.bump();
          if (waiter.reserve) reserved.bump();
        }
        return r;
      },
      withdraw: (scope, ids, waiter) => s.withdraw(scope, ids, waiter),
      renew: (scope, ids, token, ttl) => s.renew(scope, ids, token, ttl),
      release: (scope, ids, token) => s.release(scope, ids, token),
    }),
    refused: refused.reached,
    reserved: reserved.reached,
  };
}

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await Promise.all(opened.splice(0).map((l) => l.close()));
  for (const b of backends) await b.closeAll();
  await redis?.stop();
});

describe.each(backends)("Leases contract ($name)", (backend) => {
  it("takes free instances at once and hands out increasing fences", async () => {
    const [a] = await backend.replicas(1);
    const scope = randomUUID();
    const h1 = await a!.acquire(scope, ["ins-00000001", "ins-00000002"], { ...call(), owner: "r1" });
    await h1.release();
    const h2 = await a!.acquire(scope, ["ins-00000002"], { ...call(), owner: "r1" });
    expect(h2.fence).toBeGreaterThan(h1.fence);
    expect(h2.lost.aborted).toBe(false);
    await h2.release();
  });

  it("is all or none: a busy instance blocks the whole set, the others stay free", async () => {
    const [a, b] = await backend.replicas(2);
    const scope = randomUUID();
    const held = await a!.acquire(scope, ["ins-00000002"], { ...call(), owner: "r1" });
    const err = await b!
      .acquire(scope, ["ins-00000001", "ins-00000002", "ins-00000003"], { ...call(150), owner: "r2" })
      .catch((e: unknown) => e);
    expect(isKeygateError(err) && err.reason).toBe("INSTANCE_BUSY");
    // Nothing of the failed set was left held.
    const other = await b!.acquire(scope, ["ins-00000001", "ins-00000003"], { ...call(150), owner: "r2" });
    await other.release();
    await held.release();
  });

  it("waits for a busy instance and gets it when released", async () => {
    const attempts = attemptWatch();
    const [a] = await backend.replicas(1);
    const [b] = await backend.replicas(1, {}, attempts);
    const scope = randomUUID();
    const held = await a!.acquire(scope, ["ins-00000001"], { ...call(), owner: "r1" });
    let got = false;
    const waiting = b!.acquire(scope, ["ins-00000001"], { ...call(), owner: "r2" }).then((h) => {
      got = true;
      return h;
    });
    await attempts.refused(2); // refused, then refused again after its first pause: it waits
    expect(got).toBe(false);
    await held.release();
    const h = await waiting;
    expect(h.fence).toBeGreaterThan(held.fence);
    await h.release();
  });

  it("scopes are independent", async () => {
    const [a] = await backend.replicas(1);
    const [scope1, scope2] = [randomUUID(), randomUUID()];
    const h1 = await a!.acquire(scope1, ["ins-00000001"], { ...call(), owner: "r1" });
    // The same instance id in another scope is another instance: granted at once...
    const h2 = await a!.acquire(scope2, ["ins-00000001"], { ...call(100), owner: "r1" });
    expect(h2.lost.aborted).toBe(false);
    // ...while in the first scope it is really held.
    const err = await a!
      .acquire(scope1, ["ins-00000001"], { ...call(100), owner: "r2" })
      .catch((e: unknown) => e);
    expect(isKeygateError(err) && err.reason).toBe("INSTANCE_BUSY");
    await Promise.all([h1.release(), h2.release()]);
    expect([h1.lost.aborted, h2.lost.aborted]).toEqual([false, false]);
  });

  it("ends the wait on abort with CANCELLED, or with the signal's own KeygateError", async () => {
    const attempts = attemptWatch();
    const [a] = await backend.replicas(1, {}, attempts);
    const scope = randomUUID();
    const held = await a!.acquire(scope, ["ins-00000001"], { ...call(), owner: "r1" });
    const ctl = new AbortController();
    const waiting = a!
      .acquire(scope, ["ins-00000001"], { signal: ctl.signal, owner: "r2" })
      .catch((e: unknown) => e);
    await attempts.refused(1);
    ctl.abort();
    const err = await waiting;
    expect(isKeygateError(err) && err.reason).toBe("CANCELLED");

    const ctl2 = new AbortController();
    ctl2.abort(keygateError("DEADLINE_EXCEEDED", "caller deadline"));
    const err2 = await a!
      .acquire(scope, ["ins-00000001"], { signal: ctl2.signal, owner: "r2" })
      .catch((e: unknown) => e);
    expect(isKeygateError(err2) && err2.reason).toBe("DEADLINE_EXCEEDED");
    await held.release();
  });

  it("keeps a held lease alive past its TTL by renewing it", async () => {
    const [a, b] = await backend.replicas(2, { ttlMs: 400, renewEveryMs: 50 });
    const scope = randomUUID();
    const held = await a!.acquire(scope, ["ins-00000001"], { ...call(), owner: "r1" });
    const err = await b!
      .acquire(scope, ["ins-00000001"], { ...call(1_200), owner: "r2" })
      .catch((e: unknown) => e);
    expect(isKeygateError(err) && err.reason).toBe("INSTANCE_BUSY");
    expect(held.lost.aborted).toBe(false);
    await held.release();
  });

  it("lets a crashed holder's lease expire; the stale holder learns it lost it and cannot free the new one", async () => {
    // The "crashed" replica never renews within the TTL.
    const [crashed] = await backend.replicas(1, { ttlMs: 200, renewEveryMs: 600 });
    const [b, c] = await backend.replicas(2);
    const scope = randomUUID();
    const stale = await crashed!.acquire(scope, ["ins-00000001", "ins-00000002"], {
      ...call(),
      owner: "dead",
    });
    const lost = new Promise<unknown>((r) =>
      stale.lost.addEventListener("abort", () => r(stale.lost.reason)),
    );
    const taken = await b!.acquire(scope, ["ins-00000002"], { ...call(), owner: "r2" });
    expect(taken.fence).toBeGreaterThan(stale.fence);
    const reason = await lost;
    expect(isKeygateError(reason) && reason.reason).toBe("INSTANCE_BUSY");
    await stale.release();
    const err = await c!
      .acquire(scope, ["ins-00000002"], { ...call(100), owner: "r3" })
      .catch((e: unknown) => e);
    expect(isKeygateError(err) && err.reason).toBe("INSTANCE_BUSY");
    await taken.release();
  });

  it("says when an acquisition took over an EXPIRED lease (its task may still run), not a released one", async () => {
    const [crashed] = await backend.replicas(1, { ttlMs: 150, renewEveryMs: 60_000 });
    const [b] = await backend.replicas(1);
    const scope = randomUUID();
    const fresh = await b!.acquire(scope, ["ins-00000003"], { ...call(), owner: "r2" });
    expect(fresh.tookOver).toBe(false);
    await fresh.release();
    const again = await b!.acquire(scope, ["ins-00000003"], { ...call(), owner: "r2" });
    expect(again.tookOver).toBe(false);
    await again.release();
    // Never renewed: the holder "died" with the lease held.
    const dead = await crashed!.acquire(scope, ["ins-00000001", "ins-00000003"], {
      ...call(),
      owner: "dead",
    });
    expect(dead.tookOver).toBe(false);
    const taken = await b!.acquire(scope, ["ins-00000003"], { ...call(), owner: "r2" });
    expect(taken.tookOver).toBe(true);
    expect(taken.fence).toBeGreaterThan(dead.fence);
    await taken.release();
    // Released by its holder in between: no takeover.
    const next = await b!.acquire(scope, ["ins-00000003"], { ...call(), owner: "r2" });
    expect(next.tookOver).toBe(false);
    await next.release();
    await dead.release();
  });

  it("an expired lease blocks for at most its TTL, even while it is still remembered", async () => {
    const [crashed] = await backend.replicas(1, { ttlMs: 300, renewEveryMs: 60_000 });
    const [b] = await backend.replicas(1);
    const scope = randomUUID();
    const dead = await crashed!.acquire(scope, ["ins-00000001"], { ...call(), owner: "dead" });
    const started = Date.now();
    const taken = await b!.acquire(scope, ["ins-00000001"], { ...call(5_000), owner: "r2" });
    expect(Date.now() - started).toBeLessThan(4_000);
    expect(taken.tookOver).toBe(true);
    await taken.release();
    await dead.release();
  });

  it("release is idempotent and never throws", async () => {
    const [a, b] = await backend.replicas(2);
    const scope = randomUUID();
    const h = await a!.acquire(scope, ["ins-00000001"], { ...call(), owner: "r1" });
    await expect(h.release()).resolves.toBeUndefined();
    await expect(h.release()).resolves.toBeUndefined();
    // Freed by the first release, and a repeated release does not free someone else's lease.
    const next = await b!.acquire(scope, ["ins-00000001"], { ...call(100), owner: "r2" });
    await expect(h.release()).resolves.toBeUndefined();
    const err = await a!
      .acquire(scope, ["ins-00000001"], { ...call(100), owner: "r3" })
      .catch((e: unknown) => e);
    expect(isKeygateError(err) && err.reason).toBe("INSTANCE_BUSY");
    await next.release();
  });

  it("refuses new acquisitions after close", async () => {
    const [a] = await backend.replicas(1);
    await a!.close();
    const err = await a!
      .acquire(randomUUID(), ["ins-00000001"], { ...call(), owner: "r1" })
      .catch((e: unknown) => e);
    expect(isKeygateError(err) && err.reason).toBe("SHUTTING_DOWN");
  });

  it("never lets two holders share an instance, and never deadlocks, under racing overlapping sets", async () => {
    const replicas = await backend.replicas(2, { retryMinMs: 2, retryMaxMs: 20 });
    const scope = randomUUID();
    const pool = Array.from({ length: 6 }, (_, i) => `ins-0000000${i}`);
    const holder = new Map<string, string>();
    const intervals: { id: string; from: number; to: number }[] = [];
    const violations: string[] = [];
    let seed = 42;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;

    const worker = async (w: number) => {
      const leases = replicas[w % 2]!;
      for (let round = 0; round < 6; round++) {
        const ids = pool.filter(() => rand() < 0.4);
        if (ids.length === 0) ids.push(pool[w % pool.length]!);
        const me = `w${w}r${round}`;
        const h = await leases.acquire(scope, ids, { ...call(60_000), owner: me });
        const from = performance.now();
        for (const id of ids) {
          if (holder.has(id)) violations.push(`${id}: ${me} while ${holder.get(id)}`);
          holder.set(id, me);
        }
        await sleep(1 + Math.floor(rand() * 4));
        for (const id of ids) holder.delete(id);
        const to = performance.now();
        for (const id of ids) intervals.push({ id, from, to });
        await h.release();
      }
    };
    await Promise.all(Array.from({ length: 30 }, (_, w) => worker(w)));

    expect(violations).toEqual([]);
    for (const id of pool) {
      const mine = intervals.filter((i) => i.id === id).sort((x, y) => x.from - y.from);
      for (let i = 1; i < mine.length; i++) expect(mine[i]!.from).toBeGreaterThanOrEqual(mine[i - 1]!.to);
    }
    expect(intervals.length).toBeGreaterThan(0);
  });

  it("a large request is not starved by a stream of small overlapping ones (fairness)", async () => {
    const replicas = await backend.replicas(2, { retryMinMs: 2, retryMaxMs: 20, fairAfterMs: 50 });
    const scope = randomUUID();
    const pool = Array.from({ length: 6 }, (_, i) => `ins-1000000${i}`);
    let bigDone = false;
    let smallsStopped = 0;
    const smallGrants = eventCounter();
    // The order of events as they happened: "small" grants, "big-asks", "big" (its grant).
    const order: string[] = [];
    // Small requests overlap so that some instance of the pool is nearly always held.
    const small = async (w: number) => {
      for (let round = 0; !bigDone && round < 10_000; round++) {
        const ids = [pool[(w + round) % pool.length]!];
        const h = await replicas[w % 2]!.acquire(scope, ids, { ...call(30_000), owner: `small-${w}` });
        order.push("small");
        smallGrants.bump();
        await sleep(15);
        await h.release();
      }
      smallsStopped++;
    };
    const smalls = Array.from({ length: 8 }, (_, w) => small(w));
    await smallGrants.reached(8); // the stream is flowing before the large request arrives
    order.push("big-asks");
    const big = await replicas[0]!.acquire(scope, pool, { ...call(20_000), owner: "big" });
    order.push("big");
    const stoppedBeforeBig = smallsStopped;
    bigDone = true;
    await big.release();
    await Promise.all(smalls);
    const asked = order.indexOf("big-asks");
    const granted = order.indexOf("big");
    expect(asked).toBeGreaterThanOrEqual(8);
    expect(granted).toBeGreaterThan(asked);
    // It waited while small ones kept being granted, and got its turn in the middle of the
    // stream: every small requester was still asking when the large one was granted.
    expect(order.slice(asked + 1, granted)).toContain("small");
    expect(stoppedBeforeBig).toBe(0);
  });

  it("a waiter's reservations block younger acquirers only while it waits", async () => {
    const attempts = attemptWatch();
    const [a] = await backend.replicas(1, { fairAfterMs: 0 });
    const [b] = await backend.replicas(1, { fairAfterMs: 0 }, attempts);
    const scope = randomUUID();
    const held = await a!.acquire(scope, ["ins-00000001"], { ...call(), owner: "r1" });
    const waiting = b!.acquire(scope, ["ins-00000001", "ins-00000002"], { ...call(300), owner: "r2" });
    await attempts.reserved(1);
    // Waiters are ordered by start time in ms (ties by a random id): r3 must start in a later ms.
    const reservedAt = Date.now();
    await pollUntil(() => Date.now() > reservedAt, "the clock to tick", 1_000, 1);
    const err = await a!
      .acquire(scope, ["ins-00000002"], { ...call(50), owner: "r3" })
      .catch((e: unknown) => e);
    expect(isKeygateError(err) && err.reason).toBe("INSTANCE_BUSY");
    await waiting.catch(() => undefined);
    // Gave up and withdrew: the free instance is free again at once (a reservation lives 1 s).
    const h = await a!.acquire(scope, ["ins-00000002"], { ...call(50), owner: "r3" });
    await Promise.all([h.release(), held.release()]);
  });
});
