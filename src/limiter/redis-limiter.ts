import type { RedisClient } from "../store/redis.js";
import { createLimiter, DEFAULT_SLOT_GAP_MS, type Limiter, type LimiterOptions } from "./limiter.js";
import { createRedisWindowStore } from "./redis-window-store.js";

export interface RedisLimiterOptions extends Omit<LimiterOptions, "store"> {
  /** Shared by all replicas; owned by the caller (not closed by `close()`). */
  client: RedisClient;
  /** Default "keygate"; tests give each run its own. */
  keyPrefix?: string;
  /** See `createRedisWindowStore`; default true. */
  coldHoldOff?: boolean;
}

/** The cluster-wide limiter: every replica's grants go through one atomic Lua script in Redis. */
export function createRedisLimiter(options: RedisLimiterOptions): Limiter {
  const { client, keyPrefix, coldHoldOff, ...rest } = options;
  return createLimiter({
    ...rest,
    slotGapMs: rest.slotGapMs ?? DEFAULT_SLOT_GAP_MS,
    store: createRedisWindowStore({
      client,
      ...(keyPrefix !== undefined ? { keyPrefix } : {}),
      ...(coldHoldOff !== undefined ? { coldHoldOff } : {}),
    }),
  });
}
