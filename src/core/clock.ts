/** Time as the domain sees it; tests pass a fake one instead of sleeping. */
export interface Clock {
  /** Milliseconds since the epoch. */
  now(): number;
  /** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
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
};

/**
 * The reason for aborting a signal that only ends keygate's own waits (a renew loop's sleep, a
 * deadline timer that is no longer needed): nobody reads it. `abort()` without a reason builds a
 * DOMException with a stack for every request, which the profile showed as a measurable share of
 * a replica's CPU under load (docs/benchmarks.md).
 */
export const STOPPED: Error = new Error("stopped: an internal wait is no longer needed");
