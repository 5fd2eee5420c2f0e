/**
 * Shared by test/limit-*.test.ts and bench/limit.ts: an emulator inventory with many stopped
 * Linux instances (so leases never serialize callers), a policy over them, a bounded load loop
 * and the figures read from the emulator's arrival log.
 */
import { createHash } from "node:crypto";
import { WARM_UP_INSTANCE_ID } from "../../src/core/actions.js";
import type { Arrival, InstanceSpec, InventorySpec } from "../../src/upstream/emulator/index.js";
import { maxInSlidingWindow } from "../../src/upstream/emulator/index.js";

export const ASSOCIATE = "AssociateInstancesKeyPairs";
export const LOAD_TOKEN = "token-limit-load-0123456789";
export const LOAD_KEY = "skey-limitaaa";
export const LOAD_TAG = { fleet: "limit" };

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

/** `count` STOPPED Linux instances in ap-guangzhou (ins-lg000001…) and a few in ap-shanghai (ins-ls…). */
export function fleetInventory(count: number, shanghai = 4): InventorySpec {
  const make = (prefix: string, region: string, n: number): InstanceSpec => ({
    instanceId: `ins-${prefix}${String(n).padStart(6, "0")}`,
    region,
    zone: `${region}-2`,
    projectId: 1001,
    osName: "TencentOS Server 3.1 (TK4)",
    instanceState: "STOPPED",
    instanceName: `fleet-${n}`,
    tags: { ...LOAD_TAG },
    keyIds: [],
  });
  return {
    instances: [
      ...Array.from({ length: count }, (_, i) => make("lg", "ap-guangzhou", i + 1)),
      ...Array.from({ length: shanghai }, (_, i) => make("ls", "ap-shanghai", i + 1)),
    ],
    keyPairs: [{ keyId: LOAD_KEY }],
  };
}

export const fleetIds = (count: number) =>
  Array.from({ length: count }, (_, i) => `ins-lg${String(i + 1).padStart(6, "0")}`);
export const shanghaiId = (n: number) => `ins-ls${String(n).padStart(6, "0")}`;

/**
 * One tenant allowed on every instance tagged fleet=limit (so policy checks use DescribeInstances),
 * and on the ap-shanghai ones by id (no lookup: a probe call there meets only the rate limiter).
 */
export const FLEET_POLICY = `
tenants:
  fleet:
    tokens_sha256: ["${sha256(LOAD_TOKEN)}"]
    regions: [ap-guangzhou, ap-shanghai]
    instances:
      ids: [${Array.from({ length: 4 }, (_, i) => shanghaiId(i + 1)).join(", ")}]
      tags: { fleet: limit }
    keys: [${LOAD_KEY}]
    force_stop: false
    max_instances_per_request: 10
    weight: 1
`;

/**
 * The batching tests' and bench's tenant (same token and key as FLEET_POLICY): any instance of the
 * account, so no DescribeInstances before the send, and ids the cloud does not have get as far as
 * the cloud (which answers InvalidInstanceId.NotFound).
 */
export const BATCH_POLICY = `
tenants:
  fleet:
    tokens_sha256: ["${sha256(LOAD_TOKEN)}"]
    regions: [ap-guangzhou]
    instances: "*"
    keys: [${LOAD_KEY}]
    force_stop: false
    max_instances_per_request: 100
    weight: 1
`;

export interface LoadResult {
  ok: number;
  /** Count per error reason (or code) of the calls that failed. */
  failed: Record<string, number>;
  /** Caller-side latency of every finished call, ms. */
  latencies: number[];
}

/**
 * `callers` concurrent loops; each starts calls until `untilMs` (epoch) or `maxCalls` calls in
 * all have been started, so every loop is bounded twice. `call(i, n)` gets the caller index and
 * the global call number; a rejection is counted by `reasonOf(err)`.
 */
export async function runLoad(opts: {
  callers: number;
  untilMs: number;
  maxCalls: number;
  call: (caller: number, n: number) => Promise<unknown>;
  reasonOf: (err: unknown) => string;
}): Promise<LoadResult> {
  const r: LoadResult = { ok: 0, failed: {}, latencies: [] };
  let started = 0;
  const loop = async (caller: number) => {
    while (Date.now() < opts.untilMs && started < opts.maxCalls) {
      const n = started++;
      const t0 = Date.now();
      try {
        await opts.call(caller, n);
        r.ok += 1;
      } catch (err) {
        const reason = opts.reasonOf(err);
        r.failed[reason] = (r.failed[reason] ?? 0) + 1;
      }
      r.latencies.push(Date.now() - t0);
    }
  };
  await Promise.all(Array.from({ length: opts.callers }, (_, i) => loop(i)));
  return r;
}

/** The p-th percentile (nearest rank) of `xs`; NaN when empty. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] ?? NaN;
}

/**
 * The rate a saturated window sustains, from arrival times: the first `limit` arrivals may come
 * as one burst, so they are not counted; the rest over the time from first to last arrival.
 * (A plain count ÷ duration would credit the opening burst.)
 */
export function sustainedRate(times: readonly number[], limit = 10): number {
  const s = [...times].sort((a, b) => a - b);
  if (s.length <= limit) return 0;
  const span = (s[s.length - 1] ?? 0) - (s[0] ?? 0);
  return span > 0 ? ((s.length - limit) / span) * 1000 : 0;
}

export const maxIn1000 = (times: readonly number[]) => maxInSlidingWindow(times, 1000);

/**
 * Measures how long this process's event loop was stalled (a 10 ms ticker that came late): under a
 * parallel test run on 2 cores, time the whole process stood still is not the limiter's to lose.
 */
export function stallMeter(tickMs = 10, graceMs = 15) {
  let last = Date.now();
  let stalledMs = 0;
  const timer = setInterval(() => {
    const now = Date.now();
    const late = now - last - tickMs;
    if (late > graceMs) stalledMs += late;
    last = now;
  }, tickMs);
  return {
    stop(): number {
      clearInterval(timer);
      return stalledMs;
    },
  };
}

/** A replica's warm-up DescribeInstances ("ready means warm", src/main.ts): no caller's doing. */
export const isWarmUp = (a: Pick<Arrival, "action" | "instanceIds">): boolean =>
  a.action === "DescribeInstances" && a.instanceIds.length === 1 && a.instanceIds[0] === WARM_UP_INSTANCE_ID;

/** The arrivals a test reasons about: every one but the replicas' warm-up calls. */
export const withoutWarmUp = <T extends Pick<Arrival, "action" | "instanceIds">>(
  arrivals: readonly T[],
): T[] => arrivals.filter((a) => !isWarmUp(a));
