/**
 * Closed-loop callers: each one binds its own key to a random instance of the pool, waits for the
 * answer (bounded by its deadline), thinks a while, and repeats until the run ends. Both arms of
 * the bench get the same callers with the same random sequence.
 */

/** What one call ended with: "OK" or an error code (upstream code or keygate reason). */
export interface CallOutcome {
  caller: number;
  instanceId: string;
  startedAt: number;
  latencyMs: number;
  code: string;
}

export type CallFn = (caller: number, instanceId: string, deadlineMs: number) => Promise<string>;

export interface LoadOptions {
  callers: number;
  instanceIds: string[];
  /** New calls start only during this window; calls in flight then finish (bounded by deadline). */
  runMs: number;
  deadlineMs: number;
  thinkMinMs: number;
  thinkMaxMs: number;
  seed: number;
}

/** mulberry32: deterministic per caller, so both arms see the same choices in the same order. */
export function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function runLoad(opts: LoadOptions, call: CallFn): Promise<CallOutcome[]> {
  const outcomes: CallOutcome[] = [];
  const end = Date.now() + opts.runMs;
  const caller = async (i: number) => {
    const rnd = prng(Math.imul(opts.seed + 1, 0x9e3779b9) ^ Math.imul(i + 1, 0x85ebca6b));
    // Spread the start over the first think interval: callers do not arrive in lockstep.
    await sleep(Math.min(rnd() * opts.thinkMaxMs, opts.runMs));
    while (Date.now() < end) {
      const instance = opts.instanceIds[Math.floor(rnd() * opts.instanceIds.length)] ?? "";
      const t0 = Date.now();
      const code = await call(i, instance, opts.deadlineMs);
      outcomes.push({ caller: i, instanceId: instance, startedAt: t0, latencyMs: Date.now() - t0, code });
      const think = opts.thinkMinMs + rnd() * (opts.thinkMaxMs - opts.thinkMinMs);
      await sleep(Math.max(0, Math.min(think, end - Date.now())));
    }
  };
  await Promise.all(Array.from({ length: opts.callers }, (_, i) => caller(i)));
  return outcomes;
}
