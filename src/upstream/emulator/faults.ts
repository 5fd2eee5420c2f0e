import { z } from "zod";

/**
 * What can go wrong between keygate and the cloud.
 * - `http500` / `http503`: a load balancer error page (HTTP status, HTML body).
 * - `hang`: the request is never answered and never applied (connection kept open).
 * - `lostReply`: the request IS applied, then never answered — the timeout that reached the cloud.
 * - `lateReply`: applied at once, answered only after the rule's `delayMs` (e.g. longer than the
 *   client's timeout, so the client gives up although the cloud acted).
 * - `lateApply`: held for `delayMs`, then applied and answered: an original still on its way, which
 *   reaches the cloud after the client gave up on it (and maybe after a resend).
 * - `stallBody`: applied, status and headers sent, the body started and never finished.
 * - `nonJson`: HTTP 200 with a body that is not JSON.
 * - `noResponse`: HTTP 200 JSON without the `Response` envelope.
 * - `code`: any cloud error code (the rule's `code`, optional `message`), answered in the normal
 *   envelope with a RequestId, nothing applied: every code the API page lists can be produced.
 * - `taskFailed`: applied and answered OK, but the cloud tasks it starts end FAILED (with the
 *   rule's `message` as LatestOperationErrorMsg) and bind nothing (AssociateInstancesKeyPairs
 *   unless the rule names another action).
 * - the rest: shorthands for `code` with a fixed code, answered in the normal envelope.
 *   `mutexTaskRunning` / `operationInProgress` (and `code` with a busy code) hit only
 *   AssociateInstancesKeyPairs unless the rule names another action, so DescribeInstances keeps
 *   showing the instance idle: "busy while idle".
 * A rule with `instanceIds` hits only requests naming one of them (in `InstanceIds`).
 */
