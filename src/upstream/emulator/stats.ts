import { maxInSlidingWindow } from "./sliding-window.js";

/** One request as the emulated cloud saw it arrive, with what it answered. */
export interface Arrival {
  /** Arrival time (emulator clock, ms): the instant the cloud counts for its limits. */
  at: number;
  action: string;
  /** SecretId from the Authorization header ("" when there was none). */
  secretId: string;
  region: string;
  /** The Host header as received (with port, if one was sent). */
  host: string;
  /** Service named in the credential scope ("" when unparseable). */
  service: string;
  requestId: string;
  /** The InstanceIds the request named (best effort: none when the body was not JSON). */
  instanceIds: string[];
  /** "OK", an API error code, or the transport fault ("HTTP500", "HANG", …); "PENDING" until answered. */
  outcome: string;
}

/** One AssociateInstancesKeyPairs the cloud actually applied (started its tasks). */
export interface Apply {
  /** When it was applied (emulator clock, ms); later than its arrival for `lateApply`. */
  at: number;
  requestId: string;
  instanceIds: string[];
  keyIds: string[];
  forceStop: boolean;
  /** Instances the cloud actually forced down for it (ForceStop used, not merely sent). */
  forcedStops?: string[];
}

/** What happened to one instance: applies, and busy refusals because a real task was running. */
export interface InstanceCounts {
  applied: number;
  /** `MutexOperation.*` (or `OperationDenied.InstanceOperationInProgress`) because a task ran: a collision. */
  mutexAnswers: number;
  /** The same codes answered by an injected fault while the instance was idle. */
  injectedMutexAnswers: number;
}

export interface StatsFilter {
  action?: string;
  secretId?: string;
}

/** Arrival log for tests and benchmarks (G1 is checked against it). */
export interface EmulatorStats {
  readonly arrivals: readonly Arrival[];
  record(a: Arrival): Arrival;
  readonly applies: readonly Apply[];
  recordApply(a: Apply): void;
  /** A busy answer for these instances; `injected` when a fault said so, not a running task. */
  recordBusy(instanceIds: readonly string[], injected: boolean): void;
  /** Per instance id, only instances that saw an apply or a busy answer. */
  perInstance(): Record<string, InstanceCounts>;
  /** Arrival times of the matching requests. */
  times(filter?: StatsFilter): number[];
  /** Count per outcome of the matching requests. */
  outcomes(filter?: StatsFilter): Record<string, number>;
  /** The most matching arrivals in any sliding window (1000 ms by default). */
  maxInWindow(filter?: StatsFilter, windowMs?: number): number;
  reset(): void;
}

export function createStats(): EmulatorStats {
  let arrivals: Arrival[] = [];
  let applies: Apply[] = [];
  let counts = new Map<string, InstanceCounts>();
  const countsOf = (id: string): InstanceCounts => {
    let c = counts.get(id);
    if (!c) {
      c = { applied: 0, mutexAnswers: 0, injectedMutexAnswers: 0 };
      counts.set(id, c);
    }
    return c;
  };
  const matching = (f: StatsFilter = {}) =>
    arrivals.filter(
      (a) =>
        (f.action === undefined || a.action === f.action) &&
        (f.secretId === undefined || a.secretId === f.secretId),
    );
  return {
    get arrivals() {
      return arrivals;
    },
    record(a) {
      arrivals.push(a);
      return a;
    },
    get applies() {
      return applies;
    },
    recordApply(a) {
      applies.push(a);
      for (const id of a.instanceIds) countsOf(id).applied += 1;
    },
    recordBusy(instanceIds, injected) {
      for (const id of instanceIds) {
        if (injected) countsOf(id).injectedMutexAnswers += 1;
        else countsOf(id).mutexAnswers += 1;
      }
    },
    perInstance: () => Object.fromEntries([...counts].map(([id, c]) => [id, { ...c }])),
    times: (f) => matching(f).map((a) => a.at),
    outcomes(f) {
      const counts: Record<string, number> = {};
      for (const a of matching(f)) counts[a.outcome] = (counts[a.outcome] ?? 0) + 1;
      return counts;
    },
    maxInWindow: (f, windowMs = 1000) =>
      maxInSlidingWindow(
        matching(f).map((a) => a.at),
        windowMs,
      ),
    reset() {
      arrivals = [];
      applies = [];
      counts = new Map();
    },
  };
}
