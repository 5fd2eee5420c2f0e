/**
 * Merged DescribeInstances for keygate's own reads: task watching, idle checks before a send, and
 * reconciling. Concurrent requests for one region share calls of at most 100 distinct ids; each
 * call is sent through the metered describe (one token of the shared describe bucket, its send-time
 * rule, hold-off and retries) and its answer is handed to every request that asked for some of
 * its ids. See docs/decisions/upstream.md ("Merged describe polls").
 *
 * - A call keeps taking in ids until its token arrives, so requests that queue anyway ride along.
 * - Pacing: once a call that was not full went for a region, the next one waits until `gapMs`
 *   after it, gathering what arrives meanwhile; a full call (100 ids) goes at once. So while polls
 *   keep coming, one replica sends at most one partial call per region per `gapMs`.
 * - A call only takes requests made before it was sent: its answer never predates a request.
 * - Each request keeps its own signal and deadline; leaving does not cancel the call for the
 *   others, and the call is abandoned only when nobody waits for it any more.
 * - A failed call fails every request it carried, with the same error (task watching reads that
 *   as "not seen"; STORE_UNAVAILABLE still reaches an idle check at once).
 * - Requests naming a tenant (policy lookups, charged to the tenant's budget) are not merged: they
 *   go straight to the metered describe; the instance cache batches those itself.
 */
import { abortError } from "../core/call-wait.js";
import type { Clock } from "../core/clock.js";
import { keygateError } from "../core/errors.js";
import type { InstanceInfo } from "../core/model.js";
import type { CallOptions } from "../core/ports.js";
import type { DescribeFor, LazyMeteredDescribe, MeteredDescribe } from "./metered-describe.js";

/** DescribeInstances takes at most 100 ids per call (docs/upstream-facts.md). */
export const MAX_DESCRIBE_IDS = 100;

export interface DescribeBatcherOptions {
  /** The metered describe; merged calls give their ids as a function, read when the token arrives. */
  describe: LazyMeteredDescribe;
  clock: Clock;
  /** Least ms between two partial merged calls of one region (KEYGATE_DESCRIBE_MERGE_MS). 0 = no pacing. */
  gapMs: number;
  /** Ids per call; 100 unless a test says otherwise. */
  maxIds?: number;
  hooks?: {
    /** A merged call was sent with `ids` distinct ids for `requests` requests. */
    merged?(ids: number, requests: number): void;
  };
}

interface Batch {
  region: string;
  /** Each id asked for, with how many requests still wait for it. */
  wanted: Map<string, number>;
  /** Requests still waiting for this call. */
  members: number;
  /** The ids sent, fixed when the first token arrived. */
  sent: string[] | undefined;
  launched: boolean;
  settled: boolean;
  /** Aborts the call once nobody waits for it. */
  call: AbortController;
  /** Cancels the pacing timer when the batch fills up or is abandoned first. */
  timer: AbortController;
  answer: Promise<Map<string, InstanceInfo>>;
  resolve(found: Map<string, InstanceInfo>): void;
  reject(err: unknown): void;
}

