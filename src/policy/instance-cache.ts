/**
 * A short-lived cache of DescribeInstances answers for policy decisions (tags, project). The
 * describe calls spend a 40/s upstream bucket shared with task polling, so a request's unknown
 * ids are fetched together in one call (≤ 100 ids per call), identical concurrent lookups share
 * one call, and "not found" is remembered too, for less time, so a caller retrying a typo does
 * not turn every attempt into an upstream call.
 *
 * It caches whole `InstanceInfo`s, but only the slow-changing fields (tags, project) should be
 * read from it: task state must come from a fresh DescribeInstances.
 */
import type { Clock } from "../core/clock.js";
import type { InstanceInfo } from "../core/model.js";
import type { CallOptions, Tenant } from "../core/ports.js";

/** A lookup's options: the caller's deadline and signal, and the tenant whose budget it spends. */
export type LookupOptions = CallOptions & { tenant?: Tenant | undefined };

/** The upstream call; given at most 100 ids, answers the ones that exist. */
export type DescribeInstancesFn = (
  region: string,
  ids: string[],
  opts: LookupOptions,
) => Promise<InstanceInfo[]>;

export interface InstanceCacheOptions {
  describe: DescribeInstancesFn;
  clock: Clock;
  /** How long a found instance is trusted. Default 5000 ms. */
  ttlMs?: number;
  /** How long "does not exist" is trusted; shorter, since a new instance should become usable soon. Default 1000 ms. */
  notFoundTtlMs?: number;
  /** Bound on remembered ids; the oldest go first. Default 10000. */
  maxEntries?: number;
}

export interface InstanceCache {
  /** Every id of `ids` maps to its info, or to undefined when the cloud does not know it. */
  get(
    region: string,
    ids: readonly string[],
    opts: LookupOptions,
  ): Promise<Map<string, InstanceInfo | undefined>>;
  /** Forgets ids, e.g. after their tags were seen to change. */
  invalidate(region: string, ids: readonly string[]): void;
  /** Entries currently remembered (fresh or not yet evicted). */
  readonly size: number;
}

/** The upstream accepts at most 100 InstanceIds per DescribeInstances call. */
const DESCRIBE_BATCH = 100;

interface Entry {
  info: InstanceInfo | undefined;
  expiresAt: number;
}

interface Flight {
  result: Promise<Map<string, InstanceInfo | undefined>>;
  controller: AbortController;
  /** Callers still waiting; when the last one gives up, the call is aborted. */
  waiters: number;
  keys: string[];
}

function keyOf(region: string, id: string): string {
  return `${region}\u0000${id}`;
}

/** `promise`, or the signal's reason as soon as it aborts. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.finally(() => signal.removeEventListener("abort", onAbort)).then(resolve, reject);
  });
}

export function createInstanceCache(options: InstanceCacheOptions): InstanceCache {
  const { describe, clock } = options;
  const ttlMs = options.ttlMs ?? 5000;
  const notFoundTtlMs = options.notFoundTtlMs ?? 1000;
  const maxEntries = options.maxEntries ?? 10_000;
  const entries = new Map<string, Entry>();
  const inflight = new Map<string, Flight>();

  function remember(key: string, info: InstanceInfo | undefined, now: number): void {
    entries.delete(key); // re-insert at the end: Map order doubles as age order for eviction
    entries.set(key, { info, expiresAt: now + (info ? ttlMs : notFoundTtlMs) });
    while (entries.size > maxEntries) {
      const oldest = entries.keys().next();
      if (oldest.done) break;
      entries.delete(oldest.value);
    }
  }

  function startFlight(region: string, ids: string[], opts: LookupOptions): Flight {
    const controller = new AbortController();
    // Charged to the tenant that started it; joiners of an identical lookup cost nothing more.
    const result = describe(region, ids, {
      signal: controller.signal,
      deadline: opts.deadline,
      tenant: opts.tenant,
    })
      .then((found) => {
        const now = clock.now();
        const byId = new Map(found.map((info) => [info.instanceId, info]));
        const answer = new Map<string, InstanceInfo | undefined>();
        for (const id of ids) {
          const info = byId.get(id);
          remember(keyOf(region, id), info, now);
          answer.set(id, info);
        }
        return answer;
      })
      .finally(() => forget(flight));
    // Waiters handle the rejection; this marks it handled when every waiter has already left.
    result.catch(() => undefined);
    const flight: Flight = { result, controller, waiters: 0, keys: ids.map((id) => keyOf(region, id)) };
    for (const key of flight.keys) inflight.set(key, flight);
    return flight;
  }

  /** Stops new callers from joining `flight` (it finished, or is being abandoned). */
  function forget(flight: Flight): void {
    for (const key of flight.keys) if (inflight.get(key) === flight) inflight.delete(key);
  }

  async function wait(flight: Flight, signal: AbortSignal): Promise<Map<string, InstanceInfo | undefined>> {
    flight.waiters += 1;
    try {
      return await untilAborted(flight.result, signal);
    } finally {
      flight.waiters -= 1;
      if (flight.waiters === 0 && signal.aborted) {
        forget(flight);
        flight.controller.abort(signal.reason);
      }
    }
  }

  async function get(
    region: string,
    ids: readonly string[],
    opts: LookupOptions,
  ): Promise<Map<string, InstanceInfo | undefined>> {
    const now = clock.now();
    const answer = new Map<string, InstanceInfo | undefined>();
    const flights = new Set<Flight>();
    const missing: string[] = [];
    for (const id of new Set(ids)) {
      const key = keyOf(region, id);
      const entry = entries.get(key);
      if (entry && entry.expiresAt > now) {
        answer.set(id, entry.info);
        continue;
      }
      if (entry) entries.delete(key);
      const flight = inflight.get(key);
      if (flight) flights.add(flight);
      else missing.push(id);
    }
    if (opts.signal.aborted) throw opts.signal.reason;
    for (let i = 0; i < missing.length; i += DESCRIBE_BATCH) {
      flights.add(startFlight(region, missing.slice(i, i + DESCRIBE_BATCH), opts));
    }
    const results = await Promise.all([...flights].map((f) => wait(f, opts.signal)));
    const wanted = new Set(ids);
    for (const result of results) {
      for (const [id, info] of result) if (wanted.has(id)) answer.set(id, info);
    }
    return answer;
  }

  return {
    get,
    invalidate(region, ids) {
      for (const id of ids) entries.delete(keyOf(region, id));
    },
    get size() {
      return entries.size;
    },
  };
}
