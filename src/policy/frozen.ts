/**
 * Set and Map whose mutators throw once built. `Object.freeze` does not protect the entries of a
 * Set or Map, and a policy that some code path could edit in place would no longer be the file
 * that was reviewed and loaded.
 */
const sealed = new WeakSet<object>();

function refuse(): never {
  throw new TypeError("the policy is immutable");
}

class ImmutableSet<T> extends Set<T> {
  constructor(values?: Iterable<T>) {
    super(values);
    sealed.add(this);
    Object.freeze(this);
  }
  override add(value: T): this {
    if (sealed.has(this)) refuse();
    return super.add(value);
  }
  override delete(): boolean {
    return refuse();
  }
  override clear(): void {
    refuse();
  }
}

class ImmutableMap<K, V> extends Map<K, V> {
  constructor(entries?: Iterable<readonly [K, V]>) {
    super(entries);
    sealed.add(this);
    Object.freeze(this);
  }
  override set(key: K, value: V): this {
    if (sealed.has(this)) refuse();
    return super.set(key, value);
  }
  override delete(): boolean {
    return refuse();
  }
  override clear(): void {
    refuse();
  }
}

export function frozenSet<T>(values: Iterable<T>): ReadonlySet<T> {
  return new ImmutableSet(values);
}

export function frozenMap<K, V>(entries: Iterable<readonly [K, V]>): ReadonlyMap<K, V> {
  return new ImmutableMap(entries);
}
