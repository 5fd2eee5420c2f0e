/**
 * The one set of waiting helpers for tests and benchmarks. The bounds are hang guards, not
 * assertions: generous, so a loaded 2-core CI machine never turns them into failures.
 */

/** Resolves after `ms` of real time. For pacing load only, never to decide which of two things comes first. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

/** Polls `check` every `intervalMs` until it returns true; fails naming `what` after `timeoutMs`. */
export async function pollUntil(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 20_000,
  intervalMs = 25,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** Polls `probe` until `ok` accepts its value and returns that value; the failure shows the last one seen. */
export async function pollValue<T>(
  what: string,
  probe: () => Promise<T>,
  ok: (v: T) => boolean,
  timeoutMs = 20_000,
  intervalMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last = await probe();
  while (!ok(last)) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${JSON.stringify(last)}`);
    }
    await sleep(intervalMs);
    last = await probe();
  }
  return last;
}

/** A promise with its resolver outside: a test opens it when the thing it stands for has happened. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

export interface EventCounter {
  bump: () => void;
  count: () => number;
  reached: (n: number) => Promise<void>;
}

/** Counts events; `reached(n)` resolves once `n` have happened (at once if they already have). */
export function eventCounter(): EventCounter {
  let n = 0;
  let waiting: { at: number; resolve: () => void }[] = [];
  return {
    bump: () => {
      n += 1;
      const due = waiting.filter((w) => w.at <= n);
      waiting = waiting.filter((w) => w.at > n);
      for (const w of due) w.resolve();
    },
    count: () => n,
    reached: (at) => {
      if (n >= at) return Promise.resolve();
      return new Promise((resolve) => waiting.push({ at, resolve }));
    },
  };
}
