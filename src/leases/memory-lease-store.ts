import type { Clock } from "../core/clock.js";
import { leaseToken, type LeaseStore, type TryAcquireResult } from "./lease-store.js";

interface Held {
  token: string;
  expiresAt: number;
}

/**
 * Leases in this process only (single-replica `keygate dev`). Same semantics as the Lua
 * scripts, with expiry read from the injected clock so tests can move time by hand.
 */
export function createMemoryLeaseStore(options: { clock: Clock }): LeaseStore {
  const { clock } = options;
  const held = new Map<string, Held>();
  const fences = new Map<string, number>();
  const k = (scope: string, id: string) => `${scope}\u0000${id}`;

  const live = (key: string): Held | undefined => {
    const h = held.get(key);
    if (h && h.expiresAt <= clock.now()) {
      held.delete(key);
      return undefined;
    }
    return h;
  };

  return {
    tryAcquire(scope, instanceIds, owner, ttlMs): Promise<TryAcquireResult> {
      for (const id of instanceIds) {
        const h = live(k(scope, id));
        if (h)
          return Promise.resolve({ ok: false, busyInstanceId: id, heldForMs: h.expiresAt - clock.now() });
      }
      const fence = (fences.get(scope) ?? 0) + 1;
      fences.set(scope, fence);
      const token = leaseToken(fence, owner);
      for (const id of instanceIds) held.set(k(scope, id), { token, expiresAt: clock.now() + ttlMs });
      return Promise.resolve({ ok: true, fence });
    },
    renew(scope, instanceIds, token, ttlMs) {
      const mine = instanceIds.every((id) => live(k(scope, id))?.token === token);
      if (mine)
        for (const id of instanceIds) held.set(k(scope, id), { token, expiresAt: clock.now() + ttlMs });
      return Promise.resolve(mine);
    },
    release(scope, instanceIds, token) {
      for (const id of instanceIds) if (live(k(scope, id))?.token === token) held.delete(k(scope, id));
      return Promise.resolve();
    },
  };
}
