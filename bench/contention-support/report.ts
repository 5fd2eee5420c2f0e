/** Figures of one arm of bench:contention, from the callers' side and from the emulated cloud's log. */
import { maxInSlidingWindow, type Arrival } from "../../src/upstream/emulator/index.js";
import type { CallOutcome } from "./load.js";

const BUSY = new Set(["MutexOperation.TaskRunning", "OperationDenied.InstanceOperationInProgress"]);

export interface ArmFigures {
  arm: string;
  calls: number;
  ok: number;
  okWithinDeadline: number;
  /** Callers all of whose calls succeeded within their deadline. */
  callersFullyServed: number;
  callers: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  upstreamCalls: number;
  upstreamBusy: number;
  upstreamRateLimited: number;
  upstreamOk: number;
  maxUpstreamIn1s: number;
  /** Caller-visible failures by code. */
  errors: Record<string, number>;
}

export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] ?? NaN;
}

export function figures(
  arm: string,
  callers: number,
  deadlineMs: number,
  outcomes: CallOutcome[],
  arrivals: readonly Arrival[],
): ArmFigures {
  const associates = arrivals.filter((a) => a.action === "AssociateInstancesKeyPairs");
  const good = (o: CallOutcome) => o.code === "OK" && o.latencyMs <= deadlineMs;
  const errors: Record<string, number> = {};
  for (const o of outcomes) if (o.code !== "OK") errors[o.code] = (errors[o.code] ?? 0) + 1;
  const byCaller = new Map<number, boolean>();
  for (const o of outcomes) byCaller.set(o.caller, (byCaller.get(o.caller) ?? true) && good(o));
  const latencies = outcomes.map((o) => o.latencyMs);
  return {
    arm,
    calls: outcomes.length,
    ok: outcomes.filter((o) => o.code === "OK").length,
    okWithinDeadline: outcomes.filter(good).length,
    callersFullyServed: [...byCaller.values()].filter(Boolean).length,
    callers,
    p50Ms: percentile(latencies, 50),
    p99Ms: percentile(latencies, 99),
    maxMs: Math.max(...latencies),
    upstreamCalls: associates.length,
    upstreamBusy: associates.filter((a) => BUSY.has(a.outcome)).length,
    upstreamRateLimited: associates.filter((a) => a.outcome.startsWith("RequestLimitExceeded")).length,
    upstreamOk: associates.filter((a) => a.outcome === "OK").length,
    maxUpstreamIn1s: maxInSlidingWindow(
      associates.map((a) => a.at),
      1000,
    ),
    errors,
  };
}

const pct = (n: number, d: number) => (d === 0 ? "n/a" : `${((100 * n) / d).toFixed(1)}%`);

/** A Markdown table, one column per arm, ready to paste into docs/benchmarks.md. */
export function table(arms: ArmFigures[]): string {
  const rows: [string, (f: ArmFigures) => string][] = [
    ["caller calls answered", (f) => String(f.calls)],
    ["succeeded within deadline", (f) => `${f.okWithinDeadline} (${pct(f.okWithinDeadline, f.calls)})`],
    ["callers with every call served", (f) => `${f.callersFullyServed}/${f.callers}`],
    ["latency p50 / p99 / max", (f) => `${f.p50Ms} / ${f.p99Ms} / ${f.maxMs} ms`],
    ["upstream associate calls", (f) => String(f.upstreamCalls)],
    ["… answered OK (keys bound)", (f) => String(f.upstreamOk)],
    ["… MutexOperation / InstanceOperationInProgress", (f) => String(f.upstreamBusy)],
    ["… RequestLimitExceeded", (f) => String(f.upstreamRateLimited)],
    ["max upstream calls in any 1 s", (f) => String(f.maxUpstreamIn1s)],
    [
      "caller-visible errors",
      (f) =>
        Object.entries(f.errors)
          .sort((a, b) => b[1] - a[1])
          .map(([c, n]) => `${c}: ${n}`)
          .join(", ") || "none",
    ],
  ];
  const head = `| | ${arms.map((a) => a.arm).join(" | ")} |`;
  const sep = `| --- | ${arms.map(() => "---").join(" | ")} |`;
  return [head, sep, ...rows.map(([name, f]) => `| ${name} | ${arms.map(f).join(" | ")} |`)].join("\n");
}
