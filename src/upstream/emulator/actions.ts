import { ApiError } from "./api-error.js";
import type { Inventory, LiveInstance } from "./inventory.js";

/** Regions where the cloud offers AssociateInstancesKeyPairs (the API page's list). */
export const ASSOCIATE_REGIONS: ReadonlySet<string> = new Set([
  "ap-bangkok",
  "ap-beijing",
  "ap-chengdu",
  "ap-chongqing",
  "ap-guangzhou",
  "ap-hongkong",
  "ap-jakarta",
  "ap-nanjing",
  "ap-seoul",
  "ap-shanghai",
  "ap-shanghai-fsi",
  "ap-shenzhen-fsi",
  "ap-singapore",
  "ap-tokyo",
  "eu-frankfurt",
  "na-ashburn",
  "na-siliconvalley",
  "sa-saopaulo",
]);

const INSTANCE_ID = /^ins-[a-z0-9]{8}$/;
const KEY_ID = /^skey-[a-z0-9]{8}$/;
const MAX_IDS = 100;

/**
 * The two readings of `ForceStop` (docs/decisions/force-stop.md):
 * - "stopped-only" (the SDK's model comment; default): without ForceStop only STOPPED instances
 *   are accepted (a RUNNING one gets `UnsupportedOperation.InstanceStateRunning`); with it, a
 *   RUNNING instance is forced down first.
 * - "shutdown-first" (the API page's wording): a RUNNING instance is always shut down normally
 *   first; ForceStop decides whether it is forced down when the normal shutdown fails.
 * Under both, a RUNNING instance is started again once the keys are bound.
 */
export type ForceStopReading = "stopped-only" | "shutdown-first";
export const FORCE_STOP_READINGS: readonly ForceStopReading[] = ["stopped-only", "shutdown-first"];

export interface ActionContext {
  inventory: Inventory;
  /** X-TC-Region ("" when absent). */
  region: string;
  requestId: string;
  taskMs: number;
  forceStopReading?: ForceStopReading;
  /** Set = the tasks this request starts end FAILED with this message (fault `taskFailed`). */
  taskFails?: string | undefined;
  /** How long the action keeps answering busy after a task ended (see Inventory). */
  busyLagMs?: number;
  /** Filled by the action: instances it forced down (ForceStop used, not merely allowed). */
  forcedStops?: string[];
}

/** Instance states the action refuses, and the code each gets (RUNNING only without ForceStop). */
const STATE_CODES: Readonly<Record<string, string>> = {
  RUNNING: "UnsupportedOperation.InstanceStateRunning",
  PENDING: "UnsupportedOperation.InstanceStatePending",
  // Creation failed for good: not "being created". The page has no state code for it.
  LAUNCH_FAILED: "InvalidInstance.NotSupported",
  STOPPING: "UnsupportedOperation.InstanceStateStopping",
  STARTING: "UnsupportedOperation.InstanceStateStarting",
  REBOOTING: "UnsupportedOperation.InstanceStateRebooting",
  SHUTDOWN: "UnsupportedOperation.InstanceStateShutdown",
  TERMINATING: "UnsupportedOperation.InstanceStateTerminating",
  ISOLATING: "UnsupportedOperation.InstanceStateIsolating",
  FREEZING: "UnsupportedOperation.InstanceStateFreezing",
  RESCUE_MODE: "UnsupportedOperation.InstanceStateRescueMode",
  ENTER_RESCUE_MODE: "UnsupportedOperation.InstanceStateRescueMode",
  EXIT_RESCUE_MODE: "UnsupportedOperation.InstanceStateExitRescueMode",
  ENTER_SERVICE_LIVE_MIGRATE: "UnsupportedOperation.InstanceStateEnterServiceLiveMigrate",
  // The page names only the entering state; the rest of a live migration is answered alike (a guess).
  SERVICE_LIVE_MIGRATE: "UnsupportedOperation.InstanceStateEnterServiceLiveMigrate",
  EXIT_SERVICE_LIVE_MIGRATE: "UnsupportedOperation.InstanceStateEnterServiceLiveMigrate",
};

function requireRegion(region: string): void {
  if (region === "")
    throw new ApiError("MissingParameter", "The request is missing a required parameter `Region`.");
}

