import type { Leases } from "../core/ports.js";
import type { RedisClient } from "../store/redis.js";
import { createLeases, type LeasesOptions } from "./leases.js";
import { createRedisLeaseStore } from "./redis-lease-store.js";

/** Leases shared by all replicas through Redis. The client stays owned by the caller. */
export function createRedisLeases(options: Omit<LeasesOptions, "store"> & { client: RedisClient }): Leases {
  return createLeases({
    ...options,
    store: createRedisLeaseStore({ client: options.client, clock: options.clock }),
  });
}
