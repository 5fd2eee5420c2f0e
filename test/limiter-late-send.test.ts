/**
 * Nothing leaves late (issue 14): a request that left after its slot moves the shared window by
 * its lateness, so the 10th call after it still keeps the span; and the margin follows the path.
 * Pure logic over a fake clock; the Redis and end-to-end proofs are in test/limit-late-send.test.ts.
 */
import { setMaxListeners } from "node:events";
import { describe, expect, it } from "vitest";
import type { BucketSpec } from "../src/core/ports.js";
import { createLimiter, type LimiterGrant, type LimiterHooks } from "../src/limiter/limiter.js";
import { createAdaptiveMargin } from "../src/limiter/margin.js";
import { createMemoryWindowStore } from "../src/limiter/memory-window-store.js";
import { createStoreClock } from "../src/limiter/store-clock.js";
import { decide, record, shiftSlot } from "../src/limiter/window.js";
import { FakeClock } from "./support/fake-clock.js";

const SPAN = 1040;
const LIMIT = 10;
const bucket: BucketSpec = { key: "cred/cvm/AssociateInstancesKeyPairs", limit: LIMIT, windowMs: 1000 };
const never = new AbortController().signal;
// One signal shared by every waiter of a test (each request has its own in keygate).
setMaxListeners(0, never);

/** Smallest distance between a departure and the 10th after it (the margin left is this - 1000). */
function smallestTenthGap(departures: number[]): number {
  const sorted = [...departures].sort((a, b) => a - b);
  let least = Infinity;
  for (let i = LIMIT; i < sorted.length; i++) least = Math.min(least, sorted[i]! - sorted[i - LIMIT]!);
  return least;
}

/** A saturated window where every 7th request leaves `late` ms after its slot; `shift` reports it. */
function simulate(shift: boolean, late = 60): number[] {
  const log: number[] = [];
  const departures: number[] = [];
  let now = 0;
  for (let n = 0; n < 200; n++) {
    const d = decide(log, now, LIMIT, SPAN);
    if (!d.granted) {
      now += d.waitMs;
      continue;
    }
    record(log, d.at, LIMIT);
    const lateMs = n % 7 === 3 ? late : 0;
    departures.push(d.at + lateMs);
    if (shift) shiftSlot(log, d.at, lateMs, LIMIT);
  }
  return departures;
}

describe("shiftSlot: a late departure moves the window", () => {
  it("keeps every departure a full span before the 10th after it; without the shift the span breaks", () => {
    expect(smallestTenthGap(simulate(true))).toBeGreaterThanOrEqual(SPAN);
    // The same lateness unreported eats 60 ms of the 40 ms margin: a call of the next round lands
    // inside the cloud's 1000 ms.
    expect(smallestTenthGap(simulate(false))).toBeLessThan(1000);
  });

  it("moves the named slot, keeps the log ordered newest first and at most `limit` long", () => {
    const log = [900, 800, 700, 600, 500, 400, 300, 200, 100, 0];
    shiftSlot(log, 500, 350, LIMIT);
    expect(log).toEqual([900, 850, 800, 700, 600, 400, 300, 200, 100, 0]);
    shiftSlot(log, 0, 5, LIMIT);
    expect(log).toEqual([900, 850, 800, 700, 600, 400, 300, 200, 100, 5]);
  });

  it("a slot already trimmed is re-added only if it ranks among the newest; an empty log stays empty", () => {
    const log = [900, 800, 700, 600, 500, 400, 300, 200, 100, 50];
    shiftSlot(log, 10, 20, LIMIT);
    expect(log).toEqual([900, 800, 700, 600, 500, 400, 300, 200, 100, 50]);
    shiftSlot(log, 10, 100, LIMIT);
    expect(log).toEqual([900, 800, 700, 600, 500, 400, 300, 200, 110, 100]);
    const empty: number[] = [];
    shiftSlot(empty, 10, 100, LIMIT);
    expect(empty).toEqual([]);
  });
});

