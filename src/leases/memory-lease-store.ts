import type { Clock } from "../core/clock.js";
import { createReleaseFeed } from "./release-feed.js";
import {
  EXPIRED_LEASE_MEMORY_MS,
  leaseToken,
  olderTicket,
  ticketOf,
  type LeaseStore,
  type TryAcquireResult,
} from "./lease-store.js";

interface Held {
  token: string;
  expiresAt: number;
}

/** A lease, remembered until `forgetAt` (after `expiresAt`) unless released. */
interface Lease extends Held {
  forgetAt: number;
}

/**
 * Leases in this process only (single-replica `keygate dev`). Same semantics as the Lua
 * scripts, with expiry read from the injected clock so tests can move time by hand.
 */
export function createMemoryLeaseStore(options: { clock: Clock; expiredMemoryMs?: number }): LeaseStore {
  const { clock } = options;
  const keepMs = options.expiredMemoryMs ?? EXPIRED_LEASE_MEMORY_MS;
  const held = new Map<string, Lease>();
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
  /** The lease on `key` while it has not expired. */
  const live = (key: string): Lease | undefined => {
    const h = held.get(key);
    if (h && h.forgetAt <= clock.now()) held.delete(key);
    return h && h.expiresAt > clock.now() ? h : undefined;
  };
  /** Expired but remembered: its holder vanished without releasing it. */
  const abandoned = (key: string) => {
    const h = held.get(key);
    return h !== undefined && h.expiresAt <= clock.now() && h.forgetAt > clock.now();
  };

  const remembered = (key: string): Lease | undefined => {
    const h = held.get(key);
    if (h && h.forgetAt <= clock.now()) {
      held.delete(key);
      return undefined;
    }
    return h;
  };
  const lease = (token: string, ttlMs: number): Lease => ({
    token,
    expiresAt: clock.now() + ttlMs,
    forgetAt: clock.now() + ttlMs + keepMs,
  });

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
      const tookOver = instanceIds.some((id) => abandoned(k(scope, id)));
      for (const id of instanceIds) {
        held.set(k(scope, id), lease(token, ttlMs));
        if (liveIn(reserved, k(scope, id))?.token === me) reserved.delete(k(scope, id));
      }
      return Promise.resolve({ ok: true, fence, tookOver });
    },
    withdraw(scope, instanceIds, waiter) {
      const me = ticketOf(waiter);
      const freed = instanceIds.filter((id) => liveIn(reserved, k(scope, id))?.token === me);
      for (const id of freed) reserved.delete(k(scope, id));
      if (freed.length > 0) releases.notify(scope, freed);
      return Promise.resolve();
    },
    renew(scope, instanceIds, token, ttlMs) {
      // Expired but not taken over is still ours, as in the Lua script.
      const mine = instanceIds.every((id) => remembered(k(scope, id))?.token === token);
      if (mine) for (const id of instanceIds) held.set(k(scope, id), lease(token, ttlMs));
      return Promise.resolve(mine);
    },
    release(scope, instanceIds, token) {
      const freed = instanceIds.filter((id) => remembered(k(scope, id))?.token === token);
      for (const id of freed) held.delete(k(scope, id));
      if (freed.length > 0) releases.notify(scope, freed);
      return Promise.resolve();
    },
  };
}
