import { randomUUID } from "node:crypto";
import type { Clock } from "../core/clock.js";
import type { StoreIntegrity } from "../core/ports.js";
import type { RedisClient } from "./redis.js";
import { defineScript } from "./scripts.js";

export interface StoreEpochOptions {
  client: RedisClient;
  clock: Clock;
  /**
   * How long after a data loss the store stays suspect: the longest a cloud task started before
   * the loss could still run (KEYGATE_TASK_MAX_WAIT_MS), so no lease it needed is missed.
   */
  rebuildMs: number;
  /**
   * Least span of an outage, counted from the first refused connect, after which the limiter's
   * cold hold-off may be skipped on the connection that ends it (docs/decisions/limiter.md).
   */
  quietOutageMs: number;
  /** Default "keygate". */
  keyPrefix?: string;
  onSuspectChange?: (suspect: boolean) => void;
  /** The store's epoch was missing or changed: its data is lost. */
  onDataLoss?: (detail: { createdHere: boolean; previous: string | undefined; current: string }) => void;
}

interface EpochCommands {
  keygateEpoch(key: string, id: string): Promise<[string, number, number]>;
}

export interface StoreEpoch extends StoreIntegrity {
  /** Reads (or re-creates) the epoch on the current connection; the watchdog calls it on every tick. */
  check: () => Promise<void>;
  /**
   * Whether a bucket found without history may grant at once, because this replica saw the store
   * refuse connections for longer than a span just before the connection that found the data lost.
   * Waits for the current connection's first epoch check, so that the answer is about this store.
   */
  coldHoldOffWaived: () => Promise<boolean>;
}

/**
 * Detects that the shared store lost its data (docs/decisions/operation-lifecycle.md, "Store data
 * loss"): every new connection is suspect until it has read the epoch this replica knew; a missing
 * or different epoch keeps the store suspect until the rebuild window has passed. A replica that
 * starts without knowing an epoch trusts what it finds. One key, so it works on Cluster and
 * Sentinel alike.
 */
export function createStoreEpoch(options: StoreEpochOptions): StoreEpoch {
  const { client, clock } = options;
  const key = `${options.keyPrefix ?? "keygate"}:epoch`;
  defineScript(client, "keygateEpoch", new URL("./epoch-1.lua", import.meta.url));
  const cmd = client as unknown as EpochCommands;

  let known: string | undefined;
  /** The current connection has read the epoch. */
  let verified = false;
  /** Local time until which the store stays suspect after a loss. */
  let rebuiltAt = Infinity;
  let reported: boolean | undefined;
  let waived = false;
  let firstRefusedAt: number | undefined;
  let quietOutage = false;
  let connection = 0;
  let firstCheck: Promise<void> | undefined;

  const suspect = () => !verified || clock.now() < rebuiltAt;
  const report = () => {
    const s = suspect();
    if (s === reported) return;
    reported = s;
    try {
      options.onSuspectChange?.(s);
    } catch {
      /* an observer must not break the store */
    }
  };

  const check = async (): Promise<void> => {
    const at = connection;
    const [value, created, redisNow] = await cmd.keygateEpoch(key, randomUUID());
    if (at !== connection) return;
    const now = clock.now();
    const createdAt = Number(String(value).split(":").pop());
    const age = Number.isFinite(createdAt) ? Math.max(0, redisNow - createdAt) : 0;
    // Only a replica that knew an epoch can tell a loss. One that starts without knowing one takes
    // what it finds (or creates) as the truth: a first deployment is not treated as a loss, as that
    // would slow every send for the whole window (docs/decisions.md, "A hung or emptied store").
    const lost = known !== undefined && (created === 1 || value !== known);
    if (lost) {
      rebuiltAt = now + options.rebuildMs - age;
      // Only the connection that ended a long refusing outage may skip the hold-off.
      waived = quietOutage && !verified;
      try {
        options.onDataLoss?.({ createdHere: created === 1, previous: known, current: value });
      } catch {
        /* as above */
      }
    } else if (known === undefined) {
      rebuiltAt = -Infinity;
    }
    known = value;
    verified = true;
    report();
  };

  client.on("ready", () => {
    connection++;
    quietOutage = firstRefusedAt !== undefined && clock.now() - firstRefusedAt >= options.quietOutageMs;
    firstRefusedAt = undefined;
    firstCheck = check().catch(() => undefined);
  });
  client.on("close", () => {
    connection++;
    verified = false;
    waived = false;
    firstCheck = undefined;
    report();
  });
  client.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "ECONNREFUSED" && firstRefusedAt === undefined) firstRefusedAt = clock.now();
  });
  report();

  return {
    suspect: () => {
      report();
      return suspect();
    },
    check,
    async coldHoldOffWaived(): Promise<boolean> {
      if (firstCheck) await firstCheck;
      return verified && waived;
    },
  };
}
