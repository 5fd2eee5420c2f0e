/**
 * The cloud's per-(credential, action) limit on a sliding window, counted at arrival time.
 * Rejected arrivals are recorded too: the cloud does not document whether they count, and the
 * conservative reading (they do) is the one a client must survive — a client that keeps retrying
 * into a full window keeps it full.
 */
export interface SlidingWindowLimiter {
  /** Records an arrival at `now` and says whether it fits under the limit. */
  admit(key: string, now: number): boolean;
  reset(): void;
}

export function createSlidingWindowLimiter(options: {
  limit: number;
  windowMs: number;
}): SlidingWindowLimiter {
  const { limit, windowMs } = options;
  const arrivals = new Map<string, number[]>();
  return {
    admit(key, now) {
      let times = arrivals.get(key);
      if (!times) {
        times = [];
        arrivals.set(key, times);
      }
      // An arrival exactly windowMs ago is outside the window (t > now - windowMs is inside).
      let drop = 0;
      while (drop < times.length && (times[drop] ?? 0) <= now - windowMs) drop++;
      if (drop > 0) times.splice(0, drop);
      const admitted = times.length < limit;
      times.push(now);
      return admitted;
    },
    reset() {
      arrivals.clear();
    },
  };
}

/**
 * The largest number of `times` that fall in one window of `windowMs`, i.e. pairwise less than
 * `windowMs` apart — the same window the limiter enforces. Benchmarks use it to check G1.
 */
export function maxInSlidingWindow(times: readonly number[], windowMs: number): number {
  const sorted = [...times].sort((a, b) => a - b);
  let best = 0;
  let start = 0;
  for (let end = 0; end < sorted.length; end++) {
    while ((sorted[end] ?? 0) - (sorted[start] ?? 0) >= windowMs) start++;
    best = Math.max(best, end - start + 1);
  }
  return best;
}
