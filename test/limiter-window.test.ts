import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { decide, maxInAnyWindow, record, spanOf } from "../src/limiter/window.js";

const LIMIT = 10;
const SPAN = spanOf(1000, 40);

/** Feeds attempts (ascending times) through the arithmetic; returns the grant times. */
function run(attempts: number[], limit = LIMIT, span = SPAN): number[] {
  const log: number[] = [];
  const grants: number[] = [];
  for (const t of attempts) {
    const d = decide(log, t, limit, span);
    if (d.granted) {
      record(log, d.at, limit);
      grants.push(d.at);
    }
  }
  return grants;
}

describe("sliding-window log arithmetic", () => {
  it("grants `limit` at once, then says how long to wait", () => {
    const log: number[] = [];
    for (let i = 0; i < LIMIT; i++) {
      const d = decide(log, 1000 + i, LIMIT, SPAN);
      expect(d).toEqual({ granted: true, at: 1000 + i, delayMs: 0, remaining: LIMIT - i - 1 });
      record(log, 1000 + i, LIMIT);
    }
    expect(decide(log, 1500, LIMIT, SPAN)).toEqual({ granted: false, waitMs: 1000 + SPAN - 1500 });
    expect(decide(log, 1000 + SPAN, LIMIT, SPAN).granted).toBe(true);
  });

  it("is not a token bucket: 19 requests in one second are impossible", () => {
    const attempts = Array.from({ length: 400 }, (_, i) => i * 5);
    expect(maxInAnyWindow(run(attempts), 1000)).toBe(LIMIT);
  });

  it("treats a clock that runs backwards as standing still", () => {
    const log = [5000];
    const d = decide(log, 4000, LIMIT, SPAN);
    expect(d).toMatchObject({ granted: true, at: 5000 });
  });

  it("property: any grants it produces hold at most `limit` in any span (and any 1000 ms + margin window)", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 200 }), { minLength: 1, maxLength: 300 }),
        fc.integer({ min: 1, max: 20 }),
        fc.integer({ min: 0, max: 100 }),
        (gaps, limit, margin) => {
          let t = 0;
          const attempts = gaps.map((g) => (t += g));
          const span = spanOf(1000, margin);
          const grants = run(attempts, limit, span);
          expect(maxInAnyWindow(grants, span)).toBeLessThanOrEqual(limit);
        },
      ),
      { numRuns: 300 },
    );
  });

  it("property: a grant may arrive up to `margin` late and still no 1000 ms window sees more than `limit`", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 150 }), { minLength: 1, maxLength: 200 }),
        fc.array(fc.integer({ min: 0, max: 39 }), { minLength: 200, maxLength: 200 }),
        (gaps, delays) => {
          let t = 0;
          const grants = run(gaps.map((g) => (t += g)));
          const arrivals = grants.map((g, i) => g + (delays[i] ?? 0));
          expect(maxInAnyWindow(arrivals, 1000)).toBeLessThanOrEqual(LIMIT);
        },
      ),
      { numRuns: 300 },
    );
  });

  it("property: under backlog, a caller that retries after waitMs (plus overhead) keeps rate >= limit/(span+overhead)", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 500, maxLength: 500 }),
        fc.integer({ min: 0, max: 60 }),
        (overheads, margin) => {
          const span = spanOf(1000, margin);
          const log: number[] = [];
          let now = 0;
          let granted = 0;
          const duration = 20_000;
          let i = 0;
          while (now < duration) {
            const d = decide(log, now, LIMIT, span);
            const extra = overheads[i++ % overheads.length] ?? 0;
            if (d.granted) {
              record(log, d.at, LIMIT);
              granted++;
              now += extra / 10; // dispatching one grant costs a little
            } else {
              now += d.waitMs + extra;
            }
          }
          // Each round of `limit` grants costs at most span + ~ (3 + limit*0.3) ms of overhead.
          const perRound = span + 3 + LIMIT * 0.3;
          expect(granted).toBeGreaterThanOrEqual(Math.floor(duration / perRound) * LIMIT);
          expect(granted / (duration / 1000)).toBeGreaterThanOrEqual((LIMIT / (span + 6)) * 1000 * 0.95);
        },
      ),
      { numRuns: 100 },
    );
  });

  it("books the next slot up to the horizon ahead, else says how long until it is within reach", () => {
    const H = 80;
    const log: number[] = [];
    for (let i = 0; i < LIMIT; i++) record(log, 1000, LIMIT);
    // The next slot is 1000 + SPAN; too far ahead at 1500, within the horizon from 1000 + SPAN - H on.
    expect(decide(log, 1500, LIMIT, SPAN, H)).toEqual({ granted: false, waitMs: 1000 + SPAN - H - 1500 });
    const d = decide(log, 1000 + SPAN - H + 5, LIMIT, SPAN, H);
    expect(d).toEqual({ granted: true, at: 1000 + SPAN, delayMs: H - 5, remaining: LIMIT - 1 });
    record(log, 1000 + SPAN, LIMIT);
    // Later bookings of the same round land on the same slot, never before the newest one.
    expect(decide(log, 1000 + SPAN - H + 6, LIMIT, SPAN, H)).toMatchObject({
      granted: true,
      at: 1000 + SPAN,
    });
    // A penalty moves the slot to its end; it is booked once that is within the horizon.
    expect(decide([], 0, LIMIT, SPAN, H, 500)).toEqual({ granted: false, waitMs: 500 - H });
    expect(decide([], 450, LIMIT, SPAN, H, 500)).toMatchObject({ granted: true, at: 500, delayMs: 50 });
    // A clock that ran back further than any booking could reach stands still behind the newest slot.
    expect(decide([5000], 4000, LIMIT, SPAN, H)).toMatchObject({ granted: true, at: 5000, delayMs: H });
  });

  /**
   * Replicas whose dispatchers book through `decide` with a horizon: each asks at its own times,
   * waking `jitter` ms late after a refusal and asking again `rtt` ms after a booking. Returns
   * the booked slots and the times they were booked at.
   */
  function simulate(opts: {
    replicas: number;
    horizon: number;
    span: number;
    durationMs: number;
    jitter: (i: number) => number;
    rtt: (i: number) => number;
    holds?: { at: number; until: number }[];
  }): { slots: number[]; asks: number[] } {
    const log: number[] = [];
    const slots: number[] = [];
    const asks: number[] = [];
    const next = Array.from({ length: opts.replicas }, (_, r) => r);
    let hold = 0;
    let i = 0;
    for (;;) {
      let r = 0;
      for (let k = 1; k < next.length; k++) if ((next[k] ?? 0) < (next[r] ?? 0)) r = k;
      const t = next[r] ?? 0;
      if (t >= opts.durationMs) break;
      for (const h of opts.holds ?? []) if (h.at <= t) hold = Math.max(hold, h.until);
      const d = decide(log, t, LIMIT, opts.span, opts.horizon, hold);
      const n = i++;
      if (d.granted) {
        record(log, d.at, LIMIT);
        slots.push(d.at);
        asks.push(t);
        next[r] = t + opts.rtt(n);
      } else {
        next[r] = t + d.waitMs + opts.jitter(n);
      }
    }
    return { slots, asks };
  }

  const backlog = fc.record({
    replicas: fc.integer({ min: 1, max: 8 }),
    horizon: fc.integer({ min: 0, max: 200 }),
    margin: fc.integer({ min: 0, max: 60 }),
    jitters: fc.array(fc.integer({ min: 0, max: 300 }), { minLength: 50, maxLength: 50 }),
    rtts: fc.array(fc.integer({ min: 0, max: 20 }), { minLength: 50, maxLength: 50 }),
    holds: fc.array(
      fc.record({ at: fc.integer({ min: 0, max: 10_000 }), ms: fc.integer({ min: 1, max: 2000 }) }),
      { maxLength: 3 },
    ),
  });

  it("property: booked slots never put more than `limit` into any span, nor lie before their booking or a penalty", () => {
    fc.assert(
      fc.property(backlog, ({ replicas, horizon, margin, jitters, rtts, holds }) => {
        const span = spanOf(1000, margin);
        const hs = holds.map((h) => ({ at: h.at, until: h.at + h.ms }));
        const { slots, asks } = simulate({
          replicas,
          horizon,
          span,
          durationMs: 10_000,
          jitter: (i) => jitters[i % jitters.length] ?? 0,
          rtt: (i) => rtts[i % rtts.length] ?? 0,
          holds: hs,
        });
        expect(maxInAnyWindow(slots, span)).toBeLessThanOrEqual(LIMIT);
        slots.forEach((slot, i) => {
          const asked = asks[i] ?? 0;
          expect(slot).toBeGreaterThanOrEqual(asked);
          expect(slot).toBeLessThanOrEqual(asked + horizon);
          if (i > 0) expect(slot).toBeGreaterThanOrEqual(slots[i - 1] ?? 0);
          for (const h of hs) if (h.at <= asked) expect(slot).toBeGreaterThanOrEqual(h.until);
        });
      }),
      { numRuns: 200 },
    );
  });

  it("property: booked slots sent up to (margin − 1) ms late never put more than `limit` into 1000 ms", () => {
    fc.assert(
      fc.property(
        backlog,
        fc.array(fc.integer({ min: 0, max: 1000 }), { minLength: 97, maxLength: 97 }),
        ({ replicas, horizon, margin, jitters, rtts }, lates) => {
          const m = Math.max(1, margin);
          const { slots } = simulate({
            replicas,
            horizon,
            span: spanOf(1000, m),
            durationMs: 8_000,
            jitter: (i) => jitters[i % jitters.length] ?? 0,
            rtt: (i) => rtts[i % rtts.length] ?? 0,
          });
          const arrivals = slots.map((s, i) => s + ((lates[i % lates.length] ?? 0) % m));
          expect(maxInAnyWindow(arrivals, 1000)).toBeLessThanOrEqual(LIMIT);
        },
      ),
      { numRuns: 200 },
    );
  });

  it("property: under backlog, wake-up latency within the horizon costs no rate: >= limit/span·(1 − ε)", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 8 }),
        fc.integer({ min: 20, max: 200 }),
        fc.integer({ min: 0, max: 60 }),
        fc.array(fc.nat(), { minLength: 50, maxLength: 50 }),
        fc.array(fc.nat(), { minLength: 50, maxLength: 50 }),
        (replicas, horizon, margin, jitters, rtts) => {
          const span = spanOf(1000, margin);
          const durationMs = 20_000;
          // A dispatcher wakes up to half the horizon late and waits up to half again for Redis.
          const half = Math.floor(horizon / 2);
          const { slots } = simulate({
            replicas,
            horizon,
            span,
            durationMs,
            jitter: (i) => (jitters[i % jitters.length] ?? 0) % (half + 1),
            rtt: (i) => (rtts[i % rtts.length] ?? 0) % (horizon - half),
          });
          const inRun = slots.filter((s) => s < durationMs).length;
          // Rounds of `limit` exactly one span apart: nothing added per round.
          expect(inRun).toBeGreaterThanOrEqual(Math.floor(durationMs / span) * LIMIT);
          const rate = (inRun / durationMs) * 1000;
          expect(rate).toBeGreaterThanOrEqual((LIMIT / span) * 1000 * (1 - 0.06));
        },
      ),
      { numRuns: 200 },
    );
  });

  it("without booking ahead every round pays the wake-up latency; with it none does", () => {
    const run = (horizon: number) => {
      const { slots } = simulate({
        replicas: 3,
        horizon,
        span: SPAN,
        durationMs: 60_000,
        jitter: () => 8,
        rtt: () => 1,
      });
      // Sustained: after the first burst of `limit`.
      return ((slots.length - LIMIT) / ((slots.at(-1) ?? 0) - (slots[0] ?? 0))) * 1000;
    };
    // 10 per (1040 + 8) ms against 10 per 1040 ms.
    expect(run(0)).toBeLessThan(9.55);
    expect(run(80)).toBeGreaterThanOrEqual(9.6);
  });

  it("maxInAnyWindow counts half-open windows", () => {
    expect(maxInAnyWindow([0, 999, 1000], 1000)).toBe(2);
    expect(maxInAnyWindow([], 1000)).toBe(0);
  });
});