describe("the limiter hears when a grant left", () => {
  async function eleven(report: (first: LimiterGrant) => void) {
    const clock = new FakeClock();
    const late: [string, number][] = [];
    const hooks: LimiterHooks = { onLateSend: (_b, outcome, ms) => late.push([outcome, ms]) };
    const store = createMemoryWindowStore({ clock, coldHoldOff: false });
    const limiter = createLimiter({ clock, store, marginMs: 40, jitterMs: 0, maxWaitMs: 1e9, hooks });
    const got: { grant: LimiterGrant; at: number }[] = [];
    const acquire = () =>
      limiter
        .acquire({ bucket, tenant: "t", weight: 1, signal: never })
        .then((grant) => got.push({ grant, at: clock.now() }));
    const first = acquire();
    await clock.advance(0);
    await first;
    report(got[0]!.grant);
    const rest = Array.from({ length: 10 }, acquire);
    for (let i = 0; i < 40 && got.length < 11; i++) await clock.advance(50);
    await Promise.all(rest);
    await limiter.close();
    return { got, late };
  }

  it("left 30 ms after its slot: the 10th grant after it comes a full span after the departure", async () => {
    const { got, late } = await eleven((g) => g.sent(g.plannedAt + 30));
    expect(late).toEqual([["shifted", 30]]);
    expect(got[10]!.at - (got[0]!.at + 30)).toBeGreaterThanOrEqual(SPAN);
  });

  it("left on time: nothing moves (the 10th after comes one span after the slot)", async () => {
    const { got, late } = await eleven((g) => g.sent(g.plannedAt));
    expect(late).toEqual([]);
    expect(got[10]!.at - got[0]!.at).toBe(SPAN);
  });

  it("not sent: counted as a late send and a wasted grant, reported once", async () => {
    const clock = new FakeClock();
    const seen: string[] = [];
    const limiter = createLimiter({
      clock,
      store: createMemoryWindowStore({ clock, coldHoldOff: false }),
      hooks: {
        onLateSend: (_b, outcome) => seen.push(outcome),
        onWastedGrant: (_b, reason) => seen.push(`wasted:${reason}`),
      },
    });
    const p = limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never });
    await clock.advance(0);
    const g = await p;
    g.notSent(g.sendBy + 5);
    g.sent(g.sendBy + 5);
    expect(seen).toEqual(["not_sent", "wasted:late"]);
    await limiter.close();
  });
});

describe("the margin follows the path", () => {
  it("the floor until enough round trips are seen, and while they are steady", () => {
    const m = createAdaptiveMargin({ floorMs: 40, minSamples: 20 });
    for (let i = 0; i < 19; i++) m.observe(i % 2 === 0 ? 20 : 400);
    expect(m.current()).toBe(40);
    const steady = createAdaptiveMargin({ floorMs: 40 });
    for (let i = 0; i < 200; i++) steady.observe(30 + (i % 10));
    expect(steady.current()).toBe(40);
  });

  it("widens to p99 - p50 when jittery, capped, and narrows again once the path is calm", () => {
    const m = createAdaptiveMargin({ floorMs: 40, samples: 100, maxMs: 300 });
    for (let i = 0; i < 100; i++) m.observe(i % 10 === 0 ? 150 : 30);
    expect(m.current()).toBe(120);
    for (let i = 0; i < 100; i++) m.observe(i % 10 === 0 ? 2_000 : 30);
    expect(m.current()).toBe(300);
    for (let i = 0; i < 100; i++) m.observe(30);
    expect(m.current()).toBe(40);
  });

  it("a wider margin in force spaces the limiter's grants by the wider span", async () => {
    const clock = new FakeClock();
    const margin = createAdaptiveMargin({ floorMs: 40, minSamples: 2 });
    for (let i = 0; i < 100; i++) margin.observe(i % 10 === 0 ? 130 : 30);
    expect(margin.current()).toBe(100);
    const limiter = createLimiter({
      clock,
      store: createMemoryWindowStore({ clock, coldHoldOff: false }),
      marginMs: 40,
      margin,
      jitterMs: 0,
      maxWaitMs: 1e9,
    });
    const at: number[] = [];
    const all = Array.from({ length: 11 }, () =>
      limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never }).then(() => at.push(clock.now())),
    );
    await clock.advance(0); // the first ten go at once, before time moves
    for (let i = 0; i < 40 && at.length < 11; i++) await clock.advance(50);
    await Promise.all(all);
    expect(at[10]! - at[0]!).toBe(1100);
    await limiter.close();
  });
});

describe("the store's clock against ours", () => {
  it("the tightest recent round trips bound the offset; a slow reply does not widen them", () => {
    const c = createStoreClock();
    // True offset +500: the store read its clock 1 ms into a 2 ms round trip.
    expect(c.observe(1_000, 1_002, 1_501)).toEqual({ lower: 499, upper: 501 });
    // A 40 ms round trip alone would allow 460..501; the earlier fast one keeps 499..501.
    expect(c.observe(2_000, 2_040, 2_520)).toEqual({ lower: 499, upper: 501 });
    // A faster one narrows further.
    expect(c.observe(3_000, 3_000, 3_500)).toEqual({ lower: 500, upper: 500 });
  });

  it("a local clock step larger than a round trip drops the old samples at once; old ones expire", () => {
    const c = createStoreClock({ keepMs: 10_000 });
    c.observe(1_000, 1_001, 1_500);
    // Our clock stepped back by 300 ms: the store now reads 800 ahead; the old bounds contradict.
    expect(c.observe(1_200, 1_203, 2_001)).toEqual({ lower: 798, upper: 801 });
    // Samples older than keepMs are forgotten: only the newest round trip's bounds remain.
    expect(c.observe(20_000, 20_010, 20_805)).toEqual({ lower: 795, upper: 805 });
  });
});
