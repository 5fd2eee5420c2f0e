/** The limiter's public surface, for the wiring file and observability. */
export { createLimiter } from "./limiter.js";
export type { Limiter, LimiterGrant, LimiterHooks, LimiterOptions, RejectReason } from "./limiter.js";
export { createMemoryLimiter, type MemoryLimiterOptions } from "./memory-limiter.js";
export { createRedisLimiter, type RedisLimiterOptions } from "./redis-limiter.js";
export type { WindowStore, StoreDecision } from "./window-store.js";
