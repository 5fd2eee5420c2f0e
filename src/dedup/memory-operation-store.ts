import { createReleaseFeed } from "../leases/release-feed.js";
import type { Clock } from "../core/clock.js";
import { OPS_SCOPE, type IdempotencyState, type OperationStore } from "./operation-store.js";

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
    claim(fingerprint, token, ttlMs) {
      const holder = get(claims, fingerprint);
      if (holder !== undefined) return Promise.resolve({ claimed: false, holder });
      set(claims, fingerprint, token, ttlMs);
      return Promise.resolve({ claimed: true });
    },
    renewClaim(fingerprint, token, ttlMs) {
      if (get(claims, fingerprint) !== token) return Promise.resolve(false);
      set(claims, fingerprint, token, ttlMs);
      return Promise.resolve(true);
    },
    finish(fingerprint, token, outcome, resultTtlMs) {
      set(results, resultId(fingerprint, token), outcome, resultTtlMs);
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
