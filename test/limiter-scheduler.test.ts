import { setMaxListeners } from "node:events";
import { describe, expect, it } from "vitest";
import { FakeClock } from "./support/fake-clock.js";
import { isKeygateError, type KeygateError } from "../src/core/errors.js";
import type { BucketSpec } from "../src/core/ports.js";
import { createLimiter, type LimiterGrant, type LimiterOptions } from "../src/limiter/limiter.js";
import { createMemoryWindowStore } from "../src/limiter/memory-window-store.js";
import type { WindowStore } from "../src/limiter/window-store.js";
import { maxInAnyWindow } from "../src/limiter/window.js";

const bucket: BucketSpec = {
  key: "cred-a/cvm.tencentcloudapi.com/AssociateInstancesKeyPairs",
  limit: 10,
  windowMs: 1000,
};
const never = new AbortController().signal;
// One signal shared by every waiter of a test (each request has its own in keygate).
setMaxListeners(0, never);

type Outcome = { ok: true; grant: LimiterGrant; at: number } | { ok: false; error: KeygateError; at: number };

/** Records how a promise settles (and when, on the fake clock) without awaiting it. */
function watch(clock: FakeClock, p: Promise<LimiterGrant>): { outcome?: Outcome } {
  const box: { outcome?: Outcome } = {};
  p.then(
    (grant) => (box.outcome = { ok: true, grant, at: clock.now() }),
    (error: unknown) => {
      if (!isKeygateError(error)) throw error;
      box.outcome = { ok: false, error, at: clock.now() };
    },
  );
  return box;
}

const tick = () => new Promise((r) => setImmediate(r));

function setup(extra: Partial<LimiterOptions> = {}) {
  const clock = new FakeClock();
  const store = extra.store ?? createMemoryWindowStore({ clock, coldHoldOff: false });
  const limiter = createLimiter({ clock, store, jitterMs: 0, maxWaitMs: 1e9, ...extra });
  return { clock, limiter };
}

