/**
 * Sliding-window-log arithmetic shared by the in-memory store and (mirrored in Lua) the
 * Redis store. A token bucket of capacity 10 refilled at 10/s lets ~19 requests into one
 * sliding second; a log of the last `limit` grant times cannot: a grant is given only when
 * fewer than `limit` grants lie in the last `spanMs`, so no window of `spanMs` ever holds
 * more than `limit`.
 */

/** The outcome of one decision. `remaining` = further grants still free right now. */
export type WindowDecision =
  { granted: true; at: number; remaining: number } | { granted: false; waitMs: number };

/**
 * The span a grant occupies: the upstream's window plus a safety margin that absorbs the
 * jitter between our grant time and the upstream's arrival time (send delay + network).
 */
export function spanOf(windowMs: number, marginMs: number): number {
  return windowMs + marginMs;
}

/**
 * Decides whether a grant may be given at `now`, given the previous grant times `log`
 * (newest first, at most `limit` entries are looked at). A clock that ran backwards is
 * treated as standing still at the newest grant, so grants stay monotonic.
 */
export function decide(log: readonly number[], now: number, limit: number, spanMs: number): WindowDecision {
  const newest = log[0];
  const at = newest !== undefined && newest > now ? newest : now;
  let inWindow = 0;
  const n = Math.min(log.length, limit);
  for (let i = 0; i < n; i++) {
    if ((log[i] ?? -Infinity) > at - spanMs) inWindow++;
  }
  if (inWindow < limit) return { granted: true, at, remaining: limit - inWindow - 1 };
  // All `limit` newest grants are inside the span: wait until the oldest of them leaves it.
  const oldest = log[limit - 1] ?? at;
  return { granted: false, waitMs: Math.max(1, oldest + spanMs - at) };
}

/** Records a grant at `at` into a newest-first log, keeping only what `decide` needs. */
export function record(log: number[], at: number, limit: number): void {
  log.unshift(at);
  if (log.length > limit) log.length = limit;
}

/** The largest number of times within any half-open window [t, t + windowMs). For tests and benches. */
export function maxInAnyWindow(times: readonly number[], windowMs: number): number {
  const sorted = [...times].sort((a, b) => a - b);
  let best = 0;
  let lo = 0;
  for (let hi = 0; hi < sorted.length; hi++) {
    while ((sorted[hi] ?? 0) - (sorted[lo] ?? 0) >= windowMs) lo++;
    best = Math.max(best, hi - lo + 1);
  }
  return best;
}
