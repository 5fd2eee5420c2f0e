/**
 * The storage primitives behind `Leases`. Redis and the in-memory store implement exactly these
 * atomic steps; waiting, renewal and errors live once in `leases.ts`, so both behave alike.
 */
export interface LeaseStore {
  /**
   * All or none: when no id of `instanceIds` is held, takes every one with a fresh fence and
   * value `leaseToken(fence, owner)`; otherwise takes nothing and says which id is busy and for
   * how long it is still held (ms, -1 when unknown).
   */
  tryAcquire(scope: string, instanceIds: string[], owner: string, ttlMs: number): Promise<TryAcquireResult>;
  /** Extends every lease to `ttlMs` when ALL still carry `token`; false (nothing extended) otherwise. */
  renew(scope: string, instanceIds: string[], token: string, ttlMs: number): Promise<boolean>;
  /** Deletes the leases that still carry `token`; leaves anyone else's alone. */
  release(scope: string, instanceIds: string[], token: string): Promise<void>;
}

export type TryAcquireResult =
  { ok: true; fence: number } | { ok: false; busyInstanceId: string; heldForMs: number };

/** The value stored in each lease key: unique per acquisition because the fence is. */
export function leaseToken(fence: number, owner: string): string {
  return `${fence}:${owner}`;
}

/** `keygate:{scope}:lease:<id>` — the hash tag keeps one account's leases in one Cluster slot. */
export function leaseKey(scope: string, instanceId: string): string {
  return `keygate:{${scope}}:lease:${instanceId}`;
}

/** The per-scope fencing counter, in the same slot as the scope's leases. */
export function fenceKey(scope: string): string {
  return `keygate:{${scope}}:lease-fence`;
}
