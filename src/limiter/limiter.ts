import { type Clock, systemClock } from "../core/clock.js";
import { keygateError, type KeygateError } from "../core/errors.js";
import type { AcquireRequest, BucketSpec, Grant, RateLimiter } from "../core/ports.js";
import { createFairQueue, type FairEntry, type FairQueue } from "./fair-queue.js";
import { createStoreClock } from "./store-clock.js";
import { spanOf } from "./window.js";
import type { WindowStore } from "./window-store.js";

/** Why a caller got no grant (for metrics). */
export type RejectReason = "queue_full" | "deadline" | "cancelled" | "store_unavailable" | "closed";

/** Plain callbacks so observability can count without the limiter knowing prom-client. */
export interface LimiterHooks {
  onGrant?(bucket: string, tenant: string, waitedMs: number): void;
  onReject?(reason: RejectReason, bucket: string, tenant: string): void;
  /**
   * A booked slot nobody used: it could not be sent in time ("late": the store's answer or the
   * wake-up at the slot came too late), nobody was waiting any more ("no_waiter"), or this replica
   * dropped it because of a penalty or a store error ("cancelled"). A wasted slot is safe.
   */
  onWastedGrant?(bucket: string, reason: "late" | "no_waiter" | "cancelled"): void;
  onStoreError?(bucket: string, error: unknown): void;
  /**
   * A granted request left `lateMs` after its slot (the limiter moved the shared window by that
   * much), or was not sent at all because it would have left after `sendBy` ("not_sent").
   */
  onLateSend?(bucket: string, outcome: "shifted" | "not_sent", lateMs: number): void;
}

/** The margin in force, when it follows the path (see margin.ts); never below `marginMs`. */
export interface MarginSource {
  current(): number;
}

export interface LimiterOptions {
  store: WindowStore;
  clock?: Clock;
  /** Added to the bucket's window; absorbs grant-to-arrival jitter. Default 40 ms (see docs/decisions/limiter.md). */
  marginMs?: number;
  /** Widens the margin while the path to the cloud is jittery (never narrows it below `marginMs`). */
  margin?: MarginSource;
  /**
   * A request that left more than this many ms after its slot moves the shared window by its
   * lateness (`WindowStore.shift`). Default 1 ms: sub-ms lateness is left to the margin.
   */
  shiftAfterMs?: number;
  /**
   * A grant is good only if the request is sent within this many ms of its slot, counted from
   * the earliest local time the slot can be (store-clock.ts bounds the store's clock against
   * ours). Default `DEFAULT_SEND_WITHIN_MS` (100 ms).
   */
  sendWithinMs?: number;
  /**
   * How far ahead of the store's clock a slot may be booked. The dispatcher books the next slot
   * up to this long before it is due and the caller is woken at the slot, so the slots are spaced
   * by the store's arithmetic alone and a replica's wake-up latency (timer, event loop, Redis
   * round trip) no longer adds to every slot. It is also how long after a penalty (or a data loss)
   * another replica's booked grant may still go out. Default 80 ms; 0 = grant only "now".
   */
  bookAheadMs?: number;
  /**
   * Least distance between booked slots that wait for the window, so that replicas do not all
   * wake and send in the same ms; costs no rate (rounds keep their spread). Default 0 here,
   * `createRedisLimiter` uses `DEFAULT_SLOT_GAP_MS`.
   */
  slotGapMs?: number;
  /** Longest a caller waits in the queue, whatever its own deadline. Default 10 s. */
  maxWaitMs?: number;
  /** Waiters per bucket on this replica; more are refused at once. Default 1000. */
  maxQueue?: number;
  /** Random extra sleep after a refusal so replicas do not stampede. Default 2 ms. */
  jitterMs?: number;
  random?: () => number;
  hooks?: LimiterHooks;
}

/** A grant with the local time by which the upstream request must have been sent. */
export interface LimiterGrant extends Grant {
  /** Epoch ms on the limiter's clock. Later than this, do not send: acquire again. */
  sendBy: number;
  plannedAt: number;
  sent(at: number): void;
  /** Tells the limiter the grant was not sent because it would have left too late. */
  notSent(at: number): void;
}

