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
  /** "OK", an API error code, or the transport fault ("HTTP500", "HANG", …); "PENDING" until answered. */
  outcome: string;
}

export interface StatsFilter {
  action?: string;
  secretId?: string;
}

/** Arrival log for tests and benchmarks (G1 is checked against it). */
export interface EmulatorStats {
  readonly arrivals: readonly Arrival[];
  record(a: Arrival): Arrival;
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
    },
  };
}
