import { createHash, randomUUID } from "node:crypto";
import { every, type Clock } from "../core/clock.js";
import { keygateError } from "../core/errors.js";
import type { AssociateResult } from "../core/model.js";
import type { CallOptions, Execution, OperationRun, Operations } from "../core/ports.js";
import { backoffMs, guarded, pause, throwIfAborted } from "../core/call-wait.js";
import { idempotencyKey, OPS_SCOPE, type Inherited, type OperationStore } from "./operation-store.js";
import { decodeOutcome, encodeOutcome, failureOutcome, isFinal, settle, type Outcome } from "./outcome.js";

export interface OperationsOptions {
  store: OperationStore;
  clock: Clock;
  /** How long an idempotency key answers with its first outcome (the product promise: 24 h). */
  idempotencyTtlMs?: number;
  /**
   * Lifetime of a claim without renewal: how long a crashed or stalled executor blocks others
   * before one of them takes over. Default 3 s, renewed every second.
   */
  claimTtlMs?: number;
  claimRenewEveryMs?: number;
  /**
   * How long a record that got past `claimed` waits for an heir after its executor vanished
   * (and how long any record lasts while executing). Default: the idempotency TTL.
   */
  recordTtlMs?: number;
  /**
   * After an execution ended with a final outcome, identical calls arriving this long after
   * still get it instead of executing again (part of the coalescing contract). Default 5 s.
   */
  joinWindowMs?: number;
  /** How long an outcome stays readable for the calls that joined it; they poll far more often. */
  resultTtlMs?: number;
  pollMinMs?: number;
  pollMaxMs?: number;
  /**
   * With finish notices (`OperationStore.releases`), how often joiners re-check anyway (they
   * notice a vanished executor this way). Default 500 ms.
   */
  recheckMs?: number;
  random?: () => number;
}

/**
 * Runs each request once cluster-wide: identical calls in flight (or finished less than the join
 * window ago) are joined (coalescing), and a repeated idempotency key gets its first final answer
 * for 24 h. Store trouble before anything ran is STORE_UNAVAILABLE and nothing is executed. The
 * life cycle is docs/decisions/operation-lifecycle.md.
 */
