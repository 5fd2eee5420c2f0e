import { STOPPED, type Clock } from "../core/clock.js";
import { Cluster } from "ioredis";
import type { RedisClient } from "../store/redis.js";

/**
 * Tells lease waiters on this replica that instances of a scope were released, so they retry at
 * once instead of polling the store. Waiters still re-check slowly in case a notice was lost.
 */
export interface ReleaseFeed {
  /** Taken before asking the store; a release noticed after it ends the next `wait` at once. */
  mark(scope: string): number;
  /**
   * Resolves when one of `ids` in `scope` was released after `mark`, or after `ms`; rejects when
   * `signal` aborts. Starts listening to `scope` if it does not yet.
   */
  wait(scope: string, ids: readonly string[], mark: number, ms: number, signal: AbortSignal): Promise<void>;
  /** True while notices of `scope` are known to arrive; false means "poll as before". */
  live(scope: string): boolean;
  /** Called by whoever saw the release (the store, or the subscriber connection). */
  notify(scope: string, ids: readonly string[]): void;
  close(): Promise<void>;
}

interface Listener {
  ids: ReadonlySet<string>;
  wake(): void;
}

/** The in-process feed; `listen` is asked to start delivering a scope's notices (once per scope). */
export function createReleaseFeed(
  clock: Clock,
  listen: (scope: string) => void = () => undefined,
  isLive: (scope: string) => boolean = () => true,
): ReleaseFeed {
  const versions = new Map<string, number>();
  const listeners = new Map<string, Set<Listener>>();
  const listening = new Set<string>();

  return {
    mark(scope) {
      if (!listening.has(scope)) {
        listening.add(scope);
        listen(scope);
      }
      return versions.get(scope) ?? 0;
    },
    async wait(scope, ids, mark, ms, signal) {
      if ((versions.get(scope) ?? 0) !== mark) return;
      const stop = new AbortController();
      const onAbort = () => stop.abort(STOPPED);
      signal.addEventListener("abort", onAbort, { once: true });
      const l: Listener = { ids: new Set(ids), wake: () => stop.abort(STOPPED) };
      let set = listeners.get(scope);
      if (!set) listeners.set(scope, (set = new Set()));
      set.add(l);
      try {
        await clock.sleep(ms, stop.signal).catch(() => undefined);
      } finally {
        signal.removeEventListener("abort", onAbort);
        set.delete(l);
        if (set.size === 0) listeners.delete(scope);
      }
      if (signal.aborted) throw signal.reason;
    },
    live: (scope) => listening.has(scope) && isLive(scope),
    notify(scope, ids) {
      versions.set(scope, (versions.get(scope) ?? 0) + 1);
      for (const l of listeners.get(scope) ?? []) if (ids.some((id) => l.ids.has(id))) l.wake();
    },
    close() {
      for (const set of listeners.values()) for (const l of set) l.wake();
      return Promise.resolve();
    },
  };
}

/** The channel the release and withdraw scripts PUBLISH the freed instance ids on (comma-separated). */
export function releaseChannel(scope: string): string {
  return `keygate:{${scope}}:lease-released`;
}

/** One subscriber connection per Redis client (so per replica), shared by every feed on it. */
interface Hub {
  want(channel: string, onMessage: (message: string) => void): void;
  unwant(channel: string, onMessage: (message: string) => void): void;
  live(channel: string): boolean;
  /** Drops one user; the connection closes with the last. */
  leave(): void;
}

const hubs = new WeakMap<RedisClient, Hub & { users: number }>();

function hubOf(client: RedisClient): Hub {
  const existing = hubs.get(client);
  if (existing) {
    existing.users += 1;
    return existing;
  }
  let sub: RedisClient | undefined;
  const handlers = new Map<string, Set<(message: string) => void>>();
  const subscribed = new Set<string>(); // confirmed on the current connection
  const subscribeAll = () => {
    const s = sub;
    if (!s || s.status !== "ready") return;
    for (const channel of handlers.keys()) {
      if (subscribed.has(channel)) continue;
      s.subscribe(channel).then(
        () => subscribed.add(channel),
        () => undefined, // retried on the next "ready"; waiters poll meanwhile
      );
    }
  };
  const open = (): RedisClient => {
    // A subscriber connection runs nothing but SUBSCRIBE: nothing to pipeline.
    const s: RedisClient =
      client instanceof Cluster
        ? client.duplicate(undefined, { enableAutoPipelining: false })
        : client.duplicate({ enableAutoPipelining: false });
    s.on("error", () => undefined); // the main client reports Redis trouble; here it only means "not live"
    s.on("ready", subscribeAll);
    s.on("close", () => subscribed.clear());
    s.on("message", (channel: string, message: string) => {
      for (const h of handlers.get(channel) ?? []) h(message);
    });
    return s;
  };
  const hub = {
    users: 1,
    want(channel: string, onMessage: (message: string) => void) {
      let set = handlers.get(channel);
      if (!set) handlers.set(channel, (set = new Set()));
      set.add(onMessage);
      sub ??= open();
      subscribeAll();
    },
    unwant(channel: string, onMessage: (message: string) => void) {
      // The channel stays subscribed (cheap); only this feed stops hearing it.
      handlers.get(channel)?.delete(onMessage);
    },
    live: (channel: string) => sub?.status === "ready" && subscribed.has(channel),
    leave() {
      if (--hub.users > 0) return;
      hubs.delete(client);
      // No graceful QUIT: it would wait for a reconnect while Redis is down.
      sub?.disconnect();
      sub = undefined;
      subscribed.clear();
    },
  };
  hubs.set(client, hub);
  return hub;
}

/**
 * A feed fed by Redis PUBLISH on `channelOf(scope)` (message: comma-separated ids), through the
 * replica's one subscriber connection (a connection in subscribe mode can run nothing else),
 * opened on the first wait. Works with Cluster too: PUBLISH reaches every node's subscribers.
 */
export function createRedisReleaseFeed(
  client: RedisClient,
  clock: Clock,
  channelOf: (scope: string) => string = releaseChannel,
): ReleaseFeed {
  const hub = hubOf(client);
  let closed = false;
  const mine = new Map<string, (message: string) => void>();
  const feed = createReleaseFeed(
    clock,
    (scope) => {
      if (closed) return;
      const onMessage = (message: string) => feed.notify(scope, message.split(","));
      mine.set(channelOf(scope), onMessage);
      hub.want(channelOf(scope), onMessage);
    },
    (scope) => hub.live(channelOf(scope)),
  );
  const closeFeed = feed.close.bind(feed);
  feed.close = async () => {
    if (closed) return;
    closed = true;
    await closeFeed();
    for (const [channel, onMessage] of mine) hub.unwant(channel, onMessage);
    hub.leave();
  };
  return feed;
}
