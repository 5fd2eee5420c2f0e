import type { InstanceInfo, TaskState } from "../core/model.js";

const TASK_STATES: ReadonlySet<string> = new Set(["SUCCESS", "FAILED", "OPERATING"]);

const str = (v: unknown): string | null => (typeof v === "string" ? v : null);
const obj = (v: unknown): Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};

/**
 * One `InstanceSet` entry of DescribeInstances as keygate's InstanceInfo. Tolerant of nulls and
 * missing fields (the cloud returns null for "never operated", empty key lists, …): policy
 * decisions treat an absent tag as absent, never as a crash.
 */
export function parseInstance(raw: unknown): InstanceInfo | undefined {
  const r = obj(raw);
  const instanceId = str(r.InstanceId);
  if (instanceId === null) return undefined;
  const placement = obj(r.Placement);
  const tags: Record<string, string> = {};
  if (Array.isArray(r.Tags)) {
    for (const t of r.Tags) {
      const tag = obj(t);
      const key = str(tag.Key);
      if (key !== null) tags[key] = str(tag.Value) ?? "";
    }
  }
  const keyIds = obj(r.LoginSettings).KeyIds;
  const opState = str(r.LatestOperationState);
  return {
    instanceId,
    instanceState: str(r.InstanceState) ?? "",
    osName: str(r.OsName) ?? "",
    projectId: typeof placement.ProjectId === "number" ? placement.ProjectId : 0,
    tags,
    keyIds: Array.isArray(keyIds) ? keyIds.filter((k): k is string => typeof k === "string") : [],
    latestOperation: str(r.LatestOperation),
    latestOperationState: opState !== null && TASK_STATES.has(opState) ? (opState as TaskState) : null,
    latestOperationRequestId: str(r.LatestOperationRequestId),
    latestOperationErrorMsg: str(r.LatestOperationErrorMsg),
  };
}

/** The InstanceSet of a DescribeInstances Response. */
export function parseInstanceSet(response: unknown): InstanceInfo[] {
  const set = obj(response).InstanceSet;
  return Array.isArray(set) ? set.flatMap((i) => parseInstance(i) ?? []) : [];
}
