import { readFileSync } from "node:fs";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import type { Clock } from "../../core/clock.js";

/** One instance as configured (file or defaults). */
export interface InstanceSpec {
  instanceId: string;
  region: string;
  zone: string;
  projectId: number;
  osName: string;
  /** RUNNING, STOPPED, PENDING, STOPPING, STARTING, REBOOTING, SHUTDOWN, TERMINATING, … */
  instanceState: string;
  instanceName?: string | undefined;
  tags?: Record<string, string> | undefined;
  keyIds?: string[] | undefined;
  /**
   * Under the "shutdown-first" ForceStop reading (docs/decisions/force-stop.md): a normal shutdown
   * of this instance fails (a hung guest), so only ForceStop gets it down.
   */
  normalShutdownFails?: boolean | undefined;
}

/**
 * A key pair. Real key pairs are regional: name the region, or the regions it was imported into.
 * Without `region` it exists in every region, a shorthand for tests that do not care.
 */
export interface KeyPairSpec {
  keyId: string;
  region?: string | string[] | undefined;
}

export interface InventorySpec {
  instances: InstanceSpec[];
  keyPairs: KeyPairSpec[];
}

const instanceSchema = z
  .object({
    instanceId: z.string().regex(/^ins-[a-z0-9]{8}$/),
    region: z.string().min(1),
    zone: z.string().min(1),
    projectId: z.number().int().nonnegative(),
    osName: z.string(),
    instanceState: z.string().regex(/^[A-Z_]+$/),
    instanceName: z.string().optional(),
    tags: z.record(z.string(), z.string()).optional(),
    keyIds: z.array(z.string().regex(/^skey-[a-z0-9]{8}$/)).optional(),
    normalShutdownFails: z.boolean().optional(),
  })
  .strict();

const inventorySchema = z
  .object({
    instances: z.array(instanceSchema),
    keyPairs: z.array(
      z
        .object({
          keyId: z.string().regex(/^skey-[a-z0-9]{8}$/),
          region: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional(),
        })
        .strict(),
    ),
  })
  .strict();

