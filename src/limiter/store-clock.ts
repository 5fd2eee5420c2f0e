/**
 * Where the store's clock stands against ours, from recent round trips. A store answer read at
 * store time `storeNow` was decided somewhere within [asked, answered] on the local clock, so
 * `storeNow − answered ≤ offset ≤ storeNow − asked`. One round trip alone gives bounds as wide as
 * itself; the tightest of the recent ones (the largest lower and the smallest upper bound) are as
 * tight as the fastest round trip. A booked slot is then converted to local time with them: the
 * wake-up is never before the slot (`slot − lower`), and lateness is counted from the earliest the
 * slot can be (`slot − upper`), so a slow reply no longer counts as lateness or wastes the slot.
 *
 * A clock step (either way) larger than a round trip makes the new bounds contradict the old ones
 * (lower > upper): the old samples are dropped at once, on the very answer that books the slot.
 * Samples older than `keepMs` are dropped too (clock drift). docs/decisions/limiter.md.
 */
export interface OffsetBounds {
  /** storeTime − localTime is at least this … */
  lower: number;
  /** … and at most this. */
  upper: number;
}

export interface StoreClock {
  /** Adds one round trip's bounds and answers the tightest bounds known now. */
  observe(asked: number, answered: number, storeNow: number): OffsetBounds;
}

export function createStoreClock(options: { keepMs?: number; maxSamples?: number } = {}): StoreClock {
  const keepMs = options.keepMs ?? 10_000;
  const maxSamples = Math.max(1, options.maxSamples ?? 64);
  let samples: { at: number; lower: number; upper: number }[] = [];

  return {
    observe(asked, answered, storeNow) {
      const fresh = { at: answered, lower: storeNow - answered, upper: storeNow - asked };
      samples = samples.filter((s) => s.at <= answered && answered - s.at <= keepMs);
      samples.push(fresh);
      if (samples.length > maxSamples) samples.shift();
      let lower = -Infinity;
      let upper = Infinity;
      for (const s of samples) {
        lower = Math.max(lower, s.lower);
        upper = Math.min(upper, s.upper);
      }
      if (lower > upper) {
        // The local clock stepped: only this answer's own bounds are known to hold.
        samples = [fresh];
        return { lower: fresh.lower, upper: fresh.upper };
      }
      return { lower, upper };
    },
  };
}
