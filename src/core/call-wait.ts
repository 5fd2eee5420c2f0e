import type { Clock } from "./clock.js";
import { isKeygateError, keygateError, type KeygateError } from "./errors.js";
import type { CallOptions } from "./ports.js";

/**
 * The error a wait ends with when the caller's signal aborts: the signal's own reason when it
 * is already a KeygateError (e.g. a deadline timer set upstream), CANCELLED otherwise.
 */
export function abortError(signal: AbortSignal): KeygateError {
  const reason: unknown = signal.reason;
  if (isKeygateError(reason)) return reason;
  return keygateError("CANCELLED", "the call was cancelled while waiting", { cause: reason });
}

/** Throws the abort error if the caller is already gone. */
export function throwIfAborted(opts: CallOptions): void {
  if (opts.signal.aborted) throw abortError(opts.signal);
}

/** Sleeps on the domain clock; an abort becomes a KeygateError instead of a bare DOMException. */
export async function pause(clock: Clock, ms: number, signal: AbortSignal): Promise<void> {
  try {
    await clock.sleep(ms, signal);
  } catch (e) {
    if (signal.aborted) throw abortError(signal);
    throw e;
  }
}

/**
 * Capped exponential backoff with jitter in [half, full]: waiters polling the same key spread
 * out instead of hitting Redis in lock-step, yet none sleeps longer than `maxMs`.
 */
export function backoffMs(attempt: number, minMs: number, maxMs: number, random: () => number): number {
  const full = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 20));
  return Math.max(1, Math.round(full / 2 + (random() * full) / 2));
}

/** A store failure is reported as STORE_UNAVAILABLE (so nothing downstream runs); KeygateErrors pass. */
export function storeError(e: unknown, what: string): KeygateError {
  if (isKeygateError(e)) return e;
  return keygateError("STORE_UNAVAILABLE", `the shared store could not be reached (${what})`, { cause: e });
}

/** Runs a store call, turning any failure into STORE_UNAVAILABLE. */
export async function guarded<T>(what: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (e) {
    throw storeError(e, what);
  }
}

/** A signal that follows others until `unlink()` (see `linkSignals`). */
export interface LinkedSignal {
  signal: AbortSignal;
  /** Stops following the sources; call it when the work the signal guards has ended. */
  unlink(): void;
}

/**
 * A signal that aborts (with the first source's reason) when any of `sources` does, until
 * `unlink()`. What `AbortSignal.any` does, for the request path: `any` keeps weakly referenced
 * dependants that the sources abort in turn, about 30 µs per call in Node 20 (measured for
 * docs/benchmarks.md, "Where a replica's CPU goes"); two listeners that are removed at the end cost
 * a tenth of that.
 */
export function linkSignals(sources: readonly AbortSignal[]): LinkedSignal {
  const controller = new AbortController();
  const gone = sources.find((s) => s.aborted);
  if (gone) {
    controller.abort(gone.reason);
    return { signal: controller.signal, unlink: () => undefined };
  }
  const listeners = sources.map((source) => {
    const onAbort = () => {
      unlink();
      controller.abort(source.reason);
    };
    source.addEventListener("abort", onAbort);
    return { source, onAbort };
  });
  function unlink(): void {
    for (const { source, onAbort } of listeners) source.removeEventListener("abort", onAbort);
    listeners.length = 0;
  }
  return { signal: controller.signal, unlink };
}
