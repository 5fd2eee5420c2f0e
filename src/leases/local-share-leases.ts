import type { CallOptions, LeaseHandle, Leases } from "../core/ports.js";
import {
  createLocalShareMode,
  isStoreDown,
  type LocalShareParts,
  type StoreMode,
} from "../store/local-share-mode.js";

export type { StoreMode };

export type LocalShareLeasesOptions = LocalShareParts<Leases>;

export interface LocalShareLeases extends Leases {
  mode(): StoreMode;
}

/**
 * `KEYGATE_ON_STORE_DOWN=local-share` for leases. Every acquisition first takes the instances in
 * this replica's own leases, then (while the shared store works) in the shared ones too:
 * - calls on the same replica never overlap, whatever the store does, including across the
 *   switches (a lease taken during an outage still guards its instances after Redis is back);
 * - while the primary fails with STORE_UNAVAILABLE (or is not ready) the local lease alone is
 *   used: replicas no longer see each other's leases — the documented price of local-share;
 * - a shared lease that cannot be renewed because the store went away is not reported as lost:
 *   its local lease still holds the instances on this replica.
 * A handle releases exactly what it acquired, in whichever store.
 */
export function createLocalShareLeases(options: LocalShareLeasesOptions): LocalShareLeases {
  const { primary, own } = options;
  const storeMode = createLocalShareMode(options);
  const { goLocal, tryPrimary } = storeMode;

  async function acquire(
    scope: string,
    instanceIds: string[],
    opts: CallOptions & { owner: string },
  ): Promise<LeaseHandle> {
    const local = await own.acquire(scope, instanceIds, opts);
    if (!tryPrimary()) return combine(local, undefined);
    try {
      const shared = await primary.acquire(scope, instanceIds, opts);
      storeMode.recovered();
      return combine(local, shared);
    } catch (e) {
      if (isStoreDown(e)) {
        goLocal();
        return combine(local, undefined);
      }
      await local.release();
      throw e;
    }
  }

  function combine(local: LeaseHandle, shared: LeaseHandle | undefined): LeaseHandle {
    const lost = new AbortController();
    const onLocalLost = () => lost.abort(local.lost.reason);
    const onSharedLost = () => {
      // Unreachable store: the local lease keeps guarding this replica. Anything else (another
      // call took the instance in the shared store) is a real loss.
      if (isStoreDown(shared?.lost.reason)) goLocal();
      else lost.abort(shared?.lost.reason);
    };
    if (local.lost.aborted) onLocalLost();
    else local.lost.addEventListener("abort", onLocalLost, { once: true });
    if (shared?.lost.aborted) onSharedLost();
    else shared?.lost.addEventListener("abort", onSharedLost, { once: true });

    let released: Promise<void> | undefined;
    return {
      fence: shared?.fence ?? local.fence,
      lost: lost.signal,
      tookOver: local.tookOver === true || shared?.tookOver === true,
      release() {
        released ??= (async () => {
          local.lost.removeEventListener("abort", onLocalLost);
          shared?.lost.removeEventListener("abort", onSharedLost);
          // Shared first: the local lease keeps this replica's next caller out until both are gone.
          await shared?.release().catch(() => undefined);
          await local.release().catch(() => undefined);
        })();
        return released;
      },
    };
  }

  return {
    acquire,
    mode: storeMode.mode,
    async close() {
      await Promise.all([primary.close(), own.close()]);
    },
  };
}
