import type { RedisClient } from "../store/redis.js";
import { defineScript } from "../store/scripts.js";
import { systemClock, type Clock } from "../core/clock.js";
import { createRedisReleaseFeed } from "../leases/release-feed.js";
import {
  claimKey,
  OPS_CHANNEL,
  resultKey,
  type IdempotencyState,
  type OperationStore,
} from "./operation-store.js";

type Command = (...args: (string | number)[]) => Promise<unknown>;

/** Coalescing and idempotency in Redis; every step is one Lua script on one slot. */
export function createRedisOperationStore(options: { client: RedisClient; clock?: Clock }): OperationStore {
  const { client } = options;
  const releases = createRedisReleaseFeed(client, options.clock ?? systemClock, () => OPS_CHANNEL);
  const script = (name: string, file: string): Command => {
    defineScript(client, name, new URL(file, import.meta.url));
    const fn = (client as unknown as Record<string, Command>)[name];
    if (typeof fn !== "function") throw new Error(`Redis command ${name} was not registered`);
    return (...args) => fn.apply(client, args);
  };
  const begin = script("keygateBeginIdempotent", "./begin-idempotent-1.lua");
  const complete = script("keygateCompleteIdempotent", "./complete-idempotent-1.lua");
  const abandon = script("keygateAbandonIdempotent", "./abandon-idempotent-1.lua");
  const claim = script("keygateClaimOperation", "./claim-operation-1.lua");
  const renew = script("keygateRenewClaim", "./renew-claim-1.lua");
  const finish = script("keygateFinishOperation", "./finish-operation-2.lua");

  return {
    releases,
    async beginIdempotent(key, fingerprint, ttlMs): Promise<IdempotencyState> {
      const [state, outcome] = (await begin(key, fingerprint, ttlMs)) as [string, string | undefined];
      if (state === "done") return { state, outcome: outcome ?? "" };
      if (state === "new" || state === "pending" || state === "mismatch") return { state };
      throw new Error(`unexpected reply from begin-idempotent: ${state}`);
    },
    async completeIdempotent(key, fingerprint, outcome, ttlMs) {
      await complete(key, fingerprint, outcome, ttlMs);
    },
    async abandonIdempotent(key, fingerprint) {
      await abandon(key, fingerprint);
    },
    async claim(fingerprint, token, ttlMs) {
      const [ok, holder] = (await claim(claimKey(fingerprint), token, ttlMs)) as [number, string | null];
      // holder is null only if the claim expired between SET NX and GET inside the script: impossible.
      return ok === 1 ? { claimed: true } : { claimed: false, holder: holder ?? "" };
    },
    async renewClaim(fingerprint, token, ttlMs) {
      return (await renew(claimKey(fingerprint), token, ttlMs)) === 1;
    },
    async finish(fingerprint, token, outcome, resultTtlMs) {
      await finish(
        claimKey(fingerprint),
        resultKey(fingerprint, token),
        token,
        outcome,
        resultTtlMs,
        OPS_CHANNEL,
        fingerprint,
      );
    },
    async peek(fingerprint, holder) {
      // Both keys share the {fingerprint} hash tag, so MGET is one atomic read even on Cluster.
      const [claimHolder = null, outcome = null] = await client.mget(
        claimKey(fingerprint),
        resultKey(fingerprint, holder),
      );
      return { claimHolder, outcome };
    },
  };
}
