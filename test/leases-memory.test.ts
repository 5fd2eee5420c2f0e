import { describe, expect, it } from "vitest";
import { FakeClock } from "./support/fake-clock.js";
import { isKeygateError } from "../src/core/errors.js";
import type { LeaseStore } from "../src/leases/lease-store.js";
import { createLeases, type LeasesOptions } from "../src/leases/leases.js";
import { createMemoryLeaseStore } from "../src/leases/memory-lease-store.js";

/** Settles a promise into a value we can inspect without awaiting it to completion. */
function watch<T>(p: Promise<T>) {
  const state: { done: boolean; value?: T; error?: unknown } = { done: false };
  p.then(
    (value) => Object.assign(state, { done: true, value }),
    (error: unknown) => Object.assign(state, { done: true, error }),
  );
  return state;
}

const noSignal = () => new AbortController().signal;

function setup(opts: { ttlMs?: number; renewEveryMs?: number; retryMaxMs?: number } = {}) {
  const clock = new FakeClock();
  const store = createMemoryLeaseStore({ clock });
  const make = (o: Omit<LeasesOptions, "store" | "clock"> = opts) =>
    createLeases({ clock, store, random: () => 1, ...o });
  return { clock, store, make };
}

describe("Leases timing (in-memory store, fake clock)", () => {
  it("an unrenewed lease expires exactly at its TTL", async () => {
    const { clock, make } = setup({ ttlMs: 1_000, renewEveryMs: 60_000 });
    const a = make();
    await a.acquire("s", ["ins-00000001"], { signal: noSignal(), owner: "a" });
    await clock.advance(999);
    const err = await make()
      .acquire("s", ["ins-00000001"], { signal: noSignal(), deadline: clock.now(), owner: "b" })
      .catch((e: unknown) => e);
    expect(isKeygateError(err) && err.reason).toBe("INSTANCE_BUSY");
    expect(isKeygateError(err) && err.retryAfterMs).toBe(1);
    await clock.advance(1);
    const h = await make().acquire("s", ["ins-00000001"], {
      signal: noSignal(),
      deadline: clock.now(),
      owner: "b",
    });
    expect(h.fence).toBe(2);
  });

  it("renewal keeps the lease for as long as it is held", async () => {
    const { clock, make } = setup({ ttlMs: 1_000, renewEveryMs: 300 });
    const held = await make().acquire("s", ["ins-00000001"], { signal: noSignal(), owner: "a" });
    for (let i = 0; i < 20; i++) await clock.advance(250);
    const err = await make()
      .acquire("s", ["ins-00000001"], { signal: noSignal(), deadline: clock.now(), owner: "b" })
      .catch((e: unknown) => e);
    expect(isKeygateError(err) && err.reason).toBe("INSTANCE_BUSY");
    expect(held.lost.aborted).toBe(false);
  });

  it("gives up exactly at the deadline, not before", async () => {
    const { clock, make } = setup();
    await make().acquire("s", ["ins-00000001"], { signal: noSignal(), owner: "a" });
    const w = watch(
      make().acquire("s", ["ins-00000001"], { signal: noSignal(), deadline: clock.now() + 500, owner: "b" }),
    );
    await clock.advance(0);
    await clock.advance(499);
    expect(w.done).toBe(false);
    await clock.advance(1);
    expect(w.done).toBe(true);
    expect(isKeygateError(w.error) && w.error.reason).toBe("INSTANCE_BUSY");
  });

  it("a waiter never sleeps past the holder's expiry", async () => {
    const { clock, make } = setup({ ttlMs: 1_000, renewEveryMs: 60_000, retryMaxMs: 30_000 });
    await make().acquire("s", ["ins-00000001"], { signal: noSignal(), owner: "a" });
    const w = watch(make().acquire("s", ["ins-00000001"], { signal: noSignal(), owner: "b" }));
    await clock.advance(0); // let the waiter make its first attempt at t = 0
    await clock.advance(1_000);
    expect(w.done).toBe(true);
    expect(w.error).toBeUndefined();
  });

  it("without a deadline the wait is still bounded by maxWaitMs", async () => {
    const { clock, store, make } = setup();
    await make().acquire("s", ["ins-00000001"], { signal: noSignal(), owner: "a" });
    const w = watch(
      createLeases({ clock, store, maxWaitMs: 2_000 }).acquire("s", ["ins-00000001"], {
        signal: noSignal(),
        owner: "b",
      }),
    );
    await clock.advance(0);
    await clock.advance(1_999);
    expect(w.done).toBe(false);
    await clock.advance(1);
    expect(isKeygateError(w.error) && w.error.reason).toBe("INSTANCE_BUSY");
  });

  it("a lease whose renewals cannot reach the store is reported lost once its TTL has run out", async () => {
    const clock = new FakeClock();
    const inner = createMemoryLeaseStore({ clock });
    let down = false;
    const flaky: LeaseStore = {
      tryAcquire: (...a) => inner.tryAcquire(...a),
      renew: (...a) => (down ? Promise.reject(new Error("connection refused")) : inner.renew(...a)),
      release: (...a) => inner.release(...a),
      withdraw: (...a) => inner.withdraw(...a),
    };
    const held = await createLeases({ clock, store: flaky, ttlMs: 900, renewEveryMs: 300 }).acquire(
      "s",
      ["ins-00000001"],
      { signal: noSignal(), owner: "a" },
    );
    await clock.advance(300);
    down = true;
    await clock.advance(600);
    expect(held.lost.aborted).toBe(false);
    await clock.advance(300);
    expect(held.lost.aborted).toBe(true);
    const reason: unknown = held.lost.reason;
    expect(isKeygateError(reason) && reason.reason).toBe("STORE_UNAVAILABLE");
    await held.release();
  });

  it("a waiter that has waited reserves its instances against younger acquirers, and withdraws when it gives up", async () => {
    const { clock, make } = setup({ retryMaxMs: 50 });
    const holder = make();
    await holder.acquire("s", ["ins-00000001"], { signal: noSignal(), owner: "a" });
    const big = watch(
      make({ retryMaxMs: 50 }).acquire("s", ["ins-00000001", "ins-00000002"], {
        signal: noSignal(),
        deadline: clock.now() + 1_000,
        owner: "big",
      }),
    );
    await clock.advance(0);
    // Before fairAfterMs (200 ms) the free instance is anyone's.
    const early = await make().acquire("s", ["ins-00000002"], {
      signal: noSignal(),
      deadline: clock.now(),
      owner: "c",
    });
    await early.release();
    await clock.advance(300);
    const blocked = await make()
      .acquire("s", ["ins-00000002"], { signal: noSignal(), deadline: clock.now(), owner: "c" })
      .catch((e: unknown) => e);
    expect(isKeygateError(blocked) && blocked.reason).toBe("INSTANCE_BUSY");
    await clock.advance(700);
    expect(isKeygateError(big.error) && big.error.reason).toBe("INSTANCE_BUSY");
    // Withdrawn at once, not after the reservation's own TTL.
    const after = await make().acquire("s", ["ins-00000002"], {
      signal: noSignal(),
      deadline: clock.now(),
      owner: "c",
    });
    await after.release();
  });

  it("a waiter is woken by the release itself, not by a poll (the clock does not move)", async () => {
    const { clock, make } = setup();
    const leases = make({ recheckMs: 60_000 });
    const t0 = clock.now();
    const held = await leases.acquire("s", ["ins-00000001"], { signal: noSignal(), owner: "a" });
    const waiter = watch(leases.acquire("s", ["ins-00000001"], { signal: noSignal(), owner: "b" }));
    for (let i = 0; i < 20; i++) await Promise.resolve();
    expect(waiter.done).toBe(false);
    await held.release();
    for (let i = 0; i < 20 && !waiter.done; i++) await new Promise((r) => setImmediate(r));
    expect(waiter.done && waiter.error === undefined).toBe(true);
    expect(clock.now()).toBe(t0);
  });

  it("refuses INSTANCE_BUSY at once beyond the per-instance waiter cap, and frees the slot when a waiter leaves", async () => {
    const { clock, make } = setup();
    const leases = make({ maxWaitersPerInstance: 2 });
    const t0 = clock.now();
    await leases.acquire("s", ["ins-00000001"], { signal: noSignal(), owner: "a" });
    const gone = new AbortController();
    const w1 = watch(leases.acquire("s", ["ins-00000001"], { signal: gone.signal, owner: "b" }));
    watch(leases.acquire("s", ["ins-00000001"], { signal: noSignal(), owner: "c" }));
    for (let i = 0; i < 20; i++) await Promise.resolve();
    const err = await leases
      .acquire("s", ["ins-00000001"], { signal: noSignal(), owner: "d" })
      .catch((e: unknown) => e);
    expect(isKeygateError(err) && err.reason).toBe("INSTANCE_BUSY");
    expect(isKeygateError(err) && err.kind).toBe("aborted");
    expect(clock.now()).toBe(t0);
    gone.abort();
    for (let i = 0; i < 20 && !w1.done; i++) await new Promise((r) => setImmediate(r));
    expect(w1.done).toBe(true);
    // Another instance is not affected, and the freed slot takes a new waiter.
    const other = watch(leases.acquire("s", ["ins-00000002"], { signal: noSignal(), owner: "e" }));
    const again = watch(leases.acquire("s", ["ins-00000001"], { signal: noSignal(), owner: "f" }));
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    expect(other.done && other.error === undefined).toBe(true);
    expect(again.done).toBe(false);
  });
});
