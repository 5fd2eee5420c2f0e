import type { Clock } from "../core/clock.js";
import { createReleaseFeed } from "./release-feed.js";
import { leaseToken, olderTicket, ticketOf, type LeaseStore, type TryAcquireResult } from "./lease-store.js";

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
  /** Fairness reservations; `token` is the waiter's ticket. */
  const reserved = new Map<string, Held>();
  const fences = new Map<string, number>();
  const k = (scope: string, id: string) => `${scope}\u0000${id}`;
  const releases = createReleaseFeed(clock);

  const liveIn = (m: Map<string, Held>, key: string): Held | undefined => {
    const h = m.get(key);
    if (h && h.expiresAt <= clock.now()) {
      m.delete(key);
      return undefined;
    }
    return h;
  };
  const live = (key: string) => liveIn(held, key);

  /** The first id held by anyone, or reserved by a waiter older than ticket `me`. */
  const blockedBy = (scope: string, ids: string[], me: string): [string, Held] | undefined => {
    for (const id of ids) {
      const h = live(k(scope, id));
      if (h) return [id, h];
    }
    for (const id of ids) {
      const r = liveIn(reserved, k(scope, id));
      if (r && r.token !== me && olderTicket(r.token, me)) return [id, r];
    }
    return undefined;
  };

  return {
    releases,
    tryAcquire(scope, instanceIds, owner, ttlMs, waiter): Promise<TryAcquireResult> {
      const me = ticketOf(waiter);
      const blocked = blockedBy(scope, instanceIds, me);
      if (blocked) {
        if (waiter.reserve) {
          for (const id of instanceIds) {
            const r = liveIn(reserved, k(scope, id));
            if (!r || r.token === me || !olderTicket(r.token, me)) {
              reserved.set(k(scope, id), { token: me, expiresAt: clock.now() + waiter.reserveMs });
            }
          }
        }
        const [id, h] = blocked;
        return Promise.resolve({ ok: false, busyInstanceId: id, heldForMs: h.expiresAt - clock.now() });
      }
      const fence = (fences.get(scope) ?? 0) + 1;
      fences.set(scope, fence);
      const token = leaseToken(fence, owner);
      for (const id of instanceIds) {
        held.set(k(scope, id), { token, expiresAt: clock.now() + ttlMs });
        if (liveIn(reserved, k(scope, id))?.token === me) reserved.delete(k(scope, id));
      }
      return Promise.resolve({ ok: true, fence });
    },
    withdraw(scope, instanceIds, waiter) {
      const me = ticketOf(waiter);
      const freed = instanceIds.filter((id) => liveIn(reserved, k(scope, id))?.token === me);
      for (const id of freed) reserved.delete(k(scope, id));
      if (freed.length > 0) releases.notify(scope, freed);
      return Promise.resolve();
    },
    renew(scope, instanceIds, token, ttlMs) {
      const mine = instanceIds.every((id) => live(k(scope, id))?.token === token);
      if (mine)
        for (const id of instanceIds) held.set(k(scope, id), { token, expiresAt: clock.now() + ttlMs });
      return Promise.resolve(mine);
    },
    release(scope, instanceIds, token) {
      const freed = instanceIds.filter((id) => live(k(scope, id))?.token === token);
      for (const id of freed) held.delete(k(scope, id));
      if (freed.length > 0) releases.notify(scope, freed);
      return Promise.resolve();
    },
  };
}
