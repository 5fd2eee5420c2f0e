import { createReleaseFeed } from "../leases/release-feed.js";
import type { Clock } from "../core/clock.js";
import type { SendPhase } from "../core/ports.js";
import { inheritedFrom, OPS_SCOPE, type IdempotencyState, type OperationStore } from "./operation-store.js";

/** The operation record of a fingerprint, as the Lua scripts keep it in a hash. */
interface OpRecord {
  token: string;
  phase: "claimed" | SendPhase | "done";
  sentAt?: number;
  requestId?: string;
  outcome?: string;
}

interface Expiring<T> {
  value: T;
  expiresAt: number;
}

/**
 * Coalescing and idempotency state in this process only (single-replica `keygate dev`).
 * Same semantics as the Lua scripts; expiry follows the injected clock.
 */
export function createMemoryOperationStore(options: { clock: Clock }): OperationStore {
  const { clock } = options;
  const releases = createReleaseFeed(clock);
  const idem = new Map<string, Expiring<{ fingerprint: string; outcome?: string }>>();
  const claims = new Map<string, Expiring<string>>();
  const results = new Map<string, Expiring<string>>();
  const records = new Map<string, Expiring<OpRecord>>();
  let writes = 0;

  const get = <T>(m: Map<string, Expiring<T>>, key: string): T | undefined => {
    const e = m.get(key);
    if (e && e.expiresAt <= clock.now()) {
      m.delete(key);
      return undefined;
    }
    return e?.value;
  };
  const set = <T>(m: Map<string, Expiring<T>>, key: string, value: T, ttlMs: number) => {
    m.set(key, { value, expiresAt: clock.now() + ttlMs });
    // Sweep now and then so keys nobody reads again do not pile up (24 h idempotency records).
    if (++writes % 1000 === 0) sweep();
  };
  const sweep = () => {
    for (const k of idem.keys()) get(idem, k);
    for (const k of claims.keys()) get(claims, k);
    for (const k of results.keys()) get(results, k);
    for (const k of records.keys()) get(records, k);
  };
  const resultId = (fp: string, token: string) => `${fp}\u0000${token}`;

  return {
    releases,
    beginIdempotent(key, fingerprint, ttlMs): Promise<IdempotencyState> {
      const rec = get(idem, key);
      if (!rec) {
        set(idem, key, { fingerprint }, ttlMs);
        return Promise.resolve({ state: "new" });
      }
      if (rec.fingerprint !== fingerprint) return Promise.resolve({ state: "mismatch" });
      if (rec.outcome !== undefined) return Promise.resolve({ state: "done", outcome: rec.outcome });
      return Promise.resolve({ state: "pending" });
    },
    completeIdempotent(key, fingerprint, outcome, ttlMs) {
      const rec = get(idem, key);
      if (!rec || (rec.fingerprint === fingerprint && rec.outcome === undefined)) {
        set(idem, key, { fingerprint, outcome }, ttlMs);
      }
      return Promise.resolve();
    },
    abandonIdempotent(key, fingerprint) {
      const rec = get(idem, key);
      if (rec && rec.fingerprint === fingerprint && rec.outcome === undefined) idem.delete(key);
      return Promise.resolve();
    },
    claim(fingerprint, token, ttl) {
      const holder = get(claims, fingerprint);
      if (holder !== undefined) return Promise.resolve({ state: "held" as const, holder });
      const rec = get(records, fingerprint);
      if (rec?.phase === "done" && rec.outcome !== undefined) {
        return Promise.resolve({ state: "finished" as const, outcome: rec.outcome });
      }
      set(claims, fingerprint, token, ttl.claimTtlMs);
      const inherited = inheritedFrom(rec?.phase, rec?.sentAt, rec?.requestId);
      set(
        records,
        fingerprint,
        inherited && rec ? { ...rec, token } : { token, phase: "claimed" },
        ttl.recordTtlMs,
      );
      return Promise.resolve({ state: "claimed" as const, inherited });
    },
    renewClaim(fingerprint, token, ttlMs) {
      if (get(claims, fingerprint) !== token) return Promise.resolve(false);
      set(claims, fingerprint, token, ttlMs);
      return Promise.resolve(true);
    },
    mark(fingerprint, token, phase, detail, recordTtlMs) {
      const rec = get(records, fingerprint);
      if (get(claims, fingerprint) !== token || rec?.token !== token) return Promise.resolve(false);
      const next: OpRecord = { ...rec, phase };
      if (phase === "sending" || phase === "claimed") delete next.requestId;
      if (phase === "claimed") delete next.sentAt;
      if (detail.sentAt !== undefined) next.sentAt = detail.sentAt;
      if (detail.requestId !== undefined) next.requestId = detail.requestId;
      set(records, fingerprint, next, recordTtlMs);
      return Promise.resolve(true);
    },
    finish(fingerprint, token, outcome, opts) {
      set(results, resultId(fingerprint, token), outcome, opts.resultTtlMs);
      const rec = get(records, fingerprint);
      if (rec?.token === token) {
        if (opts.final && opts.joinWindowMs > 0) {
          set(records, fingerprint, { ...rec, phase: "done", outcome }, opts.joinWindowMs);
        } else if (opts.final || rec.phase === "claimed") {
          records.delete(fingerprint);
        }
      }
      if (get(claims, fingerprint) === token) claims.delete(fingerprint);
      releases.notify(OPS_SCOPE, [fingerprint]);
      return Promise.resolve();
    },
    peek(fingerprint, holder) {
      return Promise.resolve({
        claimHolder: get(claims, fingerprint) ?? null,
        outcome: get(results, resultId(fingerprint, holder)) ?? null,
      });
    },
  };
}
