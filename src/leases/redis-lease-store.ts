import { systemClock } from "../core/clock.js";
import type { RedisClient } from "../store/redis.js";
import type { Clock } from "../core/clock.js";
import {
  EXPIRED_LEASE_MEMORY_MS,
  fenceKey,
  leaseKey,
  reservationKey,
  ticketOf,
  type LeaseStore,
} from "./lease-store.js";
import { defineVariadicScript } from "../store/scripts.js";
import { createRedisReleaseFeed, releaseChannel } from "./release-feed.js";

/** Leases in Redis, shared by every replica; each step is one Lua script (atomic, one slot). */
export function createRedisLeaseStore(options: {
  client: RedisClient;
  clock?: Clock;
  expiredMemoryMs?: number;
}): LeaseStore {
  const { client } = options;
  const keepMs = options.expiredMemoryMs ?? EXPIRED_LEASE_MEMORY_MS;
  const releases = createRedisReleaseFeed(client, options.clock ?? systemClock);
  const acquire = defineVariadicScript(
    client,
    "keygateAcquireLeases",
    new URL("./acquire-leases.lua", import.meta.url),
  );
  const renew = defineVariadicScript(
    client,
    "keygateRenewLeases",
    new URL("./renew-leases.lua", import.meta.url),
  );
  const release = defineVariadicScript(
    client,
    "keygateReleaseLeases",
    new URL("./release-leases.lua", import.meta.url),
  );
  const withdraw = defineVariadicScript(
    client,
    "keygateWithdrawReservations",
    new URL("./withdraw-reservations.lua", import.meta.url),
  );
  const keys = (scope: string, ids: string[]) => ids.map((id) => leaseKey(scope, id));

  return {
    releases,
    async tryAcquire(scope, instanceIds, owner, ttlMs, w) {
      const reply = (await acquire(
        [fenceKey(scope), ...keys(scope, instanceIds), ...instanceIds.map((id) => reservationKey(scope, id))],
        [owner, ttlMs, w.since, w.id, w.reserve ? "1" : "0", w.reserveMs, keepMs],
      )) as number[];
      if (reply[0] === 1) return { ok: true, fence: Number(reply[1]), tookOver: reply[2] === 1 };
      const busy = instanceIds[Number(reply[1]) - 1] ?? "";
      return { ok: false, busyInstanceId: busy, heldForMs: Number(reply[2]) };
    },
    async withdraw(scope, instanceIds, w) {
      if (instanceIds.length === 0) return;
      await withdraw(
        instanceIds.map((id) => reservationKey(scope, id)),
        [ticketOf(w), releaseChannel(scope)],
      );
    },
    async renew(scope, instanceIds, token, ttlMs) {
      if (instanceIds.length === 0) return true;
      return (await renew(keys(scope, instanceIds), [token, ttlMs, keepMs])) === 1;
    },
    async release(scope, instanceIds, token) {
      if (instanceIds.length === 0) return;
      await release(keys(scope, instanceIds), [token, releaseChannel(scope)]);
    },
  };
}