/** A string array parameter, or undefined when absent; wrong types are InvalidParameter. */
function stringArray(body: Record<string, unknown>, name: string): string[] | undefined {
  const v = body[name];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || !v.every((x) => typeof x === "string")) {
    throw new ApiError("InvalidParameter", `The parameter \`${name}\` must be an array of strings.`);
  }
  return v;
}

function checkIds(ids: string[], name: string, pattern: RegExp, malformed: string, noun: string): void {
  if (ids.length > MAX_IDS) {
    throw new ApiError(
      "InvalidParameterValue.LimitExceeded",
      `The number of \`${name}\` (${ids.length}) exceeds the limit of ${MAX_IDS}.`,
    );
  }
  const bad = ids.find((id) => !pattern.test(id));
  if (bad !== undefined) {
    // Not even shaped like an instance id (no `ins-` prefix): the page's other code for it.
    if (noun === "instance" && !/^ins-/i.test(bad)) {
      throw new ApiError(
        "InvalidParameterValue.InstanceIdMalformed",
        `Invalid instance ID \`${bad.slice(0, 64)}\`: enter a valid ID such as ins-xxxxxxxx.`,
      );
    }
    throw new ApiError(
      malformed,
      `Invalid ${noun} ID \`${bad.slice(0, 64)}\`: the specified ID has an invalid format.`,
    );
  }
}

/**
 * AssociateInstancesKeyPairs: validates like the cloud (all instances or none), then starts one
 * task per instance that binds the keys (replacing the old ones) after `taskMs`.
 */
export function associateInstancesKeyPairs(ctx: ActionContext, body: Record<string, unknown>): object {
  const instanceIds = stringArray(body, "InstanceIds");
  const keyIds = stringArray(body, "KeyIds");
  if (!instanceIds?.length) {
    throw new ApiError("MissingParameter", "The request is missing a required parameter `InstanceIds`.");
  }
  if (!keyIds?.length)
    throw new ApiError("MissingParameter", "The request is missing a required parameter `KeyIds`.");
  const forceStop = body.ForceStop ?? false;
  if (typeof forceStop !== "boolean") {
    throw new ApiError("InvalidParameterValue", "The parameter `ForceStop` must be a boolean.");
  }
  checkIds(instanceIds, "InstanceIds", INSTANCE_ID, "InvalidInstanceId.Malformed", "instance");
  checkIds(keyIds, "KeyIds", KEY_ID, "InvalidKeyPairId.Malformed", "key pair");
  return startAssociate(ctx, [...new Set(instanceIds)], [...new Set(keyIds)], forceStop);
}

