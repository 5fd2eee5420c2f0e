/**
 * KEYGATE_ON_STORE_DOWN=local-share: three limiter replicas (own ioredis client each) over one
 * real redis-server; Redis is killed and restarted under a saturating load. While it is down each
 * replica grants floor(10 ÷ 3) = 3 per window on its own; the switches in both directions never
 * let the two limiters add up inside one window.
 */
import { setMaxListeners } from "node:events";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { maxIn1000 } from "./support/fleet.js";
import { pollUntil } from "./support/wait.js";
import { isKeygateError } from "../src/core/errors.js";
import { createLocalShareLimiter, type LocalShareMode } from "../src/limiter/local-share-limiter.js";
import { limiterOn, memoryBackend, redisBackend } from "../src/backends.js";
import { createRedis, type RedisClient } from "../src/store/redis.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";

let redis: RedisProcess;
const clients: RedisClient[] = [];

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  for (const c of clients) c.disconnect();
  await redis?.stop();
});

const never = new AbortController().signal;
setMaxListeners(0, never);

async function replica(prefix: string, replicas: number) {
  const client = createRedis(redis.url);
  clients.push(client);
  client.on("error", () => undefined);
  await pollUntil(() => client.status === "ready", "the Redis client ready", 5_000);
  const modes: LocalShareMode[] = [];
  const limiter = createLocalShareLimiter({
    primary: limiterOn(redisBackend(client), { keyPrefix: prefix }),
    createLocal: () => limiterOn(memoryBackend),
    replicas,
    primaryReady: () => client.status === "ready",
    onModeChange: (m) => modes.push(m),
  });
  return { limiter, modes };
}

/** `callers` loops acquiring until `stop()` or `untilMs` (hard bound); grant times and error reasons per replica. */
function saturate(
  limiters: { limiter: Awaited<ReturnType<typeof replica>>["limiter"] }[],
  bucket: { key: string; limit: number; windowMs: number },
  callers: number,
  untilMs: number,
) {
  const grants = limiters.map(() => [] as number[]);
  const errors: Record<string, number> = {};
  let stopped = false;
  const loop = async (i: number) => {
    const r = i % limiters.length;
    while (Date.now() < untilMs && !stopped) {
      try {
        await limiters[r]!.limiter.acquire({
          bucket,
          tenant: "t",
          weight: 1,
          signal: never,
          deadline: Math.min(untilMs, Date.now() + 5_000),
        });
        grants[r]!.push(Date.now());
      } catch (e) {
        const reason = isKeygateError(e) ? e.reason : String(e);
        errors[reason] = (errors[reason] ?? 0) + 1;
        // A refused caller comes back after a short pause, as a real client would.
        await new Promise((res) => setTimeout(res, 50));
      }
    }
  };
  const done = Promise.all(Array.from({ length: callers }, (_, i) => loop(i)));
  return {
    grants,
    errors,
    done,
    stop: () => {
      stopped = true;
    },
  };
}

describe("local-share when Redis is down", () => {
  it("three replicas stay under the limit together through the outage and hand back to Redis", async () => {
    const reps = await Promise.all([0, 1, 2].map(() => replica("degraded3", 3)));
    const bucket = { key: "cred:cvm:Associate", limit: 10, windowMs: 1000 };
    const t0 = Date.now();
    const run = saturate(reps, bucket, 24, t0 + 25_000);

    await pollUntil(() => run.grants.flat().length >= 15, "15 grants", 10_000); // past the cold hold-off, saturated
    const killedAt = Date.now();
    await redis.kill();
    await pollUntil(
      () => reps.every((r) => r.limiter.mode() === "local-share"),
      "every replica in local-share",
      5_000,
    );
    await new Promise((res) => setTimeout(res, 2_500));
    const restartedAt = Date.now();
    await redis.restart();
    await pollUntil(
      () => reps.every((r) => r.limiter.mode() === "primary"),
      "every replica back on Redis",
      15_000,
    );
    const backAt = Date.now();
    await new Promise((res) => setTimeout(res, 1_500));
    run.stop();
    await run.done;
    await Promise.all(reps.map((r) => r.limiter.close()));

    const all = run.grants.flat();
    const outage = (g: number[]) => g.filter((t) => t > killedAt && t < restartedAt);
    const inOutage = run.grants.map(outage);
    const afterBack = all.filter((t) => t > backAt);
    console.log(
      `limit-degraded: ${all.length} grants, max in 1000 ms ${maxIn1000(all)}; during the outage ` +
        `${inOutage.map((g) => g.length).join("+")} grants, per replica max in 1000 ms ` +
        `${inOutage.map((g) => maxIn1000(g)).join(",")}, together ${maxIn1000(inOutage.flat())}; ` +
        `${afterBack.length} after hand-back (${backAt - restartedAt} ms after restart); modes ${JSON.stringify(reps.map((r) => r.modes))}; errors ${JSON.stringify(run.errors)}`,
    );

    // The cap holds across the whole run, switches included.
    expect(maxIn1000(all)).toBeLessThanOrEqual(10);
    // Degraded: each replica grants its own share (3), so callers are still served.
    for (const g of inOutage) {
      expect(g.length).toBeGreaterThan(0);
      expect(maxIn1000(g)).toBeLessThanOrEqual(3);
    }
    expect(maxIn1000(inOutage.flat())).toBeLessThanOrEqual(9);
    // Every replica went local and came back to Redis by itself.
    for (const r of reps) {
      expect(r.modes).toContain("local-share");
      expect(r.modes.at(-1)).toBe("primary");
    }
    expect(afterBack.length).toBeGreaterThan(0);
    // Nobody was told STORE_UNAVAILABLE: that is the point of local-share.
    expect(run.errors.STORE_UNAVAILABLE ?? 0).toBe(0);
  });

  it("more replicas than the limit still leaves each at least one grant per window; penalties apply locally", async () => {
    const rep = await replica("degraded20", 20);
    await redis.kill();
    const bucket = { key: "cred:cvm:Associate20", limit: 10, windowMs: 1000 };
    const t0 = Date.now();
    const run = saturate([rep], bucket, 4, t0 + 3_500);
    await pollUntil(() => run.grants[0]!.length >= 1, "a first grant", 5_000);
    // The cloud said RequestLimitExceeded: the local limiter holds off too.
    await rep.limiter.penalize(bucket, 1_500);
    const penalizedAt = Date.now();
    await run.done;
    await rep.limiter.close();
    await redis.restart();

    const g = run.grants[0]!;
    console.log(
      `limit-degraded: replicas=20 → ${g.length} grants in ${Date.now() - t0} ms, max in 1000 ms ${maxIn1000(g)}`,
    );
    expect(rep.limiter.mode()).toBe("local-share");
    expect(g.length).toBeGreaterThanOrEqual(1);
    expect(maxIn1000(g)).toBe(1);
    expect(g.filter((t) => t > penalizedAt + 50 && t < penalizedAt + 1_400)).toHaveLength(0);
  });
});
