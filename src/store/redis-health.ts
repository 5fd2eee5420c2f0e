import type { Clock } from "../core/clock.js";
import { redact, type RedisClient } from "./redis.js";

export interface RedisHealthOptions {
  client: RedisClient;
  /** The URL as configured; logged redacted. */
  url: string;
  onStoreDown: "fail-closed" | "local-share";
  clock: Clock;
  /** fail-closed: Redis is a readiness component. */
  setReady: (up: boolean) => void;
  /** local-share: Redis down is a mode of this replica, not unreadiness (the `keygate_store_degraded` gauge). */
  setLocalShare: (active: boolean) => void;
  onError: (err: Error) => void;
  logger: {
    info(o: object, m: string): void;
    warn(m: string): void;
    error(o: object, m: string): void;
  };
}

/**
 * Follows the Redis connection into health: with fail-closed, no Redis means NOT_SERVING; with
 * local-share, the replica stays SERVING and says (log + gauge) that it works on its own.
 */
export function watchRedisHealth(options: RedisHealthOptions): void {
  const { client, logger } = options;
  let localShare: boolean | undefined;
  const redisUp = (up: boolean) => {
    if (options.onStoreDown !== "local-share") return options.setReady(up);
    if (localShare === !up) return;
    if (!up && localShare === false)
      logger.warn("redis unreachable: local-share mode, this replica limits, leases and dedups on its own");
    localShare = !up;
    options.setLocalShare(!up);
  };
  redisUp(false);
  client.on("ready", () => {
    redisUp(true);
    logger.info({ redis: redact(options.url) }, "redis connected");
  });
  client.on("error", (err: Error) => options.onError(err));
  client.on("end", () => redisUp(false));
  client.on("close", () => redisUp(false));
}

/**
 * Commands fail fast while disconnected (no offline queue), so the first connection gets a
 * moment; if Redis is still down the replica starts anyway and recovers when it returns.
 */
export async function waitForRedis(
  options: Pick<RedisHealthOptions, "client" | "url" | "onStoreDown" | "clock" | "logger">,
  ms: number,
): Promise<void> {
  const { client, clock } = options;
  const until = clock.now() + ms;
  while (client.status !== "ready") {
    if (clock.now() > until) {
      options.logger.error(
        { redis: redact(options.url) },
        options.onStoreDown === "local-share"
          ? "redis is not reachable yet; local-share: this replica works on its own until it is"
          : "redis is not reachable yet; answering STORE_UNAVAILABLE until it is",
      );
      return;
    }
    await clock.sleep(20);
  }
}

export interface StoreWatchdogOptions {
  client: RedisClient;
  clock: Clock;
  /** How often the store is probed while connected. */
  intervalMs: number;
  /** A probe unanswered for this long means the store hangs: the connection is dropped. */
  timeoutMs: number;
  /** One round trip to the store (PING, or the epoch check). */
  probe: () => Promise<unknown>;
  onHang?: () => void;
}

/**
 * Makes readiness follow command latency, not only the socket: a probe that does not come back
 * within `timeoutMs` drops the connection, which fails every command in flight at once and makes
 * new ones fail fast until the store answers again (the client is built without offline queue and
 * without resending). Returns a stop function.
 */
export function startStoreWatchdog(options: StoreWatchdogOptions): () => void {
  const { client, clock } = options;
  const stop = new AbortController();
  let connection = 0;
  client.on("close", () => connection++);
  const tick = async () => {
    if (client.status !== "ready") return;
    const at = connection;
    const timer = new AbortController();
    let answered = false;
    const probe = options.probe().then(
      () => (answered = true),
      () => (answered = true),
    );
    await Promise.race([probe, clock.sleep(options.timeoutMs, timer.signal).catch(() => undefined)]);
    timer.abort();
    if (answered || stop.signal.aborted || at !== connection) return;
    try {
      options.onHang?.();
    } catch {
      /* an observer must not stop the watchdog */
    }
    client.disconnect(true);
  };
  void (async () => {
    while (!stop.signal.aborted) {
      try {
        await clock.sleep(options.intervalMs, stop.signal);
      } catch {
        return;
      }
      await tick();
    }
  })();
  return () => stop.abort();
}
