import { type Clock, systemClock } from "../core/clock.js";
import { isKeygateError } from "../core/errors.js";

/** Which store decides right now: the shared one, or this replica's own memory. */
export type StoreMode = "primary" | "local-share";

/** The error a store gives while Redis is unreachable: the one failure local-share may absorb. */
export const isStoreDown = (e: unknown) => isKeygateError(e) && e.reason === "STORE_UNAVAILABLE";

/** What a local-share wrapper (leases, operations) is built from: the shared part and this replica's own. */
export interface LocalShareParts<T> {
  /** Cluster-wide (Redis). */
  primary: T;
  /** This replica's own (in-memory). */
  own: T;
  /** False while the primary's store is known to be unreachable (e.g. ioredis `status !== "ready"`). */
  primaryReady?: () => boolean;
  clock?: Clock;
  /** After a primary failure, how long to stay local before asking the primary again. Default 500 ms. */
  probeMs?: number;
  onModeChange?: (mode: StoreMode) => void;
}

/**
 * The mode switch shared by the local-share wrappers (leases, operations): go local on a store
 * failure, ask the shared store again after `probeMs`, and tell an observer that must never
 * break a call.
 */
export function createLocalShareMode(options: Omit<LocalShareParts<unknown>, "primary" | "own">) {
  const clock = options.clock ?? systemClock;
  const probeMs = options.probeMs ?? 500;
  const primaryReady = options.primaryReady ?? (() => true);
  let mode: StoreMode = "primary";
  let failedAt = -Infinity;
  const set = (m: StoreMode) => {
    if (mode === m) return;
    mode = m;
    try {
      options.onModeChange?.(m);
    } catch {
      /* an observer must not break the calls */
    }
  };
  const goLocal = () => {
    failedAt = clock.now();
    set("local-share");
  };
  return {
    clock,
    mode: () => mode,
    recovered: () => set("primary"),
    goLocal,
    /** Whether to ask the shared store this time. */
    tryPrimary: (): boolean => {
      if (!primaryReady()) {
        goLocal();
        return false;
      }
      return mode === "primary" || clock.now() - failedAt >= probeMs;
    },
  };
}