export function createDescribeBatcher(options: DescribeBatcherOptions): MeteredDescribe {
  const { describe, clock } = options;
  const gapMs = options.gapMs;
  const maxIds = options.maxIds ?? MAX_DESCRIBE_IDS;
  const hooks = options.hooks ?? {};
  /** Per region, the batch still taking in ids (not sent, not full). */
  const open = new Map<string, Batch>();
  /** Per region, when its last partial call was launched. */
  const lastPartial = new Map<string, number>();

  function newBatch(region: string): Batch {
    let resolve!: (found: Map<string, InstanceInfo>) => void;
    let reject!: (err: unknown) => void;
    const answer = new Promise<Map<string, InstanceInfo>>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // Members handle the rejection; this marks it handled when every member already left.
    answer.catch(() => undefined);
    const batch: Batch = {
      region,
      wanted: new Map(),
      members: 0,
      sent: undefined,
      launched: false,
      settled: false,
      call: new AbortController(),
      timer: new AbortController(),
      answer,
      resolve,
      reject,
    };
    open.set(region, batch);
    const at = (lastPartial.get(region) ?? Number.NEGATIVE_INFINITY) + gapMs;
    const wait = at - clock.now();
    if (wait > 0) {
      clock.sleep(wait, batch.timer.signal).then(
        () => launch(batch),
        () => undefined,
      );
    } else {
      // A microtask later: the request that opened it joins first, so it never goes out empty.
      queueMicrotask(() => launch(batch));
    }
    return batch;
  }

  function close(batch: Batch): void {
    if (open.get(batch.region) === batch) open.delete(batch.region);
  }

  /** The ids the call sends: read once, when its first token arrives; later joiners go elsewhere. */
  function idsOf(batch: Batch): string[] {
    if (batch.sent === undefined) {
      close(batch);
      batch.sent = [...batch.wanted].filter(([, n]) => n > 0).map(([id]) => id);
      hooks.merged?.(batch.sent.length, batch.members);
    }
    return batch.sent;
  }

  function launch(batch: Batch): void {
    if (batch.launched || batch.settled) return;
    batch.launched = true;
    batch.timer.abort();
    if (batch.wanted.size < maxIds) lastPartial.set(batch.region, clock.now());
    describe(batch.region, () => idsOf(batch), { signal: batch.call.signal, deadline: undefined }).then(
      (found) => {
        batch.settled = true;
        close(batch);
        batch.resolve(new Map(found.map((info) => [info.instanceId, info])));
      },
      (err: unknown) => {
        batch.settled = true;
        close(batch);
        batch.reject(err);
      },
    );
  }

  /** Adds what fits of `ids` to the region's open batch; returns the ids taken. */
  function join(batch: Batch, ids: readonly string[]): { taken: string[]; left: string[] } {
    const taken: string[] = [];
    const left: string[] = [];
    for (const id of ids) {
      const n = batch.wanted.get(id);
      if (n !== undefined) batch.wanted.set(id, n + 1);
      else if (batch.wanted.size < maxIds) batch.wanted.set(id, 1);
      else {
        left.push(id);
        continue;
      }
      taken.push(id);
    }
    batch.members += 1;
    if (batch.wanted.size >= maxIds) {
      // Full: nothing more can ride along, so waiting for the pacing gap would only add latency.
      close(batch);
      launch(batch);
    }
    return { taken, left };
  }

  /** A request stops waiting (answered, failed, cancelled or out of time). */
  function leave(batch: Batch, ids: readonly string[]): void {
    batch.members -= 1;
    if (batch.sent === undefined) {
      for (const id of ids) {
        const n = batch.wanted.get(id) ?? 0;
        if (n <= 1) batch.wanted.delete(id);
        else batch.wanted.set(id, n - 1);
      }
    }
    if (batch.members === 0 && !batch.settled) {
      // Nobody waits any more: free its place in the limiter's queue or abort the request.
      batch.settled = true;
      close(batch);
      batch.timer.abort();
      batch.call.abort(keygateError("CANCELLED", "every request of this DescribeInstances call went away"));
      batch.reject(abortError(batch.call.signal));
    }
  }

  /** `answer`, or the request's own cancellation or deadline, whichever comes first. */
  function untilGone<T>(answer: Promise<T>, call: CallOptions): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => reject(abortError(call.signal));
      call.signal.addEventListener("abort", onAbort, { once: true });
      const cancelTimer =
        call.deadline === undefined
          ? undefined
          : clock.timer(call.deadline - clock.now(), () =>
              reject(
                keygateError(
                  "DEADLINE_EXCEEDED",
                  "DescribeInstances: no answer before the caller's deadline",
                ),
              ),
            );
      answer
        .finally(() => {
          cancelTimer?.();
          call.signal.removeEventListener("abort", onAbort);
        })
        .then(resolve, reject);
    });
  }

  return async (region: string, ids: string[], call: CallOptions & DescribeFor) => {
    if (call.tenant !== undefined) return describe(region, ids, call);
    if (call.signal.aborted) throw abortError(call.signal);
    const unique = [...new Set(ids)];
    if (unique.length === 0) return [];
    const parts: { batch: Batch; ids: string[] }[] = [];
    try {
      for (let rest = unique; rest.length > 0;) {
        const batch = open.get(region) ?? newBatch(region);
        const { taken, left } = join(batch, rest);
        parts.push({ batch, ids: taken });
        rest = left;
      }
      const answers = await untilGone(Promise.all(parts.map((p) => p.batch.answer)), call);
      const out: InstanceInfo[] = [];
      for (const [i, part] of parts.entries()) {
        const found = answers[i]!;
        for (const id of part.ids) {
          const info = found.get(id);
          if (info) out.push(info);
        }
      }
      return out;
    } finally {
      for (const part of parts) leave(part.batch, part.ids);
    }
  };
}
