import type { BucketSpec } from "../core/ports.js";
import type { RedisClient } from "../store/redis.js";
import { defineScript } from "../store/scripts.js";
import type { BookingOptions, StoreDecision, WindowStore } from "./window-store.js";

/** The custom commands `defineScript` adds to the client. */
interface LimiterCommands {
  keygateAcquireWindow(
    windowKey: string,
    penaltyKey: string,
    limit: number,
    spanMs: number,
    coldMs: number,
    horizonMs: number,
    gapMs: number,
    warm: 0 | 1,
  ): Promise<unknown>;
  keygatePenalize(penaltyKey: string, ms: number): Promise<unknown>;
  keygateShiftWindow(windowKey: string, slot: number, lateMs: number, limit: number): Promise<unknown>;
}

/**
 * Keys of one bucket. The `{hash tag}` puts a bucket's keys in one Cluster slot, which the
 * two-key script needs. An empty key would make the tag empty (then ignored), so it is refused.
 */
export function bucketKeys(prefix: string, bucketKey: string): { window: string; penalty: string } {
  if (bucketKey === "") throw new Error("bucket key must not be empty");
  return { window: `${prefix}:{${bucketKey}}:window`, penalty: `${prefix}:{${bucketKey}}:penalty` };
}

export interface RedisWindowStoreOptions {
  client: RedisClient;
  /** Default "keygate". */
  keyPrefix?: string;
  /**
   * Default true: a bucket with no log in Redis (first use, idle longer than `coldAfterMs`, or
   * Redis restarted without its data) grants nothing for one span, because grants made just
   * before a data loss may still be inside the upstream's window.
   */
  coldHoldOff?: boolean;
  /** How long an idle log is kept. Default 1 h. */
  coldAfterMs?: number;
  /**
   * Asked before each booking: true when a missing log is provably older than one span (the
   * store was down for everybody for longer than that), so the cold hold-off is not needed.
   */
  coldHoldOffWaived?: () => Promise<boolean>;
}

/**
 * The cluster-wide store: one atomic Lua script per decision, timed by Redis TIME, which books
 * the next free slot when it lies within the horizon (see acquire-window-2.lua). The
 * client is owned by the caller (not closed here); it should be created with
 * `enableOfflineQueue: false` so an outage fails commands at once.
 */
export function createRedisWindowStore(options: RedisWindowStoreOptions): WindowStore {
  const { client } = options;
  const prefix = options.keyPrefix ?? "keygate";
  const coldMs = options.coldHoldOff === false ? 0 : (options.coldAfterMs ?? 3_600_000);
  defineScript(client, "keygateAcquireWindow", new URL("./acquire-window-2.lua", import.meta.url));
  defineScript(client, "keygatePenalize", new URL("./penalize-1.lua", import.meta.url));
  defineScript(client, "keygateShiftWindow", new URL("./shift-window-1.lua", import.meta.url));
  const cmd = client as unknown as LimiterCommands;

  return {
    async tryAcquire(
      bucket: BucketSpec,
      spanMs: number,
      booking: BookingOptions = {},
    ): Promise<StoreDecision> {
      const k = bucketKeys(prefix, bucket.key);
      const warm = coldMs > 0 && options.coldHoldOffWaived ? await options.coldHoldOffWaived() : false;
      const reply = await cmd.keygateAcquireWindow(
        k.window,
        k.penalty,
        bucket.limit,
        Math.ceil(spanMs),
        coldMs,
        Math.max(0, Math.floor(booking.horizonMs ?? 0)),
        Math.max(0, Math.ceil(booking.gapMs ?? 0)),
        warm ? 1 : 0,
      );
      if (!Array.isArray(reply) || reply.length < 2)
        throw new Error("unexpected reply from acquire-window script");
      const [granted, n, now, fourth, fifth] = reply as [number, number, number, number?, number?];
      const delay = granted === 1 ? fourth : undefined;
      const time = Number(granted === 1 ? (fifth ?? now) : (fourth ?? now));
      return granted === 1
        ? {
            granted: true,
            remaining: Number(n),
            delayMs: Number(delay ?? 0),
            slot: Number(now) + Number(delay ?? 0),
            storeNow: time,
          }
        : { granted: false, waitMs: Number(n), storeNow: time };
    },
    async penalize(bucket: BucketSpec, ms: number): Promise<void> {
      const k = bucketKeys(prefix, bucket.key);
      await cmd.keygatePenalize(k.penalty, Math.max(1, Math.ceil(ms)));
    },
    async shift(bucket: BucketSpec, slot: number, lateMs: number): Promise<void> {
      if (!(lateMs > 0)) return;
      const k = bucketKeys(prefix, bucket.key);
      await cmd.keygateShiftWindow(k.window, Math.round(slot), Math.ceil(lateMs), bucket.limit);
    },
  };
}
