import { createHash, randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { systemClock } from "../src/core/clock.js";
import { isKeygateError } from "../src/core/errors.js";
import { operationsOn, redisBackend } from "../src/backends.js";
import { redisClients } from "./support/redis-client.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";

let redis: RedisProcess;
const clients = redisClients();
const connectedClient = (url: string) => clients.connect(url);

const call = () => ({ signal: new AbortController().signal, deadline: Date.now() + 10_000 });
const ok = () => Promise.resolve({ requestId: "req-1", deduplicated: false, instances: [] });

beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  clients.closeAll();
  await redis?.stop();
});

describe("Redis operations", () => {
  it("keeps an idempotency record for 24 h and leaves no claim behind", async () => {
    const client = await connectedClient(redis.url);
    const ops = operationsOn(redisBackend(client), { clock: systemClock });
    const fingerprint = randomUUID();
    const key = randomUUID();
    await ops.run({ fingerprint, idempotency: { tenant: "team-a", key }, execute: ok }, call());
    const hash = createHash("sha256").update(`team-a\u0000${key}`).digest("hex");
    const pttl = await client.pttl(`keygate:idem:{${hash}}`);
    expect(pttl).toBeGreaterThan(23 * 3600_000);
    expect(pttl).toBeLessThanOrEqual(24 * 3600_000);
    expect(await client.exists(`keygate:op:{${fingerprint}}:claim`)).toBe(0);
  });

  it("Redis down → STORE_UNAVAILABLE and nothing executed", async () => {
    const own = await startRedis();
    try {
      const client = await connectedClient(own.url);
      const ops = operationsOn(redisBackend(client), { clock: systemClock });
      await own.kill();
      await new Promise<void>((resolve) =>
        client.status === "ready" ? client.once("close", () => resolve()) : resolve(),
      );
      let executed = 0;
      const execute = () => {
        executed++;
        return ok();
      };
      for (const idempotency of [undefined, { tenant: "team-a", key: "k" }]) {
        const err = await ops
          .run({ fingerprint: randomUUID(), idempotency, execute }, call())
          .catch((e: unknown) => e);
        expect(isKeygateError(err) && err.reason).toBe("STORE_UNAVAILABLE");
      }
      expect(executed).toBe(0);
    } finally {
      await own.stop();
    }
  });
});
