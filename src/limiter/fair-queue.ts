/**
 * A weighted fair queue (start-time fair queueing) of waiters on one bucket. Each tenant's
 * waiters get virtual finish tags spaced 1/weight apart, starting no earlier than the
 * current virtual time, and the smallest tag is served first: a tenant that floods the
 * queue only queues behind itself, and tenants share grants in proportion to weight.
 * O(n) per operation; n is bounded by `maxQueue`.
 */
export interface FairEntry<T> {
  readonly item: T;
  readonly tenant: string;
  start: number;
  finish: number;
  readonly seq: number;
}

export interface FairQueue<T> {
  readonly size: number;
  push(tenant: string, weight: number, item: T): FairEntry<T>;
  /** How many entries now queued would be served before a new entry of `tenant` with `weight`. */
  positionIfPushed(tenant: string, weight: number): number;
  shift(): FairEntry<T> | undefined;
  remove(entry: FairEntry<T>): boolean;
  items(): T[];
}

interface TenantState {
  lastFinish: number;
  queued: number;
}

const before = (a: { finish: number; seq: number }, b: { finish: number; seq: number }) =>
  a.finish < b.finish || (a.finish === b.finish && a.seq < b.seq);

export function createFairQueue<T>(): FairQueue<T> {
  let entries: FairEntry<T>[] = [];
  const tenants = new Map<string, TenantState>();
  let virtualTime = 0;
  let seq = 0;

  const tagsFor = (tenant: string, weight: number) => {
    const w = weight > 0 && Number.isFinite(weight) ? weight : 1;
    const start = Math.max(virtualTime, tenants.get(tenant)?.lastFinish ?? 0);
    return { start, finish: start + 1 / w };
  };

  return {
    get size() {
      return entries.length;
    },
    push(tenant, weight, item) {
      const { start, finish } = tagsFor(tenant, weight);
      const entry: FairEntry<T> = { item, tenant, start, finish, seq: seq++ };
      entries.push(entry);
      const t = tenants.get(tenant) ?? { lastFinish: 0, queued: 0 };
      t.lastFinish = finish;
      t.queued++;
      tenants.set(tenant, t);
      return entry;
    },
    positionIfPushed(tenant, weight) {
      const probe = { ...tagsFor(tenant, weight), seq };
      let n = 0;
      for (const e of entries) if (before(e, probe)) n++;
      return n;
    },
    shift() {
      let best: FairEntry<T> | undefined;
      for (const e of entries) if (!best || before(e, best)) best = e;
      if (!best) return undefined;
      entries = entries.filter((e) => e !== best);
      virtualTime = Math.max(virtualTime, best.start);
      release(best, false);
      return best;
    },
    remove(entry) {
      const n = entries.length;
      entries = entries.filter((e) => e !== entry);
      if (entries.length === n) return false;
      release(entry, true);
      return true;
    },
    items: () => entries.map((e) => e.item),
  };

  /** Forgets idle tenants; a withdrawn entry gives its slot back to the tenant's later entries. */
  function release(entry: FairEntry<T>, withdrawn: boolean): void {
    const t = tenants.get(entry.tenant);
    if (!t) return;
    t.queued--;
    if (withdrawn) {
      const cost = entry.finish - entry.start;
      for (const e of entries) {
        if (e.tenant === entry.tenant && e.seq > entry.seq) {
          e.start -= cost;
          e.finish -= cost;
        }
      }
      t.lastFinish -= cost;
    }
    // Kept while its last tag is ahead of virtual time, so a tenant that re-arrives at once
    // cannot jump ahead of others; forgotten afterwards so the map stays small.
    for (const [name, st] of tenants) {
      if (st.queued === 0 && st.lastFinish <= virtualTime) tenants.delete(name);
    }
  }
}
