import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { systemClock } from "../src/core/clock.js";
import { isKeygateError } from "../src/core/errors.js";
import { leasesOn, redisBackend } from "../src/backends.js";
import { EXPIRED_LEASE_MEMORY_MS } from "../src/leases/lease-store.js";
import { redisClients, whenReady } from "./support/redis-client.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";

let redis: RedisProcess;
const clients = redisClients();
const connectedClient = () => clients.connect(redis.url);

const call = (ms = 10_000) => ({ signal: new AbortController().signal, deadline: Date.now() + ms });

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  clients.closeAll();
  await redis?.stop();
});

describe("Redis leases", () => {
  it("stores one key per instance under the scope's hash tag, with a TTL and our fenced token", async () => {
    const client = await connectedClient();
    const leases = leasesOn(redisBackend(client), { clock: systemClock, ttlMs: 30_000 });
    const scope = randomUUID();
    const h = await leases.acquire(scope, ["ins-0000000b", "ins-0000000a", "ins-0000000a"], {
      ...call(),
      owner: "replica-1",
    });
    const key = `keygate:{${scope}}:lease:ins-0000000a`;
    // "<expiresAt by Redis TIME>/<fence>:<owner>#<acquisition id>"; the key outlives the lease so
    // that an expired lease can be told from a released one.
    const [expiresAt, token] = (await client.get(key))?.split("/") ?? [];
    expect(token).toMatch(new RegExp(`^${h.fence}:replica-1#[0-9a-f-]{36}$`));
    const [sec = "0", micro = "0"] = await client.time();
    const left = Number(expiresAt) - (Number(sec) * 1000 + Math.floor(Number(micro) / 1000));
    expect(left).toBeGreaterThan(0);
    expect(left).toBeLessThanOrEqual(30_000);
    const pttl = await client.pttl(key);
    expect(pttl).toBeGreaterThan(30_000);
    expect(pttl).toBeLessThanOrEqual(30_000 + EXPIRED_LEASE_MEMORY_MS);
    expect(await client.get(`keygate:{${scope}}:lease-fence`)).toBe(String(h.fence));
    await h.release();
    expect(await client.exists(key, `keygate:{${scope}}:lease:ins-0000000b`)).toBe(0);
    await leases.close();
  });

  it("after Redis lost its data, a lease from before cannot free or stretch a new call's lease (same fence)", async () => {
    const client = await connectedClient();
    const leases = leasesOn(redisBackend(client), { clock: systemClock, ttlMs: 30_000 });
    const scope = randomUUID();
    const before = await leases.acquire(scope, ["ins-00000001"], { ...call(), owner: "replica-1" });
    // Redis restarted empty: the fence counter starts again, so the next lease gets the same fence.
    await client.flushall();
    const after = await leases.acquire(scope, ["ins-00000001"], { ...call(), owner: "replica-1" });
    expect(after.fence).toBe(before.fence);
    // The old holder (e.g. a task watch from before the restart) lets go: the new lease stays.
    await before.release();
    const key = `keygate:{${scope}}:lease:ins-00000001`;
    expect(await client.exists(key)).toBe(1);
    const third = await leases
      .acquire(scope, ["ins-00000001"], { ...call(300), owner: "replica-2" })
      .catch((e: unknown) => e);
    expect(isKeygateError(third) && third.reason).toBe("INSTANCE_BUSY");
    expect(after.lost.aborted).toBe(false);
    await after.release();
    expect(await client.exists(key)).toBe(0);
    await leases.close();
  });

  it("a replica that crashed (connection gone) loses its leases by TTL; another replica takes over", async () => {
    const crashedClient = await connectedClient();
    const crashed = leasesOn(redisBackend(crashedClient), {
      clock: systemClock,
      ttlMs: 300,
      renewEveryMs: 100,
    });
    const other = leasesOn(redisBackend(await connectedClient()), { clock: systemClock });
    const scope = randomUUID();
    const stale = await crashed.acquire(scope, ["ins-00000001"], { ...call(), owner: "dead" });
    const lost = new Promise<unknown>((r) =>
      stale.lost.addEventListener("abort", () => r(stale.lost.reason)),
    );
    crashedClient.disconnect();
    const h = await other.acquire(scope, ["ins-00000001"], { ...call(5_000), owner: "alive" });
    expect(h.fence).toBeGreaterThan(stale.fence);
    const reason = await lost;
    expect(isKeygateError(reason) && reason.reason).toBe("STORE_UNAVAILABLE");
    await h.release();
    await Promise.all([crashed.close(), other.close()]);
  });

  it("Redis down → STORE_UNAVAILABLE at once; works again after Redis is back", async () => {
    const own = await startRedis();
    try {
      const client = await clients.connect(own.url);
      const leases = leasesOn(redisBackend(client), { clock: systemClock });
      await own.kill();
      await new Promise<void>((resolve) =>
        client.status === "ready" ? client.once("close", () => resolve()) : resolve(),
      );
      const err = await leases
        .acquire(randomUUID(), ["ins-00000001"], { ...call(), owner: "r" })
        .catch((e: unknown) => e);
      expect(isKeygateError(err) && err.reason).toBe("STORE_UNAVAILABLE");
      await own.restart();
      await whenReady(client);
      const h = await leases.acquire(randomUUID(), ["ins-00000001"], { ...call(), owner: "r" });
      await h.release();
      await leases.close();
    } finally {
      await own.stop();
    }
  });
});