/** Reads an inventory from a JSON or YAML file (YAML is a superset of JSON); throws listing every problem. */
export function loadInventoryFile(path: string): InventorySpec {
  const parsed = inventorySchema.safeParse(parseYaml(readFileSync(path, "utf8")));
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`);
    throw new Error(`invalid emulator inventory ${path}:\n  ${problems.join("\n  ")}`);
  }
  return parsed.data;
}

const linux = "TencentOS Server 3.1 (TK4)";
const ubuntu = "Ubuntu Server 22.04 LTS 64bit";

/**
 * A dozen instances across ap-guangzhou and ap-shanghai covering every case keygate meets:
 * stopped Linux (the happy path), RUNNING (needs ForceStop), Windows, transitional states, two
 * teams' tags and projects.
 */
export function defaultInventory(): InventorySpec {
  const gz = (n: number, zone = 3) => ({
    region: "ap-guangzhou",
    zone: `ap-guangzhou-${zone}`,
    id: `ins-gz00000${n}`,
  });
  const sh = (n: number) => ({ region: "ap-shanghai", zone: "ap-shanghai-2", id: `ins-sh00000${n}` });
  const inst = (
    at: { region: string; zone: string; id: string },
    state: string,
    projectId: number,
    tags: Record<string, string>,
    osName = linux,
  ): InstanceSpec => ({
    instanceId: at.id,
    region: at.region,
    zone: at.zone,
    projectId,
    osName,
    instanceState: state,
    instanceName: `${tags.owner ?? "shared"}-${at.id.slice(4)}`,
    tags,
    keyIds: [],
  });
  return {
    instances: [
      inst(gz(1), "STOPPED", 1001, { owner: "team-a", env: "dev" }),
      inst(gz(2), "STOPPED", 1001, { owner: "team-a", env: "prod" }, ubuntu),
      inst(gz(3, 4), "STOPPED", 1002, { owner: "team-b", env: "dev" }),
      inst(gz(4), "RUNNING", 1001, { owner: "team-a", env: "dev" }),
      inst(gz(5), "STOPPED", 1001, { owner: "team-a", env: "dev" }, "Windows Server 2019 DataCenter 64bit"),
      inst(gz(6), "PENDING", 1001, { owner: "team-a" }),
      inst(gz(7), "STOPPING", 1002, { owner: "team-b" }),
      inst(gz(8), "STOPPED", 0, {}),
      inst(sh(1), "STOPPED", 1001, { owner: "team-a", env: "dev" }),
      inst(sh(2), "STOPPED", 1002, { owner: "team-b", env: "prod" }, ubuntu),
      inst(sh(3), "RUNNING", 1002, { owner: "team-b", env: "prod" }),
      inst(sh(4), "SHUTDOWN", 1001, { owner: "team-a" }),
      inst(sh(5), "REBOOTING", 1002, { owner: "team-b" }),
    ],
    keyPairs: [
      { keyId: "skey-aaaaaaaa", region: ["ap-guangzhou", "ap-shanghai"] },
      { keyId: "skey-bbbbbbbb", region: ["ap-guangzhou", "ap-shanghai"] },
      { keyId: "skey-cccccccc", region: "ap-guangzhou" },
      { keyId: "skey-dddddddd", region: "ap-shanghai" },
    ],
  };
}

export type OperationState = "OPERATING" | "SUCCESS" | "FAILED";

/** A cloud task in progress on an instance; applied lazily once the clock passes `endsAt`. */
interface Task {
  endsAt: number;
  /** What the instance looks like when the task succeeds. */
  then: { keyIds?: string[]; instanceState: string };
  /** The error an overlapping operation gets while this task runs. */
  busyCode: string;
  /** Set = the task ends FAILED with this message; nothing of `then` but the state is applied. */
  fails?: string | undefined;
  /**
   * How long after the task ended the action still answers `busyCode` although DescribeInstances
   * shows the instance idle: the two views of the cloud lagging behind each other.
   */
  busyLagMs: number;
}

/** An instance passing through a state that ends by itself (STOPPING, STARTING, …). */
interface Transition {
  endsAt: number;
  then: string;
}

/** An instance as the cloud currently sees it. */
export interface LiveInstance {
  instanceId: string;
  region: string;
  zone: string;
  projectId: number;
  osName: string;
  instanceState: string;
  instanceName: string;
  tags: Record<string, string>;
  keyIds: string[];
  latestOperation: string | null;
  latestOperationState: OperationState | null;
  latestOperationRequestId: string | null;
  latestOperationErrorMsg: string | null;
}

interface Slot {
  live: LiveInstance;
  task?: Task | undefined;
  transition?: Transition | undefined;
  /** After a task with a busy lag ended: its code, until `until`. */
  lag?: { code: string; until: number } | undefined;
  normalShutdownFails: boolean;
}

/** The emulated account: instances (with their running tasks) and key pairs. */
export interface Inventory {
  /** The instance in `region`, its finished task applied first; undefined when absent. */
  get(region: string, instanceId: string): LiveInstance | undefined;
  list(region: string): LiveInstance[];
  /** Every instance, every region (for admin dumps and tests). */
  all(): LiveInstance[];
  hasKeyPair(region: string, keyId: string): boolean;
  /** The code an operation on the instance gets right now, or undefined when it is idle. */
  busyCode(instanceId: string): string | undefined;
  /** Starts a cloud task: OPERATING now, `then` applied after `durationMs` (or FAILED with `fails`). */
  startTask(
    instanceId: string,
    task: {
      operation: string;
      requestId: string;
      durationMs: number;
      then: Task["then"];
      busyCode?: string;
      fails?: string | undefined;
      busyLagMs?: number;
    },
  ): void;
  /**
   * Puts the instance in `state` now; with `forMs`, it passes to `then` (default STOPPED) after
   * that long by itself, as STOPPING, STARTING and the like do.
   */
  setState(instanceId: string, state: string, opts?: { forMs?: number; then?: string }): void;
  /** Whether a normal shutdown of the instance fails (see InstanceSpec.normalShutdownFails). */
  normalShutdownFails(instanceId: string): boolean;
  /** Drops every change and task: back to the spec. */
  reset(): void;
}

export function createInventory(spec: InventorySpec, clock: Clock): Inventory {
  let slots = new Map<string, Slot>();
  const build = () => {
    slots = new Map(
      spec.instances.map((i): [string, Slot] => [
        i.instanceId,
        {
          live: {
            instanceId: i.instanceId,
            region: i.region,
            zone: i.zone,
            projectId: i.projectId,
            osName: i.osName,
            instanceState: i.instanceState,
            instanceName: i.instanceName ?? i.instanceId,
            tags: { ...i.tags },
            keyIds: [...(i.keyIds ?? [])],
            latestOperation: null,
            latestOperationState: null,
            latestOperationRequestId: null,
            latestOperationErrorMsg: null,
          },
          normalShutdownFails: i.normalShutdownFails === true,
        },
      ]),
    );
  };
  build();

  // Tasks finish lazily on read, so a fake clock drives them without timers.
  const settle = (slot: Slot): LiveInstance => {
    const now = clock.now();
    const task = slot.task;
    if (task && now >= task.endsAt) {
      if (task.then.keyIds && task.fails === undefined) slot.live.keyIds = [...task.then.keyIds];
      slot.live.instanceState = task.then.instanceState;
      slot.live.latestOperationState = task.fails === undefined ? "SUCCESS" : "FAILED";
      slot.live.latestOperationErrorMsg = task.fails ?? null;
      if (task.busyLagMs > 0) slot.lag = { code: task.busyCode, until: task.endsAt + task.busyLagMs };
      slot.task = undefined;
    }
    if (slot.lag && now >= slot.lag.until) slot.lag = undefined;
    if (slot.transition && now >= slot.transition.endsAt) {
      slot.live.instanceState = slot.transition.then;
      slot.transition = undefined;
    }
    return slot.live;
  };
  const copy = (l: LiveInstance): LiveInstance => ({ ...l, tags: { ...l.tags }, keyIds: [...l.keyIds] });

  return {
    get(region, instanceId) {
      const slot = slots.get(instanceId);
      if (!slot || slot.live.region !== region) return undefined;
      return copy(settle(slot));
    },
    list(region) {
      return [...slots.values()]
        .filter((s) => s.live.region === region)
        .map((s) => copy(settle(s)))
        .sort((a, b) => a.instanceId.localeCompare(b.instanceId));
    },
    all() {
      return [...slots.values()].map((s) => copy(settle(s)));
    },
    hasKeyPair(region, keyId) {
      return spec.keyPairs.some(
        (k) =>
          k.keyId === keyId &&
          (k.region === undefined ||
            (Array.isArray(k.region) ? k.region.includes(region) : k.region === region)),
      );
    },
    busyCode(instanceId) {
      const slot = slots.get(instanceId);
      if (!slot) return undefined;
      settle(slot);
      return slot.task?.busyCode ?? slot.lag?.code;
    },
    startTask(instanceId, t) {
      const slot = slots.get(instanceId);
      if (!slot) throw new Error(`no instance ${instanceId}`);
      settle(slot);
      slot.task = {
        endsAt: clock.now() + t.durationMs,
        then: t.then,
        busyCode: t.busyCode ?? "MutexOperation.TaskRunning",
        fails: t.fails,
        busyLagMs: t.busyLagMs ?? 0,
      };
      slot.lag = undefined;
      slot.live.latestOperation = t.operation;
      slot.live.latestOperationState = "OPERATING";
      slot.live.latestOperationRequestId = t.requestId;
      slot.live.latestOperationErrorMsg = null;
    },
    setState(instanceId, state, opts = {}) {
      const slot = slots.get(instanceId);
      if (!slot) throw new Error(`no instance ${instanceId}`);
      if (!/^[A-Z_]+$/.test(state)) throw new Error(`not an instance state: ${state.slice(0, 40)}`);
      settle(slot);
      slot.live.instanceState = state;
      slot.transition =
        opts.forMs === undefined
          ? undefined
          : { endsAt: clock.now() + opts.forMs, then: opts.then ?? "STOPPED" };
    },
    normalShutdownFails: (instanceId) => slots.get(instanceId)?.normalShutdownFails === true,
    reset: build,
  };
}
