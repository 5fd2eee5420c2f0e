import type { Leases } from "../core/ports.js";
import { createLeases, type LeasesOptions } from "./leases.js";
import { createMemoryLeaseStore } from "./memory-lease-store.js";

/** Leases for a single replica (no Redis configured). */
export function createMemoryLeases(options: Omit<LeasesOptions, "store">): Leases {
  return createLeases({ ...options, store: createMemoryLeaseStore({ clock: options.clock }) });
}
