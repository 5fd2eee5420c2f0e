/**
 * Sliding-window-log arithmetic shared by the in-memory store and (mirrored in Lua) the
 * Redis store. A token bucket of capacity 10 refilled at 10/s lets ~19 requests into one
 * sliding second; a log of the last `limit` grant times cannot: a grant is given only when
 * fewer than `limit` grants lie in the last `spanMs`, so no window of `spanMs` ever holds
 * more than `limit`.
 */

/**
 * The outcome of one decision. Granted: the slot `at` is booked (recorded in the log) and the
 * request may be sent from `delayMs` after the decision (0 = now); `remaining` = further grants
 * still free at that slot. Refused: nothing recorded, ask again in `waitMs`.
 */
export type WindowDecision =
  { granted: true; at: number; delayMs: number; remaining: number } | { granted: false; waitMs: number };

/**
 * The span a grant occupies: the upstream's window plus a safety margin that absorbs the
 * jitter between our grant time and the upstream's arrival time (send delay + network).
 */
export function spanOf(windowMs: number, marginMs: number): number {
  return windowMs + marginMs;
}

/**
 * Books the next free slot, given the previous slots `log` (newest first, at most `limit`
 * entries are looked at; the newest may lie in the future, booked ahead):
 *
 *     slot = max(now, newest, log[limit - 1] + span, holdUntil)
 *
 * granted when `slot - now <= horizonMs` (the caller sends at the slot), else refused with
 * `waitMs = slot - now - horizonMs` (ask again then, and the slot is still within reach).
 * Slots never go backwards and any `limit + 1` consecutive slots lie at least `span` apart, so
 * no half-open window of `span` ever holds more than `limit`, whatever the horizon.
 *
 * A booking is at most `horizonMs` ahead of the clock that made it, so a newest slot further
 * ahead than that means the clock ran backwards: `now` then stands still at `newest - horizonMs`
 * (never ahead of the true time), which keeps the spacing conservative. With `horizonMs = 0` this
 * is the plain sliding-window log: grant now if fewer than `limit` grants lie in the last span.
 * `gapMs` (default 0) spaces slots that wait for the window at least that far apart.
 */
export function decide(
  log: readonly number[],
  now: number,
  limit: number,
  spanMs: number,
  horizonMs = 0,
  holdUntil = 0,
  gapMs = 0,
): WindowDecision {
  const newest = log[0];
  const base = newest !== undefined && newest - horizonMs > now ? newest - horizonMs : now;
  let slot = Math.max(base, newest ?? base, holdUntil);
  const oldest = log.length >= limit ? log[limit - 1] : undefined;
  if (oldest !== undefined && oldest + spanMs > base) {
    // The window holds the caller back: keep booked slots `gapMs` apart so that replicas do not
    // all wake and send in the same ms (the spread then repeats every round, at no cost in rate).
    slot = Math.max(slot, oldest + spanMs, (newest ?? base) + gapMs);
  }
  const delayMs = slot - base;
  if (delayMs > horizonMs) return { granted: false, waitMs: Math.max(1, delayMs - horizonMs) };
  let inWindow = 0;
  const n = Math.min(log.length, limit);
  for (let i = 0; i < n; i++) {
    if ((log[i] ?? -Infinity) > slot - spanMs) inWindow++;
  }
  return { granted: true, at: slot, delayMs, remaining: Math.max(0, limit - inWindow - 1) };
}

/** Records a grant at `at` into a newest-first log, keeping only what `decide` needs. */
export function record(log: number[], at: number, limit: number): void {
  log.unshift(at);
  if (log.length > limit) log.length = limit;
}

/**
 * Moves the slot `slot` of a newest-first log to `slot + lateMs` (the request booked there left
 * that late) and keeps the log ordered newest first. `decide` then spaces the next slots from
 * the real departure: any `limit + 1` consecutive departures still lie a span apart. A slot no
 * longer in the log (trimmed) is not re-added unless it now ranks among the newest `limit`.
 * Mirrored in shift-window-1.lua.
 */
export function shiftSlot(log: number[], slot: number, lateMs: number, limit: number): void {
  if (lateMs <= 0 || log.length === 0) return;
  const i = log.indexOf(slot);
  if (i >= 0) log.splice(i, 1);
  log.push(slot + lateMs);
  log.sort((a, b) => b - a);
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