export interface Limiter extends RateLimiter {
  acquire(req: AcquireRequest): Promise<LimiterGrant>;
  /** Callers waiting on this replica (one bucket, or all). */
  queueDepth(bucketKey?: string): number;
  /**
   * Closes one bucket while the others keep working (drain: no more associate calls, but the
   * task watchers still poll): its waiters and later callers get SHUTTING_DOWN.
   */
  closeBucket(bucketKey: string): void;
}

const MAX_TIMER_MS = 2_147_483_647;

/**
 * Default `sendWithinMs`. The last check is at the socket and a departure later than the slot
 * moves the shared window by its lateness, so lateness no longer eats the margin; the bound only
 * has to keep that move ahead of the bookings it affects (they come a span minus the horizon
 * after the slot) and make a late send cheaper than a wasted slot (about 100 ms at 10/s).
 * See docs/decisions/limiter.md ("The last check is at the socket").
 */
export const DEFAULT_SEND_WITHIN_MS = 100;

/** Default booking horizon (`LimiterOptions.bookAheadMs`). */
export const DEFAULT_BOOK_AHEAD_MS = 80;
/** Slot spacing for several replica processes (`LimiterOptions.slotGapMs` of `createRedisLimiter`). */
export const DEFAULT_SLOT_GAP_MS = 2;

interface Waiter {
  tenant: string;
  enqueuedAt: number;
  resolve(g: LimiterGrant): void;
  reject(e: KeygateError): void;
  /** Cancels the deadline timer and the abort listener. */
  cleanup(): void;
}

/** A slot booked in the store, not yet handed to a waiter. */
interface Booking {
  /** Local time of the slot, converted late (after the store's answer): never before it. */
  at: number;
  /** Latest local send time: `earliest` + sendWithinMs. */
  sendBy: number;
  /** The slot converted early: the earliest local time it can be; lateness counts from here. */
  earliest: number;
  /** The slot on the store's clock, when the store said (what `WindowStore.shift` moves). */
  slot: number | undefined;
  dropped: boolean;
}

interface BucketState {
  spec: BucketSpec;
  queue: FairQueue<Waiter>;
  running: boolean;
  /** Booked slots, earliest first; each goes to the head of the queue when it is due. */
  bookings: Booking[];
  /** Local time of the next slot the store may give (its last refusal or booking). */
  nextAt: number;
  /** Grants the store said were still free at `nextAt`. */
  free: number;
  /** Observed ms between grants while backlogged (other replicas take their share too). */
  interval: number;
  lastGrantAt: number;
}

/**
 * The per-replica side of the limiter: callers wait in a weighted fair queue per bucket and
 * one dispatcher loop per bucket books slots in the store (one per waiter not yet covered by a
 * booking), sleeping exactly as long as the store says when refused. Each booked slot wakes at
 * its time and goes to whoever is then at the head of the queue; `acquire` resolves at that
 * moment, so the caller sends at once. A caller whose turn cannot come before its deadline (or
 * `maxWaitMs`), or who finds the queue full, is refused at once.
 */
