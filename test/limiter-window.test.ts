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
      expect(d).toEqual({ granted: true, at: 1000 + i, remaining: LIMIT - i - 1 });
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

  it("maxInAnyWindow counts half-open windows", () => {
    expect(maxInAnyWindow([0, 999, 1000], 1000)).toBe(2);
    expect(maxInAnyWindow([], 1000)).toBe(0);
  });
});