function startAssociate(
  ctx: ActionContext,
  instanceIds: string[],
  keyIds: string[],
  forceStop: boolean,
): object {
  requireRegion(ctx.region);
  if (!ASSOCIATE_REGIONS.has(ctx.region)) {
    throw new ApiError(
      "UnsupportedRegion",
      `The action does not support the region \`${ctx.region.slice(0, 64)}\`.`,
    );
  }
  const instances: LiveInstance[] = [];
  const missing: string[] = [];
  for (const id of instanceIds) {
    const inst = ctx.inventory.get(ctx.region, id);
    if (inst) instances.push(inst);
    else missing.push(id);
  }
  if (missing.length > 0) {
    throw new ApiError("InvalidInstanceId.NotFound", `The instance \`${missing.join(",")}\` does not exist.`);
  }
  const missingKeys = keyIds.filter((k) => !ctx.inventory.hasKeyPair(ctx.region, k));
  if (missingKeys.length > 0) {
    throw new ApiError(
      "InvalidKeyPairId.NotFound",
      `The key pair \`${missingKeys.join(",")}\` does not exist.`,
    );
  }
  for (const inst of instances) {
    if (/windows/i.test(inst.osName)) {
      throw new ApiError(
        "UnsupportedOperation.InstanceOsWindows",
        `The instance ${inst.instanceId} with the ${inst.osName} operating system does not support this operation.`,
      );
    }
  }
  for (const inst of instances) {
    const busy = ctx.inventory.busyCode(inst.instanceId);
    if (busy !== undefined) {
      throw new ApiError(
        busy,
        busy.startsWith("MutexOperation")
          ? `An identical job is running on the instance ${inst.instanceId}.`
          : `The instance ${inst.instanceId} has an operation in progress. Please try again later.`,
      );
    }
  }
  const reading = ctx.forceStopReading ?? "stopped-only";
  for (const inst of instances) {
    if (inst.instanceState === "STOPPED") continue;
    if (inst.instanceState === "RUNNING" && (forceStop || reading === "shutdown-first")) continue;
    const code = STATE_CODES[inst.instanceState] ?? "UnsupportedOperation";
    throw new ApiError(
      code,
      `The instance ${inst.instanceId} in the ${inst.instanceState} status is not supported for this operation.`,
    );
  }
  for (const inst of instances) {
    let fails = ctx.taskFails;
    if (inst.instanceState === "RUNNING") {
      // "stopped-only": ForceStop forces it down. "shutdown-first": a normal shutdown first; forced
      // only when that fails and ForceStop allows it, else the task fails and nothing is bound.
      const normalFails = ctx.inventory.normalShutdownFails(inst.instanceId);
      if (reading === "stopped-only" || normalFails) {
        if (forceStop) ctx.forcedStops?.push(inst.instanceId);
        else fails ??= "The instance could not be shut down normally and ForceStop is FALSE.";
      }
    }
    ctx.inventory.startTask(inst.instanceId, {
      operation: "AssociateInstancesKeyPairs",
      requestId: ctx.requestId,
      durationMs: ctx.taskMs,
      // A RUNNING instance is stopped, bound, then started again: it ends as it began.
      then: { keyIds, instanceState: inst.instanceState },
      fails,
      busyLagMs: ctx.busyLagMs ?? 0,
    });
  }
  return {};
}

/** The cloud's JSON shape of one instance (the fields keygate and people look at). */
export function instanceJson(i: LiveInstance): object {
  return {
    InstanceId: i.instanceId,
    InstanceName: i.instanceName,
    InstanceState: i.instanceState,
    OsName: i.osName,
    Placement: { Zone: i.zone, ProjectId: i.projectId },
    Tags: Object.entries(i.tags).map(([Key, Value]) => ({ Key, Value })),
    LoginSettings: { KeyIds: i.keyIds.length > 0 ? i.keyIds : null },
    LatestOperation: i.latestOperation,
    LatestOperationState: i.latestOperationState,
    LatestOperationRequestId: i.latestOperationRequestId,
    LatestOperationErrorMsg: i.latestOperationErrorMsg,
  };
}

function intParam(
  body: Record<string, unknown>,
  name: string,
  dflt: number,
  min: number,
  max: number,
): number {
  const v = body[name] ?? dflt;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
    throw new ApiError(
      "InvalidParameterValue",
      `The parameter \`${name}\` must be an integer in [${min}, ${max}].`,
    );
  }
  return v;
}

/**
 * DescribeInstances by `InstanceIds` (unknown ids are simply absent, as upstream) or by
 * Offset/Limit paging over the region. `Filters` are not emulated.
 */
export function describeInstances(ctx: ActionContext, body: Record<string, unknown>): object {
  requireRegion(ctx.region);
  if (!ASSOCIATE_REGIONS.has(ctx.region)) {
    throw new ApiError("UnsupportedRegion", `The region \`${ctx.region.slice(0, 64)}\` is not supported.`);
  }
  const ids = stringArray(body, "InstanceIds");
  if (ids !== undefined) {
    checkIds(ids, "InstanceIds", INSTANCE_ID, "InvalidInstanceId.Malformed", "instance");
    const found = [...new Set(ids)].flatMap((id) => ctx.inventory.get(ctx.region, id) ?? []);
    return { TotalCount: found.length, InstanceSet: found.map(instanceJson) };
  }
  const offset = intParam(body, "Offset", 0, 0, Number.MAX_SAFE_INTEGER);
  const limit = intParam(body, "Limit", 20, 1, 100);
  const all = ctx.inventory.list(ctx.region);
  return { TotalCount: all.length, InstanceSet: all.slice(offset, offset + limit).map(instanceJson) };
}
