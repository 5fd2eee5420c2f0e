/**
 * The margin follows the path (docs/decisions/limiter.md, "Adaptive margin"). Two calls ten
 * apart reach the cloud `span` apart only if their trips take equally long; when one is slower
 * than the other by d, they arrive d closer. The margin in force is therefore the configured
 * floor, or the recent spread of round trips (p99 - p50) when that is wider, capped at `maxMs`.
 * Each 10 ms of margin costs about 1% of the rate (10 calls per 1000 + margin ms).
 */
export interface AdaptiveMargin {
  /** One answered call's round trip (write to answer), ms. */
  observe(roundTripMs: number): void;
  /** The margin in force, ms: never below the floor. */
  current(): number;
}

export interface AdaptiveMarginOptions {
  /** The configured margin (KEYGATE_RATE_MARGIN_MS): never less. */
  floorMs: number;
  /** Round trips remembered (the newest). Default 200 (20 s at the full associate rate). */
  samples?: number;
  /**
   * Fewer observations than this: the floor alone. Default 5, so that a fresh replica (whose
   * warm-up measures a few round trips) follows a jittery path from its first granted calls.
   */
  minSamples?: number;
  /** Never wider than this. Default 300 ms (about 23% of the rate). */
  maxMs?: number;
}

/** The `p`-th percentile (0..100) of ascending `sorted` (nearest rank). */
function percentileOf(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] ?? 0;
}

export function createAdaptiveMargin(options: AdaptiveMarginOptions): AdaptiveMargin {
  const floor = Math.max(0, options.floorMs);
  const size = Math.max(1, Math.floor(options.samples ?? 200));
  const minSamples = Math.max(2, Math.floor(options.minSamples ?? 5));
  const max = Math.max(floor, options.maxMs ?? 300);
  const ring: number[] = [];
  let next = 0;
  let cached: number | undefined = floor;

  return {
    observe(ms: number) {
      if (!Number.isFinite(ms) || ms < 0) return;
      if (ring.length < size) ring.push(ms);
      else ring[next] = ms;
      next = (next + 1) % size;
      cached = undefined;
    },
    current() {
      if (cached !== undefined) return cached;
      if (ring.length < minSamples) {
        cached = floor;
        return cached;
      }
      const sorted = [...ring].sort((a, b) => a - b);
      const spread = percentileOf(sorted, 99) - percentileOf(sorted, 50);
      cached = Math.min(max, Math.max(floor, Math.ceil(spread)));
      return cached;
    },
  };
}
