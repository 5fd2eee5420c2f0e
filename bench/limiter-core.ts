/**
 * The limiter alone, against one private redis-server: 1, 3 and 8 limiter instances (own
 * ioredis client each = replicas) saturate one bucket; compared with bottleneck's Redis
 * clustering configured for "10/s". Prints max in any sliding 1000 ms, rate, p50/p99 wait.
 * Run: node --import tsx bench/limiter-core.ts [seconds]
 */
import { setMaxListeners } from "node:events";
import Bottleneck from "bottleneck";
import { limiterOn, redisBackend } from "../src/backends.js";
import { maxInAnyWindow } from "../src/limiter/window.js";
import { createRedis, type RedisClient } from "../src/store/redis.js";
import { startRedis } from "../test/support/redis-server.js";

const seconds = Number(process.argv[2] ?? 5);
const never = new AbortController().signal;
setMaxListeners(0, never); // one shared signal for every bench caller

interface Result {
  grants: number[];
  waits: number[];
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
};

function report(name: string, replicas: number, r: Result, durationMs: number): void {
  const g = [...r.grants].sort((a, b) => a - b);
  // After the first burst of 10: the rate a saturated bucket sustains.
  const rate = ((g.length - 10) / ((g[g.length - 1] ?? 0) - (g[0] ?? 0))) * 1000;
  void durationMs;
  console.log(
    `${name.padEnd(10)} replicas=${replicas} grants=${g.length} maxIn1000ms=${maxInAnyWindow(g, 1000)} ` +
      `rate=${rate.toFixed(2)}/s waitP50=${pct(r.waits, 50)}ms waitP99=${pct(r.waits, 99)}ms`,
  );
}

async function ready(c: RedisClient): Promise<RedisClient> {
  c.on("error", () => undefined);
  if (c.status !== "ready") await new Promise((r) => c.once("ready", r));
  return c;
}

/** Callers per replica loop acquire() until the end; each grant time and wait is recorded. */
async function saturate(
  replicas: number,
  acquire: (replica: number) => Promise<void>,
  durationMs: number,
): Promise<Result> {
  const r: Result = { grants: [], waits: [] };
  const end = Date.now() + durationMs;
  const caller = async (i: number) => {
    while (Date.now() < end) {
      const t0 = Date.now();
      try {
        await acquire(i % replicas);
      } catch (e) {
        // Refused (RATE_LIMITED at once when the turn cannot come before the deadline): come back
        // after a short pause, as a remote client would. Retrying at once would spin on microtasks
        // and starve this process's timers, the limiter's included.
        const retryAfterMs = (e as { retryAfterMs?: number }).retryAfterMs ?? 50;
        await new Promise((res) => setTimeout(res, Math.min(50, Math.max(1, retryAfterMs))));
        continue;
      }
      const now = Date.now();
      if (now < end) {
        r.grants.push(now);
        r.waits.push(now - t0);
      }
    }
  };
  await Promise.all(Array.from({ length: replicas * 10 }, (_, i) => caller(i)));
  return r;
}

async function benchKeygate(url: string, replicas: number, durationMs: number): Promise<void> {
  const clients = await Promise.all(Array.from({ length: replicas }, () => ready(createRedis(url))));
  const limiters = clients.map((client) =>
    limiterOn(redisBackend(client), { keyPrefix: `bench${replicas}`, coldHoldOff: false }),
  );
  const bucket = { key: `bench-${replicas}`, limit: 10, windowMs: 1000 };
  const r = await saturate(
    replicas,
    async (i) => {
      await limiters[i]?.acquire({
        bucket,
        tenant: "t",
        weight: 1,
        signal: never,
        deadline: Date.now() + durationMs,
      });
    },
    durationMs,
  );
  report("keygate", replicas, r, durationMs);
  await Promise.all(limiters.map((l) => l.close()));
  for (const c of clients) c.disconnect();
}

async function benchBottleneck(port: number, replicas: number, durationMs: number): Promise<void> {
  const limiters = Array.from(
    { length: replicas },
    () =>
      new Bottleneck({
        id: `{bn-${replicas}}`,
        datastore: "ioredis",
        clearDatastore: false,
        clientOptions: { host: "127.0.0.1", port },
        reservoir: 10,
        reservoirRefreshAmount: 10,
        reservoirRefreshInterval: 1000,
        heartbeatInterval: 250,
      }),
  );
  limiters.forEach((l) => l.on("error", () => undefined));
  await Promise.all(limiters.map((l) => l.ready()));
  const r = await saturate(
    replicas,
    (i) => limiters[i]?.schedule({ expiration: durationMs }, () => Promise.resolve()) ?? Promise.resolve(),
    durationMs,
  );
  report("bottleneck", replicas, r, durationMs);
  await Promise.all(limiters.map((l) => l.disconnect(false)));
}

const redis = await startRedis();
try {
  for (const n of [1, 3, 8]) {
    await benchKeygate(redis.url, n, seconds * 1000);
    await benchBottleneck(redis.port, n, seconds * 1000).catch((e: unknown) =>
      console.log(`bottleneck replicas=${n} failed: ${String(e)}`),
    );
  }
} finally {
  await redis.stop();
}
process.exit(0);