export const FAULT_KINDS = [
  "http500",
  "http503",
  "hang",
  "lostReply",
  "lateReply",
  "lateApply",
  "stallBody",
  "nonJson",
  "noResponse",
  "internalError",
  "requestLimitExceeded",
  "mutexTaskRunning",
  "operationInProgress",
  "code",
  "taskFailed",
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/** The API error code each code-shaped fault answers with. */
export const FAULT_CODES: Partial<Record<FaultKind, string>> = {
  internalError: "InternalError",
  requestLimitExceeded: "RequestLimitExceeded",
  mutexTaskRunning: "MutexOperation.TaskRunning",
  operationInProgress: "OperationDenied.InstanceOperationInProgress",
};

/** Kinds that need the rule's `delayMs`. */
export const DELAYED_KINDS: ReadonlySet<FaultKind> = new Set(["lateReply", "lateApply"]);
/** Kinds that apply the request and then fail to answer it properly. */
export const APPLYING_KINDS: ReadonlySet<FaultKind> = new Set(["lostReply", "lateReply", "stallBody"]);
/** The shape of a cloud error code: dot-separated words, e.g. `UnauthorizedOperation.MFAExpired`. */
export const CLOUD_CODE = /^[A-Z][A-Za-z0-9]*(\.[A-Za-z0-9]+)*$/;
/** Codes that say "instance busy". */
export const isBusyCode = (code: string): boolean =>
  code.startsWith("MutexOperation.") || code === "OperationDenied.InstanceOperationInProgress";
/** Code faults that say "instance busy": by default they hit only the action that can be busy. */
const BUSY_KINDS: ReadonlySet<FaultKind> = new Set(["mutexTaskRunning", "operationInProgress"]);
const BUSY_DEFAULT_ACTION = "AssociateInstancesKeyPairs";

const ruleSchema = z
  .object({
    kind: z.enum(FAULT_KINDS),
    /** Only for this action (e.g. "AssociateInstancesKeyPairs"); all actions when absent. */
    action: z.string().optional(),
    /** Chance per matching request, 0..1. */
    probability: z.number().min(0).max(1).optional(),
    /** Hit exactly the next N matching requests, then the rule disappears. */
    next: z.number().int().positive().optional(),
    /** `lateReply` / `lateApply`: how long the answer (or the whole request) is held, ms. */
    delayMs: z.number().int().nonnegative().max(600_000).optional(),
    /** `code`: the cloud error code to answer. */
    code: z.string().max(100).regex(CLOUD_CODE, "must look like a cloud error code").optional(),
    /** `code`: the error's message; `taskFailed`: the failed task's error message. */
    message: z.string().max(500).optional(),
    /** Only requests naming one of these instances. */
    instanceIds: z.array(z.string().min(1)).min(1).max(100).optional(),
  })
  .strict()
  .superRefine((rule, ctx) => {
    if (DELAYED_KINDS.has(rule.kind) && rule.delayMs === undefined) {
      ctx.addIssue({ code: "custom", path: ["delayMs"], message: `${rule.kind} needs delayMs` });
    }
    if (!DELAYED_KINDS.has(rule.kind) && rule.delayMs !== undefined) {
      ctx.addIssue({ code: "custom", path: ["delayMs"], message: `${rule.kind} takes no delayMs` });
    }
    if (rule.kind === "code" && rule.code === undefined) {
      ctx.addIssue({ code: "custom", path: ["code"], message: "code needs the cloud error code to answer" });
    }
    if (rule.kind !== "code" && rule.code !== undefined) {
      ctx.addIssue({ code: "custom", path: ["code"], message: `${rule.kind} takes no code` });
    }
    if (rule.kind !== "code" && rule.kind !== "taskFailed" && rule.message !== undefined) {
      ctx.addIssue({ code: "custom", path: ["message"], message: `${rule.kind} takes no message` });
    }
  });
export type FaultRule = z.infer<typeof ruleSchema>;

export const faultSettingsSchema = z
  .object({
    latencyMs: z.number().nonnegative().default(0),
    jitterMs: z.number().nonnegative().default(0),
    rules: z.array(ruleSchema).default([]),
  })
  .strict();
/** What `POST /__emulator/faults` takes; omitted fields are reset to none. */
export type FaultSettings = z.input<typeof faultSettingsSchema>;

/** Runtime fault control (the admin HTTP path goes through the same object). */
export interface Faults {
  /** Replaces the whole setting; throws listing every problem when invalid. */
  set(settings: FaultSettings): void;
  get(): z.output<typeof faultSettingsSchema>;
  /** Delay to add before answering this request. */
  latency(): number;
  /**
   * The rule this request suffers, if any (consumes one `next` hit); `instanceIds` are the ones the
   * request names, for rules limited to some instances.
   */
  pick(action: string, instanceIds?: readonly string[]): FaultRule | undefined;
  reset(): void;
}

export function createFaults(random: () => number = Math.random): Faults {
  let current = faultSettingsSchema.parse({});
  // Remaining hits of each `next` rule, by index in current.rules.
  let remaining = new Map<number, number>();
  const apply = (settings: FaultSettings) => {
    const parsed = faultSettingsSchema.safeParse(settings);
    if (!parsed.success) {
      throw new Error(
        parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; "),
      );
    }
    current = parsed.data;
    remaining = new Map(current.rules.flatMap((r, i) => (r.next === undefined ? [] : [[i, r.next]])));
  };
  return {
    set: apply,
    get: () => structuredClone(current),
    latency: () => current.latencyMs + (current.jitterMs > 0 ? random() * current.jitterMs : 0),
    pick(action, instanceIds = []) {
      for (const [i, rule] of current.rules.entries()) {
        // Busy codes and failed tasks only make sense for the action that starts tasks.
        const associateOnly =
          BUSY_KINDS.has(rule.kind) ||
          rule.kind === "taskFailed" ||
          (rule.code !== undefined && isBusyCode(rule.code));
        const only = rule.action ?? (associateOnly ? BUSY_DEFAULT_ACTION : undefined);
        if (only !== undefined && only !== action) continue;
        if (rule.instanceIds && !rule.instanceIds.some((id) => instanceIds.includes(id))) continue;
        const left = remaining.get(i);
        if (left !== undefined) {
          if (left <= 0) continue;
          if (rule.probability !== undefined && random() >= rule.probability) continue;
          remaining.set(i, left - 1);
          return rule;
        }
        if (random() < (rule.probability ?? 1)) return rule;
      }
      return undefined;
    },
    reset: () => apply({}),
  };
}
