/**
 * Task watching at scale (issue 13, item 4): N instances in flight, each followed by its own
 * caller's task watch (one instance per caller, the shape batched associates produce), polling
 * every 500 ms (the default KEYGATE_TASK_POLL_MS). Side by side in one run, for each N:
 *   - per-caller: every watch sends its own DescribeInstances through the metered describe;
 *   - merged: the same watches through the describe batcher (KEYGATE_DESCRIBE_MERGE_MS = 250).
 * Real parts: one private redis-server holds the limiter's window (the describe bucket, 36/s
 * granted), the official SDK signs real HTTP, the CVM emulator counts arrivals. Loopback only;
 * every loop is bounded.
 *
 * Run: npm run bench:describe [-- task-seconds [N,N,...]]   (default 5 s tasks, N = 20,200,1000)
 */
import { setMaxListeners } from "node:events";
import { bucketsOf } from "../src/core/actions.js";
import { systemClock } from "../src/core/clock.js";
import type { InstanceInfo } from "../src/core/model.js";
import type { CallOptions, TaskWatcher } from "../src/core/ports.js";
import { limiterOn, redisBackend } from "../src/backends.js";
import { createTaskWatcher } from "../src/leases/task-watcher.js";
import { createRedis } from "../src/store/redis.js";
import { createDescribeBatcher } from "../src/upstream/describe-batcher.js";
import {
  createEmulator,
  EMULATOR_SECRET_ID,
  EMULATOR_SECRET_KEY,
  maxInSlidingWindow,
} from "../src/upstream/emulator/index.js";
import { createMeteredDescribe } from "../src/upstream/metered-describe.js";
import { createTencentUpstream } from "../src/upstream/tencent-upstream.js";
import { fleetIds, fleetInventory, LOAD_KEY, percentile } from "../test/support/fleet.js";
import { whenReady } from "../test/support/redis-client.js";
import { startRedis } from "../test/support/redis-server.js";
import { sleep } from "../test/support/wait.js";

const taskSeconds = Number(process.argv[2] ?? 5);
if (!Number.isFinite(taskSeconds) || taskSeconds < 2 || taskSeconds > 60) {
  console.error("usage: node --import tsx bench/describe.ts [task-seconds 2..60] [N,N,...]");
  process.exit(2);
}
const SIZES = (process.argv[3] ?? "20,200,1000").split(",").map(Number);
if (SIZES.some((n) => !Number.isInteger(n) || n < 1 || n > 2000)) {
  console.error("N must be whole numbers 1..2000");
  process.exit(2);
}
const TASK_MS = taskSeconds * 1000;
const POLL_MS = 500;
const MERGE_MS = 250;
const REGION = "ap-guangzhou";
const DESCRIBE = "DescribeInstances";
const never = new AbortController().signal;
setMaxListeners(0, never);

interface Row {
  mode: "per-caller" | "merged";
  inFlight: number;
  callsPerSecond: number;
  maxIn1000: number;
  idsPerCall: number;
  pollsPerInstancePerSecond: number;
  seenP50: number;
  seenP99: number;
  limitExceeded: number;
}

const redis = await startRedis();
const client = await whenReady(createRedis(redis.url));
let rowNo = 0;

