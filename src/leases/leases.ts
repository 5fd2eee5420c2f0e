import { randomUUID } from "node:crypto";
import { every, type Clock } from "../core/clock.js";
import { keygateError } from "../core/errors.js";
import type { CallOptions, LeaseHandle, Leases } from "../core/ports.js";
import { backoffMs, guarded, pause, throwIfAborted } from "../core/call-wait.js";
import { leaseToken, type LeaseStore, type Waiter } from "./lease-store.js";

export interface LeasesOptions {
  store: LeaseStore;
  clock: Clock;
  /**
   * How long a lease lives without renewal: the most a crashed or stalled holder (or a lease SET
   * that Redis ran after its client gave up) blocks its instances. Short, because an acquirer that
   * takes over an expired lease checks with the cloud that the instances are idle before sending
   * (docs/decisions/leases.md). Default 5 s.
   */
  ttlMs?: number;
  /** Renewal period; default 1.5 s, so two renewals can fail before the lease expires. */
  renewEveryMs?: number;
  /** Bounds a wait when the caller gave no deadline, so a waiter never hangs forever. */
  maxWaitMs?: number;
  /** First and largest pause between attempts while an instance is busy. */
  retryMinMs?: number;
  retryMaxMs?: number;
  /** A waiter starts reserving its instances (fairness) after waiting this long. */
  fairAfterMs?: number;
  /**
   * Callers of this replica that may wait for one instance at a time; one more is refused at once
   * with INSTANCE_BUSY. Bounds the store traffic and memory one busy instance can cause. Default 16.
   */
  maxWaitersPerInstance?: number;
  /**
   * With release notices (`LeaseStore.releases`), how often a waiter re-checks anyway in case a
   * notice was lost. Default 2000 ms.
   */
  recheckMs?: number;
  random?: () => number;
}

/** The lease TTL (docs/decisions/leases.md). */
export const DEFAULT_LEASE_TTL_MS = 5_000;

/**
 * Per-instance leases over a `LeaseStore`: all-or-none acquisition with retry until the
 * deadline, background renewal while held, and release that only deletes what is still ours.
 */
