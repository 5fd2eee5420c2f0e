import { z } from "zod";

/**
 * What can go wrong between keygate and the cloud.
 * - `http500` / `http503`: a load balancer error page (HTTP status, HTML body).
 * - `hang`: the request is never answered and never applied (connection kept open).
 * - `lostReply`: the request IS applied, then never answered — the timeout that reached the cloud.
 * - `nonJson`: HTTP 200 with a body that is not JSON.
 * - `noResponse`: HTTP 200 JSON without the `Response` envelope.
 * - the rest: the cloud's own error codes, answered in the normal envelope.
 */
export const FAULT_KINDS = [
  "http500",
  "http503",
  "hang",
  "lostReply",
  "nonJson",
  "noResponse",
  "internalError",
  "requestLimitExceeded",
  "mutexTaskRunning",
  "operationInProgress",
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/** The API error code each code-shaped fault answers with. */
export const FAULT_CODES: Partial<Record<FaultKind, string>> = {
  internalError: "InternalError",
  requestLimitExceeded: "RequestLimitExceeded",
  mutexTaskRunning: "MutexOperation.TaskRunning",
  operationInProgress: "OperationDenied.InstanceOperationInProgress",
};

const ruleSchema = z
  .object({
    kind: z.enum(FAULT_KINDS),
    /** Only for this action (e.g. "AssociateInstancesKeyPairs"); all actions when absent. */
    action: z.string().optional(),
    /** Chance per matching request, 0..1. */
    probability: z.number().min(0).max(1).optional(),
    /** Hit exactly the next N matching requests, then the rule disappears. */
    next: z.number().int().positive().optional(),
  })
  .strict();
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
  /** The fault this request suffers, if any (consumes one `next` hit). */
  pick(action: string): FaultKind | undefined;
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
    pick(action) {
      for (const [i, rule] of current.rules.entries()) {
        if (rule.action !== undefined && rule.action !== action) continue;
        const left = remaining.get(i);
        if (left !== undefined) {
          if (left <= 0) continue;
          if (rule.probability !== undefined && random() >= rule.probability) continue;
          remaining.set(i, left - 1);
          return rule.kind;
        }
        if (random() < (rule.probability ?? 1)) return rule.kind;
      }
      return undefined;
    },
    reset: () => apply({}),
  };
}
