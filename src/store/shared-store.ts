import type { Clock } from "../core/clock.js";
import { createStoreEpoch, type StoreEpoch } from "./epoch.js";
import { createRedis, type RedisClient } from "./redis.js";
import { startStoreWatchdog, waitForRedis, watchRedisHealth } from "./redis-health.js";

export interface SharedStoreOptions {
  /** KEYGATE_REDIS_URL; absent = no shared store (memory, one replica). */
  url: string | undefined;
  connectionName: string;
  /** KEYGATE_REDIS_CA_FILE, for rediss:// URLs. */
  caFile?: string | undefined;
  /** KEYGATE_STORE_TIMEOUT_MS: one command's budget, and the watchdog's measure of a hang. */
  timeoutMs: number;
  onStoreDown: "fail-closed" | "local-share";
  /** How long after a data loss keygate keeps checking with the cloud before sending. */
  rebuildMs: number;
  /** An outage of the store this long (connections refused) leaves nothing of ours in the cloud's window. */
  quietOutageMs: number;
  clock: Clock;
  logger: {
    info(o: object, m: string): void;
    warn(o: object | string, m?: string): void;
    error(o: object, m: string): void;
  };
  hooks: {
    /** fail-closed: Redis is a readiness component. */
    ready(up: boolean): void;
    /** local-share: this replica works on its own while Redis is down. */
    localShare(active: boolean): void;
    /** The store may have lost its data and is not yet verified. */
    suspect(suspect: boolean): void;
    error(): void;
  };
}

/**
 * The Redis connection with everything that watches it: readiness, the hang watchdog (a
 * command unanswered within the timeout drops the connection, so every call fails at once)
 * and the epoch that tells a store which lost its data (docs/decisions.md, "A hung or emptied
 * store"). Without a URL there is nothing to open.
 */
export async function openSharedStore(options: SharedStoreOptions): Promise<{
  redis: RedisClient | undefined;
  epoch: StoreEpoch | undefined;
  close(): Promise<void>;
}> {
  const { url, clock, logger, hooks } = options;
  if (!url) {
    logger.warn("KEYGATE_REDIS_URL is not set: in-memory store, safe for ONE replica only");
    return { redis: undefined, epoch: undefined, close: () => Promise.resolve() };
  }
  const redis = createRedis(url, {
    connectionName: options.connectionName,
    timeoutMs: options.timeoutMs,
    caFile: options.caFile,
  });
  hooks.suspect(true);
  const epoch = createStoreEpoch({
    client: redis,
    clock,
    rebuildMs: options.rebuildMs,
    quietOutageMs: options.quietOutageMs,
    onSuspectChange: (s) => hooks.suspect(s),
    onDataLoss: ({ createdHere, previous }) =>
      logger.error(
        { epochCreatedHere: createdHere, hadEpoch: previous !== undefined, rebuildMs: options.rebuildMs },
        "redis lost its data (epoch missing or changed): checking instances with the cloud before sending until the rebuild window ends",
      ),
  });
  const stopWatchdog = startStoreWatchdog({
    client: redis,
    clock,
    intervalMs: 250,
    timeoutMs: Math.max(50, Math.floor(options.timeoutMs / 2)),
    probe: epoch.check,
    onHang: () => {
      hooks.error();
      logger.warn({ timeoutMs: options.timeoutMs }, "redis does not answer: dropping the connection");
    },
  });
  const watched = { client: redis, url, onStoreDown: options.onStoreDown, clock, logger };
  watchRedisHealth({
    ...watched,
    setReady: (up) => hooks.ready(up),
    setLocalShare: (active) => hooks.localShare(active),
    onError: (err) => {
      hooks.error();
      logger.warn({ err: err.message }, "redis error");
    },
  });
  await waitForRedis(watched, 5_000);
  return {
    redis,
    epoch,
    async close() {
      stopWatchdog();
      await redis.quit().catch(() => redis.disconnect());
    },
  };
}
