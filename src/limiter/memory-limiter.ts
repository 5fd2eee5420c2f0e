import { systemClock } from "../core/clock.js";
import { createLimiter, DEFAULT_BOOK_AHEAD_MS, type Limiter, type LimiterOptions } from "./limiter.js";
import { createMemoryWindowStore } from "./memory-window-store.js";

export interface MemoryLimiterOptions extends Omit<LimiterOptions, "store"> {
  /** See `createMemoryWindowStore`; default true. */
  coldHoldOff?: boolean;
}

/** The limiter for the single-replica mode (no KEYGATE_REDIS_URL): same scheduler, in-memory window. */
export function createMemoryLimiter(options: MemoryLimiterOptions = {}): Limiter {
  const { coldHoldOff, ...rest } = options;
  const clock = rest.clock ?? systemClock;
  const store = createMemoryWindowStore({
    clock,
    horizonMs: rest.bookAheadMs ?? DEFAULT_BOOK_AHEAD_MS,
    ...(coldHoldOff !== undefined ? { coldHoldOff } : {}),
  });
  return createLimiter({ ...rest, clock, store });
}
