import type { Operations } from "../core/ports.js";
import type { RedisClient } from "../store/redis.js";
import { createOperations, type OperationsOptions } from "./operations.js";
import { createRedisOperationStore } from "./redis-operation-store.js";

/** Coalescing and idempotency shared by all replicas through Redis. The client stays the caller's. */
export function createRedisOperations(
  options: Omit<OperationsOptions, "store"> & { client: RedisClient },
): Operations {
  return createOperations({
    ...options,
    store: createRedisOperationStore({ client: options.client, clock: options.clock }),
  });
}
