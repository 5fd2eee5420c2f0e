/** Time as the domain sees it; tests pass a fake one instead of sleeping. */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
  /**
   * Calls `fn` after `ms` unless the returned function cancels it first. For keygate's own timers
   * on the request path (a deadline watch, a renew loop): stopping a `sleep` means aborting an
   * AbortController, whose `abort()` builds and dispatches an Event, about 8 µs each in Node 20,
   * several times per request (docs/benchmarks.md, "Where a replica's CPU goes").
   */
  timer(ms: number, fn: () => void): () => void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise<void>((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason as Error);
        return;
      }
      const onAbort = () => {
        clearTimeout(timer);
        reject(signal?.reason as Error);
      };
      const timer = setTimeout(
        () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
        Math.max(0, ms),
      );
      signal?.addEventListener("abort", onAbort, { once: true });
    }),
  timer: (ms, fn) => {
    const t = setTimeout(fn, Math.max(0, ms));
    return () => clearTimeout(t);
  },
};

/**
 * The reason for aborting a signal that only ends keygate's own waits (a renew loop's sleep, a
 * deadline timer that is no longer needed): nobody reads it. `abort()` without a reason builds a
 * DOMException with a stack for every request, which the profile showed as a measurable share of
 * a replica's CPU under load (docs/benchmarks.md).
 */
export const STOPPED: Error = new Error("stopped: an internal wait is no longer needed");

/** A repeating step started by `every`. */
export interface Repeating {
  /** True once `stop` was called. */
  readonly stopped: boolean;
  /** No further step starts; resolves when a step already running has ended. */
  stop(): Promise<void>;
}

/**
 * Runs `step` every `everyMs` (counted from the end of the previous one) until it resolves false
 * or `stop()` is called. A step that throws counts as true: the next round tries again. Built on
 * `Clock.timer`, so stopping costs no AbortController (renew loops run once per request).
 */
export function every(clock: Clock, everyMs: number, step: () => Promise<boolean>): Repeating {
  let stopped = false;
  let cancel: (() => void) | undefined;
  let running: Promise<void> | undefined;
  const schedule = () => {
    cancel = stopped ? undefined : clock.timer(everyMs, tick);
  };
  const tick = () => {
    cancel = undefined;
    if (stopped) return;
    running = step()
      .catch(() => true)
      .then((more) => {
        running = undefined;
        if (more) schedule();
      });
  };
  schedule();
  return {
    get stopped() {
      return stopped;
    },
    async stop() {
      stopped = true;
      cancel?.();
      cancel = undefined;
      await running;
    },
  };
}
