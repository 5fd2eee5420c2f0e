import type { Operations } from "../core/ports.js";
import { createMemoryOperationStore } from "./memory-operation-store.js";
import { createOperations, type OperationsOptions } from "./operations.js";

/** Coalescing and idempotency for a single replica (no Redis configured). */
export function createMemoryOperations(options: Omit<OperationsOptions, "store">): Operations {
  return createOperations({ ...options, store: createMemoryOperationStore({ clock: options.clock }) });
}