export function createLimiter(options: LimiterOptions): Limiter {
  const clock = options.clock ?? systemClock;
  const store = options.store;
  const marginFloorMs = options.marginMs ?? 40;
  const marginMs = () => Math.max(marginFloorMs, options.margin?.current() ?? 0);
  const shiftAfterMs = Math.max(0, options.shiftAfterMs ?? 1);
  const sendWithinMs = options.sendWithinMs ?? DEFAULT_SEND_WITHIN_MS;
  const bookAheadMs = Math.max(0, options.bookAheadMs ?? DEFAULT_BOOK_AHEAD_MS);
  const booking = { horizonMs: bookAheadMs, gapMs: Math.max(0, options.slotGapMs ?? 0) };
  const maxWaitMs = options.maxWaitMs ?? 10_000;
  const maxQueue = options.maxQueue ?? 1000;
  const jitterMs = options.jitterMs ?? 2;
  const random = options.random ?? Math.random;
  const hooks = options.hooks ?? {};
  const buckets = new Map<string, BucketState>();
  const storeClock = createStoreClock();
  const closing = new AbortController();
  const closedBuckets = new Set<string>();

  const safe = (f: () => void) => {
    try {
      f();
    } catch {
      /* a metrics callback must not break the limiter */
    }
  };

  const stateOf = (spec: BucketSpec): BucketState => {
    let b = buckets.get(spec.key);
    if (!b) {
      const span = spanOf(spec.windowMs, marginMs());
      b = {
        spec,
        queue: createFairQueue<Waiter>(),
        running: false,
        bookings: [],
        nextAt: 0,
        free: spec.limit,
        interval: span / spec.limit,
        lastGrantAt: 0,
      };
      buckets.set(spec.key, b);
    }
    b.spec = spec;
    return b;
  };

  /** Estimated ms until the waiter at `position` gets its grant. */
  const etaFor = (b: BucketState, position: number, now: number): number => {
    const booked = b.bookings[position];
    if (booked) return Math.max(0, booked.at - now);
    const head = Math.max(0, b.nextAt - now);
    const behindFree = Math.max(0, position - b.bookings.length - b.free);
    return head + behindFree * b.interval;
  };

  const rateLimited = (b: BucketState, retryAfterMs: number, why: string) =>
    keygateError("RATE_LIMITED", `upstream rate limit: ${why}`, {
      retryAfterMs: Math.max(1, Math.ceil(retryAfterMs)),
    });

  const failAll = (b: BucketState, error: KeygateError, reason: RejectReason) => {
    for (;;) {
      const e = b.queue.shift();
      if (!e) break;
      e.item.cleanup();
      safe(() => hooks.onReject?.(reason, b.spec.key, e.item.tenant));
      e.item.reject(error);
    }
  };

  /** Drops this replica's booked slots of `b` (they are simply not used: safe). */
  const dropBookings = (b: BucketState) => {
    for (const k of b.bookings) {
      k.dropped = true;
      safe(() => hooks.onWastedGrant?.(b.spec.key, "cancelled"));
    }
    b.bookings = [];
  };

  /** After a slot was used or wasted: keep booking for waiters left, or forget an idle bucket. */
  const settle = (b: BucketState) => {
    if (b.running || closing.signal.aborted) return;
    if (b.queue.size > b.bookings.length) void dispatch(b);
    else if (b.queue.size === 0 && b.bookings.length === 0 && b.nextAt <= clock.now()) {
      if (buckets.get(b.spec.key) === b) buckets.delete(b.spec.key);
    }
  };

  /** A booked slot is due: the head of the queue gets it, if it can still be sent in time. */
  const fire = (b: BucketState, k: Booking) => {
    if (k.dropped) return;
    const now = clock.now();
    if (now < k.at) {
      // A timer may fire a little early by the wall clock: never send before the slot.
      void clock.sleep(k.at - now).then(() => fire(b, k));
      return;
    }
    b.bookings = b.bookings.filter((x) => x !== k);
    if (now > k.sendBy) {
      // Woke too late to send on it safely: a wasted slot is safe, a late one is not.
      safe(() => hooks.onWastedGrant?.(b.spec.key, "late"));
    } else {
      const entry = b.queue.shift();
      if (!entry) {
        safe(() => hooks.onWastedGrant?.(b.spec.key, "no_waiter"));
      } else {
        const w = entry.item;
        w.cleanup();
        const waitedMs = now - w.enqueuedAt;
        safe(() => hooks.onGrant?.(b.spec.key, w.tenant, waitedMs));
        w.resolve(grantOf(b, k, waitedMs));
      }
    }
    settle(b);
  };

  /** The grant handed to a caller: its slot, its send-by time and where it reports its departure. */
  const grantOf = (b: BucketState, k: Booking, waitedMs: number): LimiterGrant => {
    let reported = false;
    return {
      waitedMs,
      sendBy: k.sendBy,
      plannedAt: k.at,
      sent(at: number) {
        if (reported) return;
        reported = true;
        const lateMs = Math.ceil(at - k.earliest);
        if (lateMs <= shiftAfterMs) return;
        safe(() => hooks.onLateSend?.(b.spec.key, "shifted", lateMs));
        // The request left later than its slot: move the slot to when it left, so the 10th call
        // after it is booked a full span after the departure (docs/decisions/limiter.md).
        if (k.slot === undefined || !store.shift) return;
        store.shift(b.spec, k.slot, lateMs).catch((err: unknown) => {
          safe(() => hooks.onStoreError?.(b.spec.key, err));
        });
      },
      notSent(at: number) {
        if (reported) return;
        reported = true;
        safe(() => hooks.onLateSend?.(b.spec.key, "not_sent", Math.max(0, at - k.earliest)));
        safe(() => hooks.onWastedGrant?.(b.spec.key, "late"));
      },
    };
  };

  const book = (b: BucketState, k: Booking) => {
    let i = b.bookings.length;
    while (i > 0 && (b.bookings[i - 1]?.at ?? 0) > k.at) i--;
    b.bookings.splice(i, 0, k);
    const now = clock.now();
    if (k.at <= now) {
      fire(b, k);
      return;
    }
    // No abort signal: close() marks bookings dropped, and the timer ends by itself within the horizon.
    void clock.sleep(k.at - now).then(() => fire(b, k));
  };

  const dispatch = async (b: BucketState): Promise<void> => {
    b.running = true;
    try {
      while (b.queue.size > b.bookings.length && !closing.signal.aborted) {
        const span = spanOf(b.spec.windowMs, marginMs());
        const asked = clock.now();
        let d;
        try {
          d = await store.tryAcquire(
            b.spec,
            span,
            b.spec.slotGapMs === undefined ? booking : { ...booking, gapMs: Math.max(0, b.spec.slotGapMs) },
          );
        } catch (err) {
          safe(() => hooks.onStoreError?.(b.spec.key, err));
          // Fail closed: nothing more goes out from this replica once the store is known to be down.
          dropBookings(b);
          failAll(
            b,
            keygateError("STORE_UNAVAILABLE", "the rate-limit store cannot be reached", { cause: err }),
            "store_unavailable",
          );
          break;
        }
        const now = clock.now();
        if (!d.granted) {
          if (d.storeNow !== undefined) storeClock.observe(asked, now, d.storeNow);
          // The store's wait counts from its decision, somewhere within the round trip: take the middle.
          const waitMs = Math.max(0, d.waitMs - (now - asked) / 2);
          b.free = 0;
          b.nextAt = now + waitMs + bookAheadMs;
          try {
            await clock.sleep(waitMs + random() * jitterMs, closing.signal);
          } catch {
            break;
          }
          continue;
        }
        // The store decided somewhere within the round trip [asked, now]: the slot is `delay` after
        // that. Sending from now + delay is never before the slot; sending by asked + delay +
        // sendWithinMs is never more than sendWithinMs after it. When the store tells its clock,
        // the tightest recent round trips narrow both ends (store-clock.ts).
        const delay = Math.max(0, d.delayMs ?? 0);
        let at = now + delay;
        let earliest = asked + delay;
        if (d.slot !== undefined && d.storeNow !== undefined) {
          const offset = storeClock.observe(asked, now, d.storeNow);
          at = Math.min(at, d.slot - offset.lower);
          earliest = Math.max(earliest, d.slot - offset.upper);
        }
        const k: Booking = {
          at,
          sendBy: earliest + sendWithinMs,
          earliest,
          slot: d.slot,
          dropped: false,
        };
        b.free = d.remaining;
        b.nextAt = k.at;
        if (k.at > k.sendBy) {
          // The answer came back too late to send on it safely: a wasted grant is safe, a late one is not.
          safe(() => hooks.onWastedGrant?.(b.spec.key, "late"));
          continue;
        }
        if (b.lastGrantAt > 0 && b.queue.size > b.bookings.length + 1 && d.remaining === 0) {
          // Learn the share this replica actually gets while backlogged, for honest refusals.
          b.interval = Math.max(span / b.spec.limit, 0.8 * b.interval + 0.2 * (k.at - b.lastGrantAt));
        }
        b.lastGrantAt = k.at;
        book(b, k);
      }
    } finally {
      b.running = false;
      settle(b);
    }
  };

  const acquire = (req: AcquireRequest): Promise<LimiterGrant> => {
    const { bucket, tenant, weight, signal, deadline } = req;
    const reject = (reason: RejectReason, e: KeygateError) => {
      safe(() => hooks.onReject?.(reason, bucket.key, tenant));
      return Promise.reject(e);
    };
    if (closing.signal.aborted || closedBuckets.has(bucket.key))
      return reject("closed", keygateError("SHUTTING_DOWN", "the limiter is closed"));
    if (signal.aborted) return reject("cancelled", keygateError("CANCELLED", "the caller went away"));
    const b = stateOf(bucket);
    const now = clock.now();
    const until = Math.min(deadline ?? Infinity, now + maxWaitMs);
    if (b.queue.size >= maxQueue) {
      return reject("queue_full", rateLimited(b, etaFor(b, b.queue.size, now), "too many callers waiting"));
    }
    const eta = etaFor(b, b.queue.positionIfPushed(tenant, weight), now);
    if (now + eta > until) {
      return reject("deadline", rateLimited(b, eta, "no token could be had before the deadline"));
    }

    return new Promise<LimiterGrant>((resolve, rejectP) => {
      let cancelTimer: (() => void) | undefined;
      const leave = (reason: RejectReason, e: KeygateError) => {
        if (!b.queue.remove(entry)) return;
        waiter.cleanup();
        safe(() => hooks.onReject?.(reason, bucket.key, tenant));
        rejectP(e);
      };
      const onAbort = () => leave("cancelled", keygateError("CANCELLED", "the caller went away"));
      const waiter: Waiter = {
        tenant,
        enqueuedAt: now,
        resolve,
        reject: rejectP,
        cleanup: () => {
          cancelTimer?.();
          signal.removeEventListener("abort", onAbort);
        },
      };
      const entry: FairEntry<Waiter> = b.queue.push(tenant, weight, waiter);
      signal.addEventListener("abort", onAbort, { once: true });
      // Timers cannot hold more than 2^31-1 ms (longer ones fire at once): such a wait is unbounded.
      if (until - now <= MAX_TIMER_MS) {
        cancelTimer = clock.timer(until - now, () =>
          leave("deadline", rateLimited(b, etaFor(b, 0, clock.now()), "no token before the deadline")),
        );
      }
      if (!b.running) void dispatch(b);
    });
  };

  return {
    acquire,
    async penalize(bucket: BucketSpec, ms: number): Promise<void> {
      try {
        await store.penalize(bucket, ms);
      } catch (err) {
        safe(() => hooks.onStoreError?.(bucket.key, err));
        throw keygateError("STORE_UNAVAILABLE", "the rate-limit store cannot be reached", { cause: err });
      }
      const b = buckets.get(bucket.key);
      if (b) {
        // This replica's booked slots would go out during the hold-off: drop them (waiters stay queued).
        dropBookings(b);
        b.nextAt = Math.max(b.nextAt, clock.now() + ms);
        b.free = 0;
        settle(b);
      }
    },
    queueDepth(bucketKey?: string): number {
      if (bucketKey !== undefined) return buckets.get(bucketKey)?.queue.size ?? 0;
      let n = 0;
      for (const b of buckets.values()) n += b.queue.size;
      return n;
    },
    closeBucket(bucketKey: string): void {
      closedBuckets.add(bucketKey);
      const b = buckets.get(bucketKey);
      if (!b) return;
      dropBookings(b);
      failAll(b, keygateError("SHUTTING_DOWN", "the limiter is closing"), "closed");
    },
    close(): Promise<void> {
      closing.abort();
      for (const b of buckets.values()) {
        for (const k of b.bookings) k.dropped = true;
        b.bookings = [];
        failAll(b, keygateError("SHUTTING_DOWN", "the limiter is closing"), "closed");
      }
      buckets.clear();
      return Promise.resolve();
    },
  };
}
