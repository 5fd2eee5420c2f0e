import type { Clock } from "./clock.js";
import { keygateError } from "./errors.js";
import type { AssociateInput, InstanceInfo, InstanceOutcome } from "./model.js";
import type { CallOptions, TaskWatcher } from "./ports.js";

/**
 * Asking the cloud whether a send whose outcome is unknown was applied, before anything is sent
 * again (docs/decisions/operation-lifecycle.md, "Reconcile before any resend").
 */

/** What is known about the earlier sends of this operation. */
export interface SendHistory {
  /** When the last send that may have reached the cloud started (epoch ms); 0 = long ago. */
  sentAt: number;
  /** Request ids the cloud gave for earlier sends (usually none: the reply was lost). */
  requestIds: readonly string[];
}

export type Verdict =
  | { applied: true; requestId: string; instances: InstanceOutcome[] }
  | { applied: false; instances: InstanceInfo[] };

export interface ReconcileDeps {
  clock: Clock;
  tasks: Pick<TaskWatcher, "waitUntilIdle">;
  /**
   * How long after a send's start an original may still reach the cloud. Past it, a cloud that
   * shows no trace of the call is taken not to have received it.
   */
  resendHorizonMs: number;
}

/**
 * Waits until an original still on its way would have arrived, then until no instance is busy,
 * and reads the instances once: applied when every instance has all requested keys bound, or its
 * latest operation is one of ours. Throws INSTANCE_BUSY when an instance is still busy at the end
 * of the wait (never resend then), and the abort reason when the caller's time runs out.
 */
export async function reconcile(
  deps: ReconcileDeps,
  input: AssociateInput,
  history: SendHistory,
  opts: CallOptions,
): Promise<Verdict> {
  const { clock } = deps;
  const wait = history.sentAt + deps.resendHorizonMs - clock.now();
  if (wait > 0) await clock.sleep(wait, opts.signal);
  const infos = await deps.tasks.waitUntilIdle(input.region, input.instanceIds, opts);
  return judge(input, history, infos);
}

/** Pure: the verdict on one settled DescribeInstances view of the instances. */
export function judge(input: AssociateInput, history: SendHistory, infos: readonly InstanceInfo[]): Verdict {
  const byId = new Map(infos.map((i) => [i.instanceId, i]));
  const ids = [...new Set(input.instanceIds)];
  const seen: InstanceInfo[] = [];
  for (const id of ids) {
    const info = byId.get(id);
    if (!info || info.latestOperationState === "OPERATING") {
      throw keygateError(
        "INSTANCE_BUSY",
        `instance ${id} ${info ? "is still busy" : "could not be read"}: keygate cannot tell whether an earlier send was applied, so it sends nothing`,
      );
    }
    seen.push(info);
  }
  const ours = new Set(history.requestIds);
  const bound = (i: InstanceInfo) => input.keyIds.every((k) => i.keyIds.includes(k));
  const fromUs = (i: InstanceInfo) =>
    i.latestOperationRequestId !== null && ours.has(i.latestOperationRequestId);
  if (!seen.every((i) => bound(i) || fromUs(i))) return { applied: false, instances: seen };
  return { applied: true, requestId: requestIdFound(seen, ours), instances: seen.map(outcomeOf(ours)) };
}

/** One of ours if the cloud shows it; else the id every instance shares (one call applied them all). */
function requestIdFound(infos: readonly InstanceInfo[], ours: ReadonlySet<string>): string {
  const latest = infos.map((i) => i.latestOperationRequestId);
  const mine = latest.find((r) => r !== null && ours.has(r));
  if (mine) return mine;
  const first = latest[0] ?? null;
  if (first !== null && latest.every((r) => r === first)) return first;
  return latest.find((r) => r !== null) ?? "";
}

function outcomeOf(ours: ReadonlySet<string>) {
  return (i: InstanceInfo): InstanceOutcome => {
    // Keys bound = the requested state holds, whatever operation came last.
    const failed =
      i.latestOperationState === "FAILED" &&
      i.latestOperationRequestId !== null &&
      ours.has(i.latestOperationRequestId);
    return {
      instanceId: i.instanceId,
      state: failed ? "FAILED" : "SUCCESS",
      message: failed ? (i.latestOperationErrorMsg ?? "") : "",
    };
  };
}