describe("limiter scheduler (fake clock, memory store)", () => {
  it("grants the first `limit` at once, then spaces the rest so no window holds more", async () => {
    const { clock, limiter } = setup();
    const boxes = Array.from({ length: 45 }, () =>
      watch(clock, limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never })),
    );
    await tick();
    expect(boxes.filter((b) => b.outcome?.ok).length).toBe(10);
    await clock.advance(5000);
    const times = boxes.map((b) => b.outcome?.at ?? NaN);
    expect(boxes.every((b) => b.outcome?.ok)).toBe(true);
    expect(maxInAnyWindow(times, 1040)).toBe(10);
    expect(limiter.queueDepth()).toBe(0);
  });

  it("shares grants by weight: a flooding tenant does not starve the others", async () => {
    const { clock, limiter } = setup();
    const order: string[] = [];
    const push = (tenant: string, weight: number) =>
      limiter.acquire({ bucket, tenant, weight, signal: never }).then(() => order.push(tenant));
    const all: Promise<unknown>[] = [];
    for (let i = 0; i < 100; i++) all.push(push("flood", 1));
    for (let i = 0; i < 30; i++) all.push(push("light", 1));
    for (let i = 0; i < 60; i++) all.push(push("heavy", 3));
    await tick();
    await clock.advance(30_000);
    await Promise.all(all);
    // The first 10 were granted before the others queued; judge the next 50.
    const next = order.slice(10, 60);
    const count = (t: string) => next.filter((x) => x === t).length;
    expect(count("light")).toBeGreaterThanOrEqual(8);
    expect(count("heavy")).toBeGreaterThanOrEqual(25);
    expect(count("heavy")).toBeGreaterThan(2 * count("flood"));
  });

  it("refuses at once, spending no token, when the turn cannot come before the deadline", async () => {
    const { clock, limiter } = setup();
    const boxes = Array.from({ length: 15 }, () =>
      watch(clock, limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never })),
    );
    await tick();
    const before = clock.now();
    const late = watch(
      clock,
      limiter.acquire({ bucket, tenant: "u", weight: 1, signal: never, deadline: clock.now() + 200 }),
    );
    await tick();
    expect(late.outcome).toMatchObject({ ok: false, at: before });
    const e = late.outcome && !late.outcome.ok ? late.outcome.error : undefined;
    expect(e?.reason).toBe("RATE_LIMITED");
    expect(e?.retryAfterMs).toBeGreaterThan(200);
    expect(limiter.queueDepth(bucket.key)).toBe(5);
    await clock.advance(1040);
    expect(boxes.filter((b) => b.outcome?.ok).length).toBe(15);
  });

  it("refuses at once when the queue bound is reached", async () => {
    const { clock, limiter } = setup({ maxQueue: 3 });
    for (let i = 0; i < 3; i++)
      watch(clock, limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never }));
    await tick();
    const queued = [1, 2, 3].map(() =>
      watch(clock, limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never })),
    );
    const extra = watch(clock, limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never }));
    await tick();
    expect(queued.every((b) => b.outcome?.ok)).toBe(true);
    expect(extra.outcome?.ok).toBe(false);
    expect(extra.outcome && !extra.outcome.ok && extra.outcome.error.retryAfterMs).toBeGreaterThan(0);
    await limiter.close();
  });

  it("fails a waiter whose deadline passes with RATE_LIMITED and removes it", async () => {
    const clock = new FakeClock();
    const store = createMemoryWindowStore({ clock, coldHoldOff: false });
    const limiter = createLimiter({ clock, store, jitterMs: 0, maxWaitMs: 2000 });
    const otherReplica = createLimiter({ clock, store, jitterMs: 0 });
    for (let i = 0; i < 10; i++)
      watch(clock, limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never }));
    await tick();
    const w = watch(clock, limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never }));
    await otherReplica.penalize(bucket, 5000); // this replica learns of it only from the store
    await tick();
    await clock.advance(1999);
    expect(w.outcome).toBeUndefined();
    await clock.advance(1);
    expect(w.outcome && !w.outcome.ok && w.outcome.error.reason).toBe("RATE_LIMITED");
    expect(limiter.queueDepth()).toBe(0);
  });

  it("an aborted waiter leaves the queue at once and its turn goes to the next", async () => {
    const { clock, limiter } = setup();
    for (let i = 0; i < 10; i++)
      watch(clock, limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never }));
    await tick();
    const ac = new AbortController();
    const a = watch(clock, limiter.acquire({ bucket, tenant: "t", weight: 1, signal: ac.signal }));
    const b = watch(clock, limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never }));
    await tick();
    expect(limiter.queueDepth()).toBe(2);
    ac.abort();
    await tick();
    expect(a.outcome && !a.outcome.ok && a.outcome.error.reason).toBe("CANCELLED");
    expect(limiter.queueDepth()).toBe(1);
    await clock.advance(1040);
    expect(b.outcome?.ok).toBe(true);
    expect(limiter.queueDepth()).toBe(0);
  });

  it("a penalty holds every grant off until it ends, then the full rate comes back", async () => {
    const { clock, limiter } = setup();
    const start = clock.now();
    await limiter.penalize(bucket, 3000);
    const boxes = Array.from({ length: 10 }, () =>
      watch(clock, limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never })),
    );
    await tick();
    await clock.advance(2999);
    expect(boxes.some((b) => b.outcome)).toBe(false);
    await clock.advance(1);
    expect(boxes.every((b) => b.outcome?.ok && b.outcome.at === start + 3000)).toBe(true);
  });

  it("a store that cannot be reached fails waiters with STORE_UNAVAILABLE, and recovers by itself", async () => {
    const clock = new FakeClock();
    const inner = createMemoryWindowStore({ clock, coldHoldOff: false });
    let down = true;
    const store: WindowStore = {
      tryAcquire: (b, s) => (down ? Promise.reject(new Error("connection refused")) : inner.tryAcquire(b, s)),
      penalize: (b, ms) => inner.penalize(b, ms),
    };
    const errors: unknown[] = [];
    const limiter = createLimiter({ clock, store, hooks: { onStoreError: (_b, e) => errors.push(e) } });
    const boxes = Array.from({ length: 3 }, () =>
      watch(clock, limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never })),
    );
    await tick();
    expect(boxes.map((b) => b.outcome && !b.outcome.ok && b.outcome.error.reason)).toEqual([
      "STORE_UNAVAILABLE",
      "STORE_UNAVAILABLE",
      "STORE_UNAVAILABLE",
    ]);
    expect(errors.length).toBeGreaterThan(0);
    down = false;
    const ok = watch(clock, limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never }));
    await tick();
    expect(ok.outcome?.ok).toBe(true);
  });

  it("does not hand out a grant whose answer came back later than sendWithinMs", async () => {
    const clock = new FakeClock();
    const inner = createMemoryWindowStore({ clock, coldHoldOff: false });
    let slow = true;
    const wasted: string[] = [];
    const store: WindowStore = {
      async tryAcquire(b, s) {
        const d = await inner.tryAcquire(b, s);
        if (slow) {
          slow = false;
          await clock.sleep(30);
        }
        return d;
      },
      penalize: (b, ms) => inner.penalize(b, ms),
    };
    const limiter = createLimiter({
      clock,
      store,
      sendWithinMs: 15,
      hooks: { onWastedGrant: (_b, why) => wasted.push(why) },
    });
    const box = watch(clock, limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never }));
    await tick();
    await clock.advance(30);
    expect(wasted).toEqual(["late"]);
    expect(box.outcome?.ok).toBe(true);
    const g = box.outcome?.ok ? box.outcome.grant : undefined;
    expect(g?.sendBy).toBe(clock.now() + 15);
  });

  it("close() fails every waiter with SHUTTING_DOWN and refuses new callers", async () => {
    const { clock, limiter } = setup();
    const boxes = Array.from({ length: 12 }, () =>
      watch(clock, limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never })),
    );
    await tick();
    await limiter.close();
    await tick();
    expect(
      boxes.filter((b) => b.outcome && !b.outcome.ok && b.outcome.error.reason === "SHUTTING_DOWN").length,
    ).toBe(2);
    await expect(limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never })).rejects.toMatchObject({
      reason: "SHUTTING_DOWN",
    });
  });

  it("closeBucket answers that bucket's waiters SHUTTING_DOWN and refuses it from then on, while other buckets keep granting", async () => {
    const { clock, limiter } = setup();
    const describeBucket: BucketSpec = { ...bucket, key: "cred-a/cvm.tencentcloudapi.com/DescribeInstances" };
    const queued = Array.from({ length: 15 }, () =>
      watch(clock, limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never })),
    );
    await tick();
    expect(queued.filter((b) => b.outcome?.ok).length).toBe(10);
    limiter.closeBucket(bucket.key);
    await tick();
    const refused = queued.filter((b) => b.outcome && !b.outcome.ok);
    expect(refused).toHaveLength(5);
    for (const r of refused) expect(r.outcome?.ok === false && r.outcome.error.reason).toBe("SHUTTING_DOWN");
    await expect(limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never })).rejects.toMatchObject({
      reason: "SHUTTING_DOWN",
    });
    // The other bucket still works, and keeps its spacing.
    const other = Array.from({ length: 12 }, () =>
      watch(clock, limiter.acquire({ bucket: describeBucket, tenant: "t", weight: 1, signal: never })),
    );
    await tick();
    await clock.advance(3000);
    expect(other.every((b) => b.outcome?.ok)).toBe(true);
    await limiter.close();
  });
});
