/**
 * Task watching scales (issue 13, item 4): 150 instances in flight for 30 callers of one gateway are
 * watched with a few merged DescribeInstances calls, counted at the emulator. Everything is real:
 * gRPC clients → the gateway (Redis limiter and leases) → the official SDK → the emulator.
 */
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { createEmulator, type Emulator } from "../src/upstream/emulator/index.js";
import { startGateway, type TestGateway } from "./support/app.js";
import { fleetIds, fleetInventory, LOAD_KEY } from "./support/fleet.js";
import { opsPolicy } from "./support/policies.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";
import { pollUntil, sleep } from "./support/wait.js";

const TOKEN = "token-describe-merge-0123456789";
const CALLERS = 30;
const PER_CALLER = 5;
/** Long enough that every task still runs while the window below is counted. */
const TASK_MS = 10_000;
/** The default KEYGATE_TASK_POLL_MS. */
const POLL_MS = 500;
const WINDOW_MS = 2_000;
const DESCRIBE = "DescribeInstances";

let redis: RedisProcess;
let emulator: Emulator;
let gw: TestGateway;
let client: Client<typeof KeyPairService>;

beforeAll(async () => {
  redis = await startRedis();
  emulator = await createEmulator({
    host: "127.0.0.1",
    port: 0,
    taskMs: TASK_MS,
    inventory: fleetInventory(CALLERS * PER_CALLER, 0),
  });
  gw = await startGateway({
    emulator,
    policyText: opsPolicy(TOKEN),
    env: { KEYGATE_REDIS_URL: redis.url, KEYGATE_LOG_LEVEL: "warn", KEYGATE_TASK_POLL_MS: String(POLL_MS) },
  });
  client = createClient(KeyPairService, createGrpcTransport({ baseUrl: gw.url }));
});
afterAll(async () => {
  await gw?.stop();
  await emulator?.close();
  await redis?.stop();
});

/** The value of an unlabelled series on the gateway's /metrics page. */
async function metric(name: string): Promise<number> {
  const text = await (await fetch(gw.metricsUrl)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`${name} not on /metrics`);
  return Number(line.split(" ")[1]);
}

describe("merged task watching", () => {
  it("150 instances in flight for 30 callers are polled with a few DescribeInstances calls per second", async () => {
    const ids = fleetIds(CALLERS * PER_CALLER);
    // 30 callers, 5 instances each, answered once sent: each keeps its own background task watch.
    const started = await Promise.all(
      Array.from({ length: CALLERS }, (_, i) =>
        client.associateKeyPairs(
          {
            region: "ap-guangzhou",
            instanceIds: ids.slice(i * PER_CALLER, (i + 1) * PER_CALLER),
            keyIds: [LOAD_KEY],
            waitForCompletion: false,
          },
          { headers: { authorization: `Bearer ${TOKEN}` }, timeoutMs: 30_000 },
        ),
      ),
    );
    expect(started.every((r) => r.requestId !== "")).toBe(true);
    const applies = emulator.stats.applies;
    // The 30 calls may share cloud calls (batching): what counts is that every instance got its task.
    expect(new Set(applies.flatMap((a) => a.instanceIds)).size).toBe(CALLERS * PER_CALLER);
    const lastSend = Math.max(...applies.map((a) => a.at));
    const firstEnd = Math.min(...applies.map((a) => a.at)) + TASK_MS;

    // Every task is running now: count the polls that reach the cloud over a window.
    const from = Date.now();
    const callsBefore = await metric("keygate_describe_ids_per_call_count");
    const idsBefore = await metric("keygate_describe_ids_per_call_sum");
    await sleep(WINDOW_MS);
    const to = Date.now();
    expect(to).toBeLessThan(firstEnd);
    const polls = emulator.stats.times({ action: DESCRIBE }).filter((t) => t >= from && t < to);
    const calls = (await metric("keygate_describe_ids_per_call_count")) - callsBefore;
    const carried = (await metric("keygate_describe_ids_per_call_sum")) - idsBefore;
    // Per-caller polling would want 30 calls per 500 ms poll (60/s: more than the 36/s the bucket
    // grants, so describes would queue, policy lookups with them). Merged, in 2 s: partial calls at
    // least 250 ms apart (KEYGATE_DESCRIBE_MERGE_MS), so at most 9; each instance asked about at most
    // once per poll interval, so at most 5 x 150 ids, at most 7 full calls of 100: 16 calls, 8/s.
    const perSecond = polls.length / (WINDOW_MS / 1000);
    expect(perSecond).toBeLessThanOrEqual(8);
    expect(perSecond).toBeGreaterThan(0);
    expect(emulator.stats.maxInWindow({ action: DESCRIBE })).toBeLessThanOrEqual(36);
    // Each merged call carried many callers' instances (a per-caller poll carries 5).
    console.log(
      `describe merge: ${polls.length} DescribeInstances in ${WINDOW_MS} ms, ${calls} merged calls carrying ${carried} ids`,
    );
    expect(calls).toBeGreaterThan(0);
    expect(carried / calls).toBeGreaterThanOrEqual(30);
    expect(emulator.stats.outcomes({ action: DESCRIBE }).RequestLimitExceeded ?? 0).toBe(0);
    expect(lastSend).toBeLessThan(from);

    // Every watcher got its own instances' answers: once the tasks end, every watch ends and
    // the polling stops.
    const lastEnd = Math.max(...applies.map((a) => a.at)) + TASK_MS;
    await sleep(Math.max(0, lastEnd - Date.now()));
    await pollUntil(() => {
      const recent = emulator.stats.times({ action: DESCRIBE }).filter((t) => t > Date.now() - 1_000);
      return recent.length === 0;
    }, "the polling to stop once every task ended");
  }, 60_000);
});