export function createOperations(options: OperationsOptions): Operations {
  const { store, clock } = options;
  const idempotencyTtlMs = options.idempotencyTtlMs ?? 24 * 3600_000;
  const claimTtlMs = options.claimTtlMs ?? 3_000;
  const claimRenewEveryMs = options.claimRenewEveryMs ?? Math.floor(claimTtlMs / 3);
  const recordTtlMs = options.recordTtlMs ?? idempotencyTtlMs;
  const joinWindowMs = options.joinWindowMs ?? 5_000;
  const resultTtlMs = options.resultTtlMs ?? 60_000;
  const pollMinMs = options.pollMinMs ?? 10;
  const pollMaxMs = options.pollMaxMs ?? 100;
  const random = options.random ?? Math.random;
  const recheckMs = options.recheckMs ?? 500;
  const feed = store.releases;
  const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");
  let closed = false;
  /** Finishes written after their answer went out; close() waits for them. */
  const finishing = new Set<Promise<void>>();

  async function run(op: OperationRun, opts: CallOptions): Promise<AssociateResult> {
    if (closed) throw keygateError("SHUTTING_DOWN", "this replica is shutting down");
    const idemKey = op.idempotency
      ? idempotencyKey(op.idempotency.tenant, op.idempotency.key, sha256)
      : undefined;
    const token = randomUUID();
    // Each turn either answers or finds that the call it joined vanished without an outcome.
    for (;;) {
      throwIfAborted(opts);
      if (idemKey !== undefined) {
        const st = await guarded("idempotency", () =>
          store.beginIdempotent(idemKey, op.fingerprint, idempotencyTtlMs),
        );
        if (st.state === "mismatch") {
          throw keygateError(
            "IDEMPOTENCY_MISMATCH",
            "this idempotency_key was used before with a different request",
          );
        }
        if (st.state === "done") return settle(decodeOutcome(st.outcome), true);
      }
      const c = await guarded("coalescing", () =>
        store.claim(op.fingerprint, token, { claimTtlMs, recordTtlMs }),
      ).catch((e: unknown) => {
        forgetLater(op.fingerprint, token, e);
        throw e;
      });
      if (c.state === "finished") return answerWith(c.outcome, idemKey, op.fingerprint);
      if (c.state === "claimed") {
        const stored = idemKey !== undefined ? await reread(op.fingerprint, idemKey, token) : undefined;
        if (stored !== undefined) return settle(stored, true);
        return execute(op, idemKey, token, c.inherited);
      }
      const joined = await waitFor(op.fingerprint, c.holder, opts);
      // The executor we joined was taken over: its heir's answer is ours, so join the heir.
      if (joined !== null && !takenOver(joined)) return answerWith(joined, idemKey, op.fingerprint);
    }
  }

  function takenOver(encoded: string): boolean {
    const o = decodeOutcome(encoded);
    return !o.ok && o.error.reason === "OPERATION_TAKEN_OVER";
  }

  /** A joined execution's outcome as this caller's answer (kept under its key when final). */
  async function answerWith(encoded: string, idemKey: string | undefined, fingerprint: string) {
    const outcome = decodeOutcome(encoded);
    if (idemKey !== undefined) await remember(idemKey, fingerprint, outcome);
    return settle(outcome, true);
  }

  /**
   * After a successful claim, the idempotency record again: the call we found pending may have
   * finished (and released its claim) in between. Then our claim goes back, carrying that outcome
   * to anyone who joined us, and nothing executes.
   */
  async function reread(fingerprint: string, idemKey: string, token: string): Promise<Outcome | undefined> {
    let st;
    try {
      st = await guarded("idempotency", () => store.beginIdempotent(idemKey, fingerprint, idempotencyTtlMs));
    } catch (e) {
      await giveBack(fingerprint, token, failureOutcome(e));
      throw e;
    }
    if (st.state === "done") {
      const outcome = decodeOutcome(st.outcome);
      await giveBack(fingerprint, token, outcome);
      return outcome;
    }
    if (st.state === "mismatch") {
      const e = keygateError(
        "IDEMPOTENCY_MISMATCH",
        "this idempotency_key was used before with a different request",
      );
      await giveBack(fingerprint, token, failureOutcome(e));
      throw e;
    }
    return undefined;
  }

  /**
   * A claim whose answer never came (the store hung, the connection was dropped) may still be
   * written when the store resumes: Redis runs the commands it had buffered. Give it back once the
   * store answers again, a few times over a second since the buffered claim may land after the
   * first give-back, so it does not hold identical calls for its whole TTL. Fenced by the token:
   * it never touches another caller's claim.
   */
  function forgetLater(fingerprint: string, token: string, cause: unknown): void {
    const outcome = encodeOutcome(failureOutcome(cause));
    const opts = { final: false, resultTtlMs, joinWindowMs };
    void (async () => {
      let given = 0;
      for (let attempt = 0; attempt < 60 && given < 3 && !closed; attempt++) {
        try {
          await store.finish(fingerprint, token, outcome, opts);
          given++;
        } catch {
          /* still unreachable: try again */
        }
        await clock.sleep(given > 0 ? 400 : 250).catch(() => undefined);
      }
    })();
  }

  function giveBack(fingerprint: string, token: string, outcome: Outcome): Promise<void> {
    return store
      .finish(fingerprint, token, encodeOutcome(outcome), {
        final: isFinal(outcome),
        resultTtlMs,
        joinWindowMs,
      })
      .catch(() => undefined);
  }

  async function execute(
    op: OperationRun,
    idemKey: string | undefined,
    token: string,
    inherited: Inherited | undefined,
  ): Promise<AssociateResult> {
    // Lost: a peer took over; our next mark() is refused, so nothing more is sent from here.
    const renewing = every(clock, claimRenewEveryMs, () =>
      store.renewClaim(op.fingerprint, token, claimTtlMs),
    );
    const execution: Execution = {
      inherited,
      async mark(phase, detail = {}) {
        const sentAt = detail.sentAt ?? (phase === "sending" ? clock.now() : undefined);
        const written = await guarded("coalescing", () =>
          store.mark(op.fingerprint, token, phase, { sentAt, requestId: detail.requestId }, recordTtlMs),
        );
        if (!written) {
          throw keygateError(
            "OPERATION_TAKEN_OVER",
            "this replica lost the operation to another one while executing it; nothing more was sent from here",
          );
        }
      },
    };
    let outcome: Outcome;
    let thrown: { error: unknown } | undefined;
    try {
      outcome = { ok: true, result: { ...(await op.execute(execution)), deduplicated: false } };
    } catch (e) {
      outcome = failureOutcome(e);
      thrown = { error: e };
    } finally {
      await renewing.stop();
    }
    // The idempotency record first: once the claim is gone, only it stops a second execution.
    if (idemKey !== undefined) await remember(idemKey, op.fingerprint, outcome);
    // The finish (the outcome for joiners, the claim given back) need not delay this answer: an
    // identical call arriving meanwhile joins the claim and gets the same outcome from it, and an
    // executor that dies before the finish lands leaves what a crash just after it would (its
    // record; the claim expires). docs/decisions/operation-lifecycle.md, "The finish".
    const finish = giveBack(op.fingerprint, token, outcome);
    finishing.add(finish);
    void finish.then(() => finishing.delete(finish));
    if (thrown) throw thrown.error;
    return settle(outcome, false);
  }

  /**
   * Keeps or forgets the idempotency key. Best effort: the work is done and its answer is the
   * truth; if the store is down now, a retry may run again (documented in the decisions).
   */
  async function remember(idemKey: string, fingerprint: string, outcome: Outcome): Promise<void> {
    const write = isFinal(outcome)
      ? store.completeIdempotent(idemKey, fingerprint, encodeOutcome(outcome), idempotencyTtlMs)
      : store.abandonIdempotent(idemKey, fingerprint);
    await write.catch(() => undefined);
  }

  /** The joined call's encoded outcome, or null when its claim vanished without one. */
  async function waitFor(fingerprint: string, holder: string, opts: CallOptions): Promise<string | null> {
    for (let attempt = 0; ; attempt++) {
      // Taken before reading, so a finish between the read and the sleep still wakes us.
      const mark = feed?.mark(OPS_SCOPE) ?? 0;
      const seen = await guarded("coalescing", () => store.peek(fingerprint, holder));
      if (seen.outcome !== null) return seen.outcome;
      if (seen.claimHolder !== holder) return null;
      const left = (opts.deadline ?? Infinity) - clock.now();
      if (left <= 0)
        throw keygateError("DEADLINE_EXCEEDED", "the deadline passed while joining an identical call");
      if (feed?.live(OPS_SCOPE)) {
        // Woken by the finish notice; the re-check also catches a holder that crashed (claim expiry).
        await feed
          .wait(OPS_SCOPE, [fingerprint], mark, Math.min(recheckMs, left), opts.signal)
          .catch(() => throwIfAborted(opts));
      } else {
        await pause(clock, Math.min(backoffMs(attempt, pollMinMs, pollMaxMs, random), left), opts.signal);
      }
    }
  }

  return {
    run,
    async close() {
      // Give-backs still trying stop at their next turn; finishes in flight land first (each is one
      // store command, bounded by its timeout).
      closed = true;
      await Promise.allSettled([...finishing]);
      if (feed) await feed.close();
    },
  };
}
