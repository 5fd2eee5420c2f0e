/**
 * The one place that decides where shared state lives, for the limiter, the leases and the
 * operations (coalescing + idempotency) alike:
 * - memory: one replica alone (no KEYGATE_REDIS_URL);
 * - Redis: every replica together;
 * - Redis with `local-share` (KEYGATE_ON_STORE_DOWN=local-share): Redis while it answers, this
 *   replica's own memory while it does not (docs/decisions.md, "fail-closed vs local-share").
 * Each part is built from its store here; nothing else picks a backend.
 */
import { type Clock, systemClock } from "./core/clock.js";
import type { Leases, Operations } from "./core/ports.js";
import { createLocalShareOperations } from "./dedup/local-share-operations.js";
import { createMemoryOperationStore } from "./dedup/memory-operation-store.js";
import { createOperations, type OperationsOptions } from "./dedup/operations.js";
import { createRedisOperationStore } from "./dedup/redis-operation-store.js";
import { createLeases, type LeasesOptions } from "./leases/leases.js";
import { createLocalShareLeases } from "./leases/local-share-leases.js";
import { createMemoryLeaseStore } from "./leases/memory-lease-store.js";
import { createRedisLeaseStore } from "./leases/redis-lease-store.js";
import {
  createLimiter,
  DEFAULT_BOOK_AHEAD_MS,
  DEFAULT_SLOT_GAP_MS,
  type Limiter,
  type LimiterOptions,
} from "./limiter/limiter.js";
import { createLocalShareLimiter } from "./limiter/local-share-limiter.js";
import { createMemoryWindowStore } from "./limiter/memory-window-store.js";
import { createRedisWindowStore } from "./limiter/redis-window-store.js";
import type { RedisClient } from "./store/redis.js";

/** Where one part keeps its state. The Redis client stays owned by the caller. */
export type Backend = { kind: "memory" } | { kind: "redis"; client: RedisClient };

export const memoryBackend: Backend = { kind: "memory" };
export const redisBackend = (client: RedisClient): Backend => ({ kind: "redis", client });

export interface LimiterOnOptions extends Omit<LimiterOptions, "store"> {
  /**
   * Default true: a bucket with no history (first use, or a store that lost its data) grants
   * nothing for one span, since grants made just before may still be in the cloud's window.
   */
  coldHoldOff?: boolean;
  /** Redis key prefix; default "keygate". Tests give each run its own. */
  keyPrefix?: string;
  /** Redis only: skip the cold hold-off when the store was provably down for over a span (src/store/epoch.ts). */
  coldHoldOffWaived?: () => Promise<boolean>;
}

/** The limiter on one backend: the same scheduler over an in-memory or a Redis window. */
export function limiterOn(backend: Backend, options: LimiterOnOptions = {}): Limiter {
  const { coldHoldOff, keyPrefix, coldHoldOffWaived, ...rest } = options;
  const hold = coldHoldOff !== undefined ? { coldHoldOff } : {};
  if (backend.kind === "memory") {
    const clock = rest.clock ?? systemClock;
    const horizonMs = rest.bookAheadMs ?? DEFAULT_BOOK_AHEAD_MS;
    return createLimiter({ ...rest, clock, store: createMemoryWindowStore({ clock, horizonMs, ...hold }) });
  }
  const prefix = keyPrefix !== undefined ? { keyPrefix } : {};
  return createLimiter({
    ...rest,
    // Several processes book slots in one window: keep them a little apart (docs/decisions/limiter.md).
    slotGapMs: rest.slotGapMs ?? DEFAULT_SLOT_GAP_MS,
    store: createRedisWindowStore({
      client: backend.client,
      ...prefix,
      ...hold,
      ...(coldHoldOffWaived ? { coldHoldOffWaived } : {}),
    }),
  });
}

/** Per-instance leases on one backend. */
export function leasesOn(backend: Backend, options: Omit<LeasesOptions, "store">): Leases {
  const store =
    backend.kind === "memory"
      ? createMemoryLeaseStore({ clock: options.clock })
      : createRedisLeaseStore({ client: backend.client, clock: options.clock });
  return createLeases({ ...options, store });
}

/** Coalescing and idempotency on one backend. */
export function operationsOn(backend: Backend, options: Omit<OperationsOptions, "store">): Operations {
  const store =
    backend.kind === "memory"
      ? createMemoryOperationStore({ clock: options.clock })
      : createRedisOperationStore({ client: backend.client, clock: options.clock });
  return createOperations({ ...options, store });
}

export interface StoreBackendsOptions {
  /** Absent: memory, one replica only. */
  redis?: RedisClient | undefined;
  /** KEYGATE_ON_STORE_DOWN. */
  onStoreDown: "fail-closed" | "local-share";
  /** KEYGATE_REPLICAS: local-share gives each replica limit ÷ replicas. */
  replicas: number;
  clock?: Clock;
  limiter: Omit<LimiterOnOptions, "clock">;
  /** Lease waiting (waiter cap, re-check period); the store is chosen here. */
  leases?: Omit<LeasesOptions, "store" | "clock">;
  /** A part switched between Redis and this replica's memory (local-share only). */
  onModeChange?: (part: "rate limiter" | "leases" | "coalescing/idempotency", mode: string) => void;
}

/** The three shared parts, all on the same backend choice. Closing them stays with the caller (drain order). */
export function createStoreBackends(options: StoreBackendsOptions): {
  limiter: Limiter;
  leases: Leases;
  operations: Operations;
} {
  const clock = options.clock ?? systemClock;
  const limiterOptions = { ...options.limiter, clock };
  const leaseOptions = { ...options.leases, clock };
  const redis = options.redis;
  if (!redis) {
    return {
      limiter: limiterOn(memoryBackend, limiterOptions),
      leases: leasesOn(memoryBackend, leaseOptions),
      operations: operationsOn(memoryBackend, { clock }),
    };
  }
  if (options.onStoreDown === "local-share") return localShare(redis);
  return {
    limiter: limiterOn(redisBackend(redis), limiterOptions),
    leases: leasesOn(redisBackend(redis), leaseOptions),
    operations: operationsOn(redisBackend(redis), { clock }),
  };

  function localShare(client: RedisClient) {
    const shared = redisBackend(client);
    const primaryReady = () => client.status === "ready";
    const report = (part: "rate limiter" | "leases" | "coalescing/idempotency") => (mode: string) =>
      options.onModeChange?.(part, mode);
    return {
      limiter: createLocalShareLimiter({
        primary: limiterOn(shared, limiterOptions),
        createLocal: () => limiterOn(memoryBackend, limiterOptions),
        replicas: options.replicas,
        primaryReady,
        clock,
        ...(options.limiter.marginMs !== undefined ? { marginMs: options.limiter.marginMs } : {}),
        onModeChange: report("rate limiter"),
      }),
      leases: createLocalShareLeases({
        primary: leasesOn(shared, leaseOptions),
        own: leasesOn(memoryBackend, leaseOptions),
        primaryReady,
        clock,
        onModeChange: report("leases"),
      }),
      operations: createLocalShareOperations({
        primary: operationsOn(shared, { clock }),
        own: operationsOn(memoryBackend, { clock }),
        primaryReady,
        clock,
        onModeChange: report("coalescing/idempotency"),
      }),
    };
  }
}
