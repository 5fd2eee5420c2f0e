/**
 * Store data loss is detected (src/store/epoch.ts) against a real redis-server that is SIGKILLed
 * and restarted empty on the same port: every new connection is suspect until it has read the
 * epoch, a missing or changed epoch keeps the store suspect for the rebuild window, and only a
 * connection that ends a long refusing outage may skip the limiter's cold hold-off.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { systemClock } from "../src/core/clock.js";
import { createStoreEpoch, type StoreEpoch } from "../src/store/epoch.js";
import { createRedis, type RedisClient } from "../src/store/redis.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";
import { pollUntil, sleep } from "./support/wait.js";

let redis: RedisProcess;
const clients: RedisClient[] = [];

beforeAll(async () => {
  redis = await startRedis();
});
afterEach(() => {
  for (const c of clients.splice(0)) c.disconnect();
});
afterAll(async () => {
  await redis?.stop();
});

interface Replica {
  epoch: StoreEpoch;
  client: RedisClient;
  losses: { createdHere: boolean; previous: string | undefined }[];
  gauge: boolean[];
}

function replica(prefix: string, rebuildMs: number, quietOutageMs = 1_200): Replica {
  const client = createRedis(redis.url, { timeoutMs: 1_000 });
  clients.push(client);
  const r: Replica = { client, losses: [], gauge: [], epoch: undefined as unknown as StoreEpoch };
  r.epoch = createStoreEpoch({
    client,
    clock: systemClock,
    rebuildMs,
    quietOutageMs,
    keyPrefix: prefix,
    onSuspectChange: (s) => r.gauge.push(s),
    onDataLoss: (d) => r.losses.push(d),
  });
  return r;
}

const ready = (r: Replica) => pollUntil(() => r.client.status === "ready", "redis ready", 10_000);

describe("store epoch", () => {
  it("a fresh deployment is trusted at once (only a replica that knew an epoch can tell a loss); a later replica trusts it too", async () => {
    const a = replica("fresh", 60_000);
    await ready(a);
    await a.epoch.check();
    expect(a.epoch.suspect()).toBe(false);
    expect(a.losses).toEqual([]);

    const b = replica("fresh", 60_000);
    await ready(b);
    await b.epoch.check();
    expect(b.epoch.suspect()).toBe(false);
    expect(b.losses).toEqual([]);
  });

  it("Redis SIGKILLed and restarted empty: both replicas see the loss, stay suspect for the window, then trust it again", async () => {
    const rebuildMs = 1_500;
    const a = replica("loss", rebuildMs);
    const b = replica("loss", rebuildMs);
    await Promise.all([ready(a), ready(b)]);
    await a.epoch.check();
    await b.epoch.check();
    await pollUntil(() => !a.epoch.suspect() && !b.epoch.suspect(), "both trusted", 10_000);
    a.losses.length = 0;
    b.losses.length = 0;

    await redis.kill();
    // A lost connection is suspect at once: nothing it knew can be trusted until read again.
    await pollUntil(() => a.epoch.suspect() && b.epoch.suspect(), "suspect while down", 5_000);
    await redis.restart();
    await Promise.all([ready(a), ready(b)]);
    await pollUntil(
      async () => {
        await Promise.all([a.epoch.check(), b.epoch.check()]).catch(() => undefined);
        return a.losses.length === 1 && b.losses.length === 1;
      },
      "both replicas to detect the loss",
      10_000,
    );
    // One of them re-created the epoch; the other found it changed. Each logged it once.
    expect([a.losses[0]?.createdHere, b.losses[0]?.createdHere].sort()).toEqual([false, true]);
    expect(a.losses[0]?.previous).toBeDefined();
    expect(a.epoch.suspect()).toBe(true);
    expect(b.epoch.suspect()).toBe(true);
    await pollUntil(() => !a.epoch.suspect() && !b.epoch.suspect(), "the rebuild window to pass", 10_000);
    // A restart with the data kept (same epoch) is not a loss: verified on the new connection, not suspect.
    a.client.disconnect(true);
    await pollUntil(() => a.epoch.suspect(), "a suspect on its new connection", 5_000);
    await ready(a);
    await pollUntil(async () => (await a.epoch.check(), !a.epoch.suspect()), "a verified again", 10_000);
    expect(a.losses).toHaveLength(1);
  });

  it("waives the cold hold-off only after an outage that refused connects for longer than quietOutageMs", async () => {
    const r = replica("waive", 60_000, 1_200);
    await ready(r);
    await r.epoch.check();
    expect(await r.epoch.coldHoldOffWaived()).toBe(false);

    // A blip shorter than the span: the hold-off stays.
    await redis.kill();
    await redis.restart();
    await ready(r);
    expect(await r.epoch.coldHoldOffWaived()).toBe(false);

    // Down (refusing) for longer than the span, back empty: waived on that connection.
    await redis.kill();
    await sleep(1_600);
    await redis.restart();
    await ready(r);
    expect(await r.epoch.coldHoldOffWaived()).toBe(true);
    expect(r.epoch.suspect()).toBe(true);

    // Not carried to a later connection.
    r.client.disconnect(true);
    await pollUntil(() => r.client.status !== "ready", "disconnected", 5_000);
    await ready(r);
    expect(await r.epoch.coldHoldOffWaived()).toBe(false);
  });
});
