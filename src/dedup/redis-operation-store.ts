import type { RedisClient } from "../store/redis.js";
import { defineScript } from "../store/scripts.js";
import { systemClock, type Clock } from "../core/clock.js";
import { createRedisReleaseFeed } from "../leases/release-feed.js";
import {
  claimKey,
  inheritedFrom,
  OPS_CHANNEL,
  recordKey,
  resultKey,
  type IdempotencyState,
  type OperationStore,
} from "./operation-store.js";

type Command = (...args: (string | number)[]) => Promise<unknown>;

/** Coalescing and idempotency in Redis; every step is one Lua script on one slot. */
export function createRedisOperationStore(options: { client: RedisClient; clock?: Clock }): OperationStore {
  const { client } = options;
  const releases = createRedisReleaseFeed(client, options.clock ?? systemClock, () => OPS_CHANNEL);
  // Each script's URL is spelled out with a literal file name so that the bundling step of the build
  // (scripts/build.mjs) can see it and relocate the file.
  const script = (name: string, file: URL): Command => {
    defineScript(client, name, file);
    const fn = (client as unknown as Record<string, Command>)[name];
    if (typeof fn !== "function") throw new Error(`Redis command ${name} was not registered`);
    return (...args) => fn.apply(client, args);
  };
  const begin = script("keygateBeginIdempotent", new URL("./begin-idempotent-1.lua", import.meta.url));
  const complete = script(
    "keygateCompleteIdempotent",
    new URL("./complete-idempotent-1.lua", import.meta.url),
  );
  const abandon = script("keygateAbandonIdempotent", new URL("./abandon-idempotent-1.lua", import.meta.url));
  const claim = script("keygateClaimOperation", new URL("./claim-operation-2.lua", import.meta.url));
  const renew = script("keygateRenewClaim", new URL("./renew-claim-1.lua", import.meta.url));
  const mark = script("keygateMarkOperation", new URL("./mark-operation-2.lua", import.meta.url));
  const finish = script("keygateFinishOperation", new URL("./finish-operation-3.lua", import.meta.url));

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
    async claim(fingerprint, token, ttl) {
      const reply = (await claim(
        claimKey(fingerprint),
        recordKey(fingerprint),
        token,
        ttl.claimTtlMs,
        ttl.recordTtlMs,
      )) as [number, string?, string?, string?];
      const [state, a = "", b = "", c = ""] = reply;
      if (state === 0) return { state: "held", holder: a };
      if (state === 2) return { state: "finished", outcome: a };
      if (state === 1) return { state: "claimed", inherited: inheritedFrom(a, b, c) };
      throw new Error(`unexpected reply from claim-operation: ${String(state)}`);
    },
    async renewClaim(fingerprint, token, ttlMs) {
      return (await renew(claimKey(fingerprint), token, ttlMs)) === 1;
    },
    async mark(fingerprint, token, phase, detail, recordTtlMs) {
      const written = await mark(
        claimKey(fingerprint),
        recordKey(fingerprint),
        token,
        phase,
        detail.sentAt ?? "",
        detail.requestId ?? "",
        recordTtlMs,
      );
      return written === 1;
    },
    async finish(fingerprint, token, outcome, opts) {
      await finish(
        claimKey(fingerprint),
        resultKey(fingerprint, token),
        recordKey(fingerprint),
        token,
        outcome,
        opts.resultTtlMs,
        OPS_CHANNEL,
        fingerprint,
        opts.final ? "1" : "0",
        opts.joinWindowMs,
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
