import { systemClock } from "../core/clock.js";
import { createLimiter, type Limiter, type LimiterOptions } from "./limiter.js";
import { createMemoryWindowStore } from "./memory-window-store.js";

/** The limiter for the single-replica mode (no KEYGATE_REDIS_URL): same scheduler, in-memory window. */
export function createMemoryLimiter(options: Omit<LimiterOptions, "store"> = {}): Limiter {
  const clock = options.clock ?? systemClock;
  return createLimiter({ ...options, clock, store: createMemoryWindowStore({ clock }) });
}