async function runRow(mode: Row["mode"], inFlight: number): Promise<Row> {
  rowNo += 1;
  const emulator = await createEmulator({
    host: "127.0.0.1",
    port: 0,
    taskMs: TASK_MS,
    inventory: fleetInventory(inFlight, 0),
  });
  const upstream = createTencentUpstream({
    upstreamUrl: emulator.url,
    credential: { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY },
  });
  let calls = 0;
  let ids = 0;
  const counted = {
    describeInstances: (region: string, instanceIds: string[], opts: CallOptions) => {
      calls += 1;
      ids += instanceIds.length;
      return upstream.describeInstances(region, instanceIds, opts);
    },
  };
  const limiter = limiterOn(redisBackend(client), {
    clock: systemClock,
    maxWaitMs: 60_000,
    maxQueue: 100_000,
    coldHoldOff: false,
    keyPrefix: `bench-describe-${process.pid}-${rowNo}`,
  });
  const buckets = bucketsOf(`bench-${rowNo}`, { associate: 10, describe: 40 });
  const metered = createMeteredDescribe({
    upstream: counted,
    limiter,
    clock: systemClock,
    bucket: buckets.describe,
    tenantBudget: 0,
  });
  const describe =
    mode === "merged"
      ? createDescribeBatcher({ describe: metered, clock: systemClock, gapMs: MERGE_MS })
      : (region: string, instanceIds: string[], opts: CallOptions): Promise<InstanceInfo[]> =>
          metered(region, instanceIds, opts);
  const watcher: TaskWatcher = createTaskWatcher({
    describe,
    clock: systemClock,
    pollMs: POLL_MS,
    maxWaitMs: 120_000,
  });

  // Start every task: up to 100 instances per call, paced under the cloud's 10/s.
  const all = fleetIds(inFlight);
  const requestOf = new Map<string, string>();
  for (let i = 0; i < all.length; i += 100) {
    const part = all.slice(i, i + 100);
    const { requestId } = await upstream.associateInstancesKeyPairs(
      { region: REGION, instanceIds: part, keyIds: [LOAD_KEY], forceStop: false },
      { signal: never },
    );
    for (const id of part) requestOf.set(id, requestId);
    await sleep(120);
  }
  const endsAt = new Map<string, number>();
  for (const a of emulator.stats.applies) for (const id of a.instanceIds) endsAt.set(id, a.at + TASK_MS);
  const firstEnd = Math.min(...endsAt.values());

  // One watch per instance, as its caller's background task watch.
  const from = Date.now();
  const callsAtStart = calls;
  const idsAtStart = ids;
  let callsAtEnd = 0;
  let idsAtEnd = 0;
  const windowDone = sleep(Math.max(0, firstEnd - from)).then(() => {
    callsAtEnd = calls;
    idsAtEnd = ids;
  });
  const seen: number[] = [];
  await Promise.all([
    windowDone,
    ...all.map(async (id) => {
      const [outcome] = await watcher.waitForTasks(REGION, [id], requestOf.get(id) ?? "", {
        signal: never,
        deadline: Date.now() + 120_000,
      });
      if (outcome?.state === "SUCCESS") seen.push(Date.now() - (endsAt.get(id) ?? 0));
    }),
  ]);
  const to = Math.min(firstEnd, Date.now());
  const windowSeconds = Math.max(0.001, (to - from) / 1000);
  const times = emulator.stats.times({ action: DESCRIBE }).filter((t) => t >= from && t < to);
  const windowCalls = callsAtEnd - callsAtStart;
  const row: Row = {
    mode,
    inFlight,
    callsPerSecond: times.length / windowSeconds,
    maxIn1000: maxInSlidingWindow(emulator.stats.times({ action: DESCRIBE }), 1000),
    idsPerCall: windowCalls === 0 ? 0 : (idsAtEnd - idsAtStart) / windowCalls,
    pollsPerInstancePerSecond: (idsAtEnd - idsAtStart) / inFlight / windowSeconds,
    seenP50: seen.length === inFlight ? percentile(seen, 50) : Number.NaN,
    seenP99: seen.length === inFlight ? percentile(seen, 99) : Number.NaN,
    limitExceeded: emulator.stats.outcomes({ action: DESCRIBE }).RequestLimitExceeded ?? 0,
  };
  await limiter.close();
  upstream.close();
  await emulator.close();
  return row;
}

const rows: Row[] = [];
try {
  for (const n of SIZES) {
    for (const mode of ["per-caller", "merged"] as const) {
      const row = await runRow(mode, n);
      rows.push(row);
      console.error(`done: ${mode} N=${n}`);
    }
  }
} finally {
  client.disconnect();
  await redis.stop();
}

const f1 = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : "-");
console.log(
  `\nTask watching, ${TASK_MS / 1000} s tasks, polls every ${POLL_MS} ms, describe bucket 36/s granted (cloud: 40/s)\n`,
);
console.log(
  "| polling    | instances in flight | DescribeInstances/s | max in any 1000 ms | ids per call | polls per instance per s | task end seen after p50 / p99 | RequestLimitExceeded |",
);
console.log(
  "| ---------- | ------------------- | ------------------- | ------------------ | ------------ | ------------------------ | ----------------------------- | -------------------- |",
);
for (const r of rows) {
  console.log(
    `| ${r.mode.padEnd(10)} | ${String(r.inFlight).padEnd(19)} | ${f1(r.callsPerSecond).padEnd(19)} | ${String(r.maxIn1000).padEnd(18)} | ${f1(r.idsPerCall).padEnd(12)} | ${r.pollsPerInstancePerSecond.toFixed(2).padEnd(24)} | ${`${Math.round(r.seenP50)} / ${Math.round(r.seenP99)} ms`.padEnd(29)} | ${String(r.limitExceeded).padEnd(20)} |`,
  );
}
process.exit(0);
