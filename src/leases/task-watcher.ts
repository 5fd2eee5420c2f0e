import type { Clock } from "../core/clock.js";
import type { InstanceInfo, InstanceOutcome } from "../core/model.js";
import type { CallOptions, TaskWatcher } from "../core/ports.js";
import { pause, throwIfAborted } from "../core/call-wait.js";
import { isStoreDown } from "../store/local-share-mode.js";
import { TRANSITIONAL_INSTANCE_STATES } from "../core/cloud-errors.js";

/**
 * Idle = the cloud would take a new operation now: no task runs, and the instance is not passing
 * between states by itself (STOPPING, STARTING, …: docs/decisions.md "Transitional instance states").
 */
export const isIdle = (info: Pick<InstanceInfo, "latestOperationState" | "instanceState">): boolean =>
  info.latestOperationState !== "OPERATING" && !TRANSITIONAL_INSTANCE_STATES.has(info.instanceState);

export interface TaskWatcherOptions {
  /** DescribeInstances for ≤ 100 ids; the caller routes it through the shared 40/s bucket. */
  describe: (region: string, instanceIds: string[], opts: CallOptions) => Promise<InstanceInfo[]>;
  clock: Clock;
  pollMs?: number;
  /** Upper bound of one watch: the cloud documents no task duration, so we pick one. */
  maxWaitMs?: number;
  /**
   * How long an instance must stay idle under another operation's record before the watch
   * concludes ours was replaced (its outcome is then reported as not visible). Default
   * max(5 s, 4 polls): longer than DescribeInstances takes to show a new task.
   */
  replacedAfterMs?: number;
}

/** DescribeInstances takes at most 100 ids per call. */
const BATCH = 100;

/**
 * Follows the cloud task an associate started on each instance (G3: the lease is kept until
 * it ends). An instance whose latest operation is not yet ours counts as still OPERATING:
 * DescribeInstances may lag behind the call that started the task.
 */
export function createTaskWatcher(options: TaskWatcherOptions): TaskWatcher {
  const { describe, clock } = options;
  const pollMs = options.pollMs ?? 500;
  const maxWaitMs = options.maxWaitMs ?? 120_000;
  const replacedAfterMs = options.replacedAfterMs ?? Math.max(5_000, 4 * pollMs);

  /**
   * One round of DescribeInstances over `ids`, in parallel batches; failures count as "not seen".
   * With `storeFailsFast`, a round that could not be sent because the shared store is down throws
   * STORE_UNAVAILABLE instead: a caller that has not sent anything yet should hear it at once,
   * not at its deadline.
   */
  async function look(
    region: string,
    ids: string[],
    opts: CallOptions,
    storeFailsFast = false,
  ): Promise<Map<string, InstanceInfo>> {
    const batches: string[][] = [];
    for (let i = 0; i < ids.length; i += BATCH) batches.push(ids.slice(i, i + BATCH));
    const replies = await Promise.allSettled(batches.map((b) => describe(region, b, opts)));
    throwIfAborted(opts);
    if (storeFailsFast) {
      const down = replies.find(
        (r): r is PromiseRejectedResult => r.status === "rejected" && isStoreDown(r.reason),
      );
      if (down) throw down.reason as Error;
    }
    const seen = new Map<string, InstanceInfo>();
    for (const r of replies)
      if (r.status === "fulfilled") for (const info of r.value) seen.set(info.instanceId, info);
    return seen;
  }

  /** Polls until `done(pending ids)` is empty or time runs out; returns what is still pending. */
  async function poll(
    region: string,
    instanceIds: string[],
    opts: CallOptions,
    settle: (info: InstanceInfo) => boolean,
    storeFailsFast = false,
  ): Promise<Set<string>> {
    const pending = new Set(instanceIds);
    const stopAt = Math.min(clock.now() + maxWaitMs, opts.deadline ?? Infinity);
    for (;;) {
      throwIfAborted(opts);
      const seen = await look(region, [...pending], opts, storeFailsFast);
      for (const [id, info] of seen) if (pending.has(id) && settle(info)) pending.delete(id);
      const left = stopAt - clock.now();
      if (pending.size === 0 || left <= 0) return pending;
      await pause(clock, Math.min(pollMs, left), opts.signal);
    }
  }

  return {
    async waitForTasks(region, instanceIds, requestId, opts) {
      const ids = [...new Set(instanceIds)];
      const finished = new Map<string, InstanceOutcome>();
      /** When each instance was first seen idle under someone else's operation record. */
      const foreignSince = new Map<string, number>();
      await poll(region, ids, opts, (info) => {
        const ours = info.latestOperationRequestId === requestId;
        if (!ours) {
          // Not ours yet (DescribeInstances may lag), or a later operation replaced our record. Once
          // the instance has stayed idle under a foreign record for a while, nothing of ours runs.
          if (info.latestOperationState === "OPERATING") {
            foreignSince.delete(info.instanceId);
            return false;
          }
          const since = foreignSince.get(info.instanceId) ?? clock.now();
          foreignSince.set(info.instanceId, since);
          if (clock.now() - since < replacedAfterMs) return false;
          finished.set(info.instanceId, {
            instanceId: info.instanceId,
            state: "OPERATING",
            message: `a later operation (${info.latestOperation ?? "unknown"}) replaced this task's record; its outcome is not visible`,
          });
          return true;
        }
        if (info.latestOperationState === "OPERATING") return false;
        const failed = info.latestOperationState === "FAILED";
        finished.set(info.instanceId, {
          instanceId: info.instanceId,
          state: failed ? "FAILED" : "SUCCESS",
          message: failed ? (info.latestOperationErrorMsg ?? "") : "",
        });
        return true;
      });
      return ids.map(
        (id) =>
          finished.get(id) ?? {
            instanceId: id,
            state: "OPERATING",
            message: "the cloud task had not finished yet",
          },
      );
    },
    async waitUntilIdle(region, instanceIds, opts) {
      // Resolves at the time limit too: the caller decides what a still busy instance means.
      const last = new Map<string, InstanceInfo>();
      await poll(
        region,
        [...new Set(instanceIds)],
        opts,
        (info) => {
          last.set(info.instanceId, info);
          return isIdle(info);
        },
        true,
      );
      return [...last.values()];
    },
  };
}