export function createLeases(options: LeasesOptions): Leases {
  const { store, clock } = options;
  const ttlMs = options.ttlMs ?? DEFAULT_LEASE_TTL_MS;
  const renewEveryMs = options.renewEveryMs ?? Math.min(1_500, Math.floor(ttlMs / 3));
  const maxWaitMs = options.maxWaitMs ?? 180_000;
  const retryMinMs = options.retryMinMs ?? 10;
  const retryMaxMs = options.retryMaxMs ?? 250;
  const random = options.random ?? Math.random;
  const fairAfterMs = options.fairAfterMs ?? 200;
  const maxWaiters = options.maxWaitersPerInstance ?? 16;
  const recheckMs = options.recheckMs ?? 2_000;
  const feed = store.releases;
  // Outlives the longest pause between two attempts, so a live waiter keeps its reservation.
  const reserveMs = Math.max(4 * retryMaxMs, feed ? 2 * recheckMs : 0, 1_000);
  /** Callers of this replica waiting, per scope + instance. */
  const waiting = new Map<string, number>();
  const waitKey = (scope: string, id: string) => `${scope}\u0000${id}`;
  const live = new Set<{ stop(): void }>();
  let closed = false;

  async function acquire(scope: string, instanceIds: string[], opts: CallOptions & { owner: string }) {
    if (closed) throw keygateError("SHUTTING_DOWN", "this replica is shutting down");
    // Sorted and unique: the same set always maps to the same keys in the same order.
    const ids = [...new Set(instanceIds)].sort();
    const since = clock.now();
    const giveUpAt = Math.min(opts.deadline ?? Infinity, since + maxWaitMs);
    const waiterId = randomUUID();
    // The holder names this acquisition, not just the replica: the token "<fence>:<holder>" must
    // never repeat, even when Redis restarts empty and its fence counter starts again (a task
    // watch from before the restart would otherwise release or renew a new call's lease).
    const holder = `${opts.owner}#${waiterId}`;
    let reserved: Waiter | undefined;
    let counted = false;
    try {
      for (let attempt = 0; ; attempt++) {
        throwIfAborted(opts);
        const waiter = { since, id: waiterId, reserve: clock.now() - since >= fairAfterMs, reserveMs };
        if (waiter.reserve) reserved = waiter;
        const mark = feed?.mark(scope) ?? 0;
        const r = await guarded("acquire leases", () => store.tryAcquire(scope, ids, holder, ttlMs, waiter));
        if (r.ok) return hold(scope, ids, leaseToken(r.fence, holder), r.fence, r.tookOver);
        const left = giveUpAt - clock.now();
        const busy = (why: string) =>
          keygateError(
            "INSTANCE_BUSY",
            `instance ${r.busyInstanceId} is in use by another keygate call${why}`,
            {
              retryAfterMs: r.heldForMs > 0 ? r.heldForMs : undefined,
            },
          );
        if (left <= 0) throw busy("");
        if (!counted) {
          // Bounded waiting: beyond the cap, more waiters only add store traffic and memory.
          if (ids.some((id) => (waiting.get(waitKey(scope, id)) ?? 0) >= maxWaiters)) {
            throw busy(` and ${maxWaiters} calls already wait for it on this replica`);
          }
          for (const id of ids) waiting.set(waitKey(scope, id), (waiting.get(waitKey(scope, id)) ?? 0) + 1);
          counted = true;
        }
        // Never sleep past the holder's expiry or our own deadline; a release notice ends it early.
        const heldFor = r.heldForMs > 0 ? r.heldForMs : Infinity;
        if (feed?.live(scope)) {
          await feed
            .wait(scope, ids, mark, Math.min(recheckMs, heldFor, left), opts.signal)
            .catch(() => throwIfAborted(opts));
        } else {
          const delay = Math.min(backoffMs(attempt, retryMinMs, retryMaxMs, random), heldFor, left);
          await pause(clock, delay, opts.signal);
        }
      }
    } catch (e) {
      // Giving up: free our reservations now rather than when they expire (best effort).
      if (reserved) await store.withdraw(scope, ids, reserved).catch(() => undefined);
      throw e;
    } finally {
      if (counted) {
        for (const id of ids) {
          const n = (waiting.get(waitKey(scope, id)) ?? 1) - 1;
          if (n > 0) waiting.set(waitKey(scope, id), n);
          else waiting.delete(waitKey(scope, id));
        }
      }
    }
  }

  function hold(scope: string, ids: string[], token: string, fence: number, tookOver: boolean): LeaseHandle {
    const lost = new AbortController();
    let confirmedAt = clock.now();
    const renewal = every(clock, renewEveryMs, async () => {
      try {
        if (await store.renew(scope, ids, token, ttlMs)) {
          confirmedAt = clock.now();
          return true;
        }
        if (!renewal.stopped) {
          lost.abort(keygateError("INSTANCE_BUSY", "the lease expired and another call took the instance"));
        }
        return false;
      } catch (e) {
        // Redis unreachable: the lease may still be ours until its TTL has run out.
        if (clock.now() - confirmedAt >= ttlMs) {
          lost.abort(keygateError("STORE_UNAVAILABLE", "the lease could not be renewed", { cause: e }));
          return false;
        }
        return true;
      }
    });
    const entry = { stop: () => void renewal.stop() };
    live.add(entry);

    let released: Promise<void> | undefined;
    return {
      fence,
      lost: lost.signal,
      tookOver,
      release() {
        // Never throws: a lease that could not be deleted runs out by its TTL.
        released ??= (async () => {
          void renewal.stop();
          live.delete(entry);
          await store.release(scope, ids, token).catch(() => undefined);
        })();
        return released;
      },
    };
  }

  return {
    acquire,
    close() {
      // Held leases are not deleted: a call still running keeps its instances until the TTL ends.
      closed = true;
      for (const entry of live) entry.stop();
      live.clear();
      return feed ? feed.close() : Promise.resolve();
    },
  };
}
