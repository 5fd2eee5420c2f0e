import type { AssociateResult } from "../core/model.js";
import type { CallOptions, OperationRun, Operations } from "../core/ports.js";
import { abortError } from "../core/call-wait.js";
import {
  createLocalShareMode,
  isStoreDown,
  type LocalShareParts,
  type StoreMode,
} from "../store/local-share-mode.js";
import { failureOutcome, settle, type Outcome } from "./outcome.js";

export interface LocalShareOperationsOptions extends LocalShareParts<Operations> {
  /** How long an idempotency key first used locally stays with the local store. Default 24 h. */
  idempotencyTtlMs?: number;
}

export interface LocalShareOperations extends Operations {
  mode(): StoreMode;
}

/**
 * `KEYGATE_ON_STORE_DOWN=local-share` for coalescing and idempotency: the shared store while it
 * works; while it fails with STORE_UNAVAILABLE (or is not ready), this replica's own memory, so
 * identical calls on one replica are still joined and a repeated key on that replica is still
 * answered once. What is given up during the outage is the same across replicas.
 *
 * - A run whose work already started is never re-run locally: only a failure before `execute`
 *   falls back. A caller that was joining an execution on this replica when the store went away
 *   joins that execution directly.
 * - Stickiness after the outage: an idempotency key first used locally stays answered locally
 *   (on this replica only) for its TTL, and a fingerprint still running locally is joined locally.
 */
export function createLocalShareOperations(options: LocalShareOperationsOptions): LocalShareOperations {
  const { primary, own } = options;
  const idempotencyTtlMs = options.idempotencyTtlMs ?? 24 * 3600_000;
  /** Executions running on this replica (through either store), by fingerprint. */
  const running = new Map<string, Promise<Outcome>>();
  /** Fingerprints with a local run in flight, and how many. */
  const localRuns = new Map<string, number>();
  /** Idempotency keys first used locally → when they stop being local. */
  const localKeys = new Map<string, number>();

  const storeMode = createLocalShareMode(options);
  const { clock } = storeMode;
  const { goLocal, tryPrimary } = storeMode;

  const keyOf = (op: OperationRun) =>
    op.idempotency ? `${op.idempotency.tenant}\u0000${op.idempotency.key}` : undefined;
  const isLocalKey = (key: string | undefined) => {
    if (key === undefined) return false;
    const until = localKeys.get(key);
    if (until === undefined) return false;
    if (until > clock.now()) return true;
    localKeys.delete(key);
    return false;
  };
  const rememberLocalKey = (key: string) => {
    const now = clock.now();
    localKeys.set(key, now + idempotencyTtlMs);
    if (localKeys.size % 256 === 0) for (const [k, until] of localKeys) if (until <= now) localKeys.delete(k);
  };

  /** `op` whose execute is recorded in `running` (and reports that it started). */
  const tracked = (op: OperationRun, started: { value: boolean }): OperationRun => ({
    ...op,
    execute: (execution) => {
      started.value = true;
      const work = op.execute(execution);
      const outcome = work.then(
        (result): Outcome => ({ ok: true, result }),
        (e: unknown) => failureOutcome(e),
      );
      running.set(op.fingerprint, outcome);
      void outcome.finally(() => {
        if (running.get(op.fingerprint) === outcome) running.delete(op.fingerprint);
      });
      return work;
    },
  });

  async function runLocal(op: OperationRun, opts: CallOptions): Promise<AssociateResult> {
    const key = keyOf(op);
    if (key !== undefined) rememberLocalKey(key);
    localRuns.set(op.fingerprint, (localRuns.get(op.fingerprint) ?? 0) + 1);
    try {
      return await own.run(tracked(op, { value: false }), opts);
    } finally {
      const n = (localRuns.get(op.fingerprint) ?? 1) - 1;
      if (n > 0) localRuns.set(op.fingerprint, n);
      else localRuns.delete(op.fingerprint);
    }
  }

  /** Answers with an execution already running on this replica, within the caller's signal. */
  async function join(outcome: Promise<Outcome>, opts: CallOptions): Promise<AssociateResult> {
    if (opts.signal.aborted) throw abortError(opts.signal);
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(abortError(opts.signal));
      opts.signal.addEventListener("abort", onAbort, { once: true });
    });
    try {
      return settle(await Promise.race([outcome, aborted]), true);
    } finally {
      if (onAbort) opts.signal.removeEventListener("abort", onAbort);
    }
  }

  async function run(op: OperationRun, opts: CallOptions): Promise<AssociateResult> {
    if (localRuns.has(op.fingerprint) || isLocalKey(keyOf(op)) || !tryPrimary()) return runLocal(op, opts);
    const started = { value: false };
    try {
      const result = await primary.run(tracked(op, started), opts);
      storeMode.recovered();
      return result;
    } catch (e) {
      if (!isStoreDown(e) || started.value) throw e;
      goLocal();
      const inFlight = running.get(op.fingerprint);
      if (inFlight && !localRuns.has(op.fingerprint) && !isLocalKey(keyOf(op))) return join(inFlight, opts);
      return runLocal(op, opts);
    }
  }

  return {
    run,
    mode: storeMode.mode,
    async close() {
      await Promise.all([primary.close(), own.close()]);
    },
  };
}
