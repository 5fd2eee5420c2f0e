import type { ReleaseFeed } from "./release-feed.js";

/**
 * The storage primitives behind `Leases`. Redis and the in-memory store implement exactly these
 * atomic steps; waiting, renewal and errors live once in `leases.ts`, so both behave alike.
 */
export interface LeaseStore {
  /** Notices of released leases and withdrawn reservations; without it, waiters poll. */
  readonly releases?: ReleaseFeed;
  /**
   * All or none: when no id of `instanceIds` is held (nor reserved by an older waiter), takes
   * every one with a fresh fence and value `leaseToken(fence, owner)`, and says whether any of them
   * was an expired lease rather than a released (or never held) one; otherwise takes nothing,
   * reserves the ids when `waiter.reserve` (see `Waiter`), and says which id is busy and for how
   * long it is still held (ms, -1 when unknown).
   */
  tryAcquire(
    scope: string,
    instanceIds: string[],
    owner: string,
    ttlMs: number,
    waiter: Waiter,
  ): Promise<TryAcquireResult>;
  /** Drops the waiter's reservations (it gave up waiting). */
  withdraw(scope: string, instanceIds: string[], waiter: Waiter): Promise<void>;
  /** Extends every lease to `ttlMs` when ALL still carry `token`; false (nothing extended) otherwise. */
  renew(scope: string, instanceIds: string[], token: string, ttlMs: number): Promise<boolean>;
  /** Deletes the leases that still carry `token`; leaves anyone else's alone. */
  release(scope: string, instanceIds: string[], token: string): Promise<void>;
}

/**
 * Fairness between overlapping waiters: a waiter that has waited a while reserves the
 * instances it wants; a reservation blocks every younger acquirer (even on a free instance)
 * and is taken over by an older one. The oldest waiter thus wins all of its instances, so a
 * large request is not starved by a stream of small ones, and no two waiters block each other
 * for longer than a reservation lives (it is refreshed on every attempt and expires on its own).
 */
export interface Waiter {
  /** When the waiter started (ms); ties broken by `id`. */
  since: number;
  id: string;
  reserve: boolean;
  reserveMs: number;
}

/** Is ticket `a` older than `b`? Tickets are `<since>:<id>`. */
export function olderTicket(a: string, b: string): boolean {
  const [sa = 0, ia = ""] = splitTicket(a);
  const [sb = 0, ib = ""] = splitTicket(b);
  return sa < sb || (sa === sb && ia < ib);
}

export function ticketOf(w: Waiter): string {
  return `${w.since}:${w.id}`;
}

function splitTicket(t: string): [number, string] {
  const i = t.indexOf(":");
  return [Number(t.slice(0, i)), t.slice(i + 1)];
}

export type TryAcquireResult =
  { ok: true; fence: number; tookOver: boolean } | { ok: false; busyInstanceId: string; heldForMs: number };

/**
 * How long a store remembers a lease after it expired (unless it is released), so that the next
 * acquirer knows it takes over an abandoned lease (`tookOver`) whose cloud task may still run.
 * Longer than a task watch lasts (KEYGATE_TASK_MAX_WAIT_MS, 120 s by default).
 */
export const EXPIRED_LEASE_MEMORY_MS = 180_000;

/** The value stored in each lease key: unique per acquisition because the fence is. */
export function leaseToken(fence: number, owner: string): string {
  return `${fence}:${owner}`;
}

/** `keygate:{scope}:lease:<id>` — the hash tag keeps one account's leases in one Cluster slot. */
export function leaseKey(scope: string, instanceId: string): string {
  return `keygate:{${scope}}:lease:${instanceId}`;
}

/** A waiter's reservation of an instance (fairness), in the same slot as the lease. */
export function reservationKey(scope: string, instanceId: string): string {
  return `keygate:{${scope}}:lease-queue:${instanceId}`;
}

/** The per-scope fencing counter, in the same slot as the scope's leases. */
export function fenceKey(scope: string): string {
  return `keygate:{${scope}}:lease-fence`;
}
