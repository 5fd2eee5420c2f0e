/**
 * bench:contention — many callers binding keys to a few instances whose cloud tasks last ~1.5 s.
 * The same callers (same random choices) run twice in one process, each arm against its own fresh
 * emulated cloud: through 2 keygate replicas sharing one redis-server, and straight to the cloud
 * with the official SDK (naive: call once, return the error). Prints a Markdown table.
 *
 * Run: npm run bench:contention -- [callers=40] [instances=4] [runSeconds=20] [deadlineSeconds=20]
 *        [thinkMinSeconds=5] [thinkMaxSeconds=15]
 */
import { createHash } from "node:crypto";
import { cpus } from "node:os";
import { createEmulator, type Emulator } from "../src/upstream/emulator/index.js";
import { startRedis } from "../test/support/redis-server.js";
import { directArm, keygateArm, LogSink, startReplica } from "./contention-support/arms.js";
import { BENCH_TOKEN, benchInventory, benchPolicy, instanceId } from "./contention-support/fixture.js";
import { runLoad, type CallFn, type LoadOptions } from "./contention-support/load.js";
import { figures, table, type ArmFigures } from "./contention-support/report.js";

const arg = (i: number, dflt: number) => {
  const v = Number(process.argv[2 + i]);
  return Number.isFinite(v) && v > 0 ? v : dflt;
};
const CALLERS = arg(0, 40);
const INSTANCES = arg(1, 4);
const RUN_MS = arg(2, 20) * 1000;
const DEADLINE_MS = arg(3, 20) * 1000;
const TASK_MS = 1500;
const REPLICAS = 2;

const load: LoadOptions = {
  callers: CALLERS,
  instanceIds: Array.from({ length: INSTANCES }, (_, i) => instanceId(i + 1)),
  runMs: RUN_MS,
  deadlineMs: DEADLINE_MS,
  thinkMinMs: arg(4, 5) * 1000,
  thinkMaxMs: Math.max(arg(4, 5), arg(5, 15)) * 1000,
  seed: 42,
};

async function freshCloud(): Promise<Emulator> {
  return createEmulator({
    host: "127.0.0.1",
    port: 0,
    taskMs: TASK_MS,
    inventory: benchInventory(INSTANCES, CALLERS),
  });
}

async function arm(name: string, emulator: Emulator, call: CallFn): Promise<ArmFigures> {
  const t0 = Date.now();
  const outcomes = await runLoad(load, call);
  const f = figures(name, CALLERS, DEADLINE_MS, outcomes, emulator.stats.arrivals);
  console.error(`${name}: ${outcomes.length} calls in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  return f;
}

async function main(): Promise<void> {
  console.error(
    `bench:contention callers=${CALLERS} instances=${INSTANCES} run=${RUN_MS / 1000}s deadline=${DEADLINE_MS / 1000}s ` +
      `think=${load.thinkMinMs / 1000}-${load.thinkMaxMs / 1000}s taskMs=${TASK_MS} replicas=${REPLICAS} cpus=${cpus().length}`,
  );
  const results: ArmFigures[] = [];

  const redis = await startRedis();
  const cloudK = await freshCloud();
  const logs = new LogSink();
  const policy = benchPolicy(createHash("sha256").update(BENCH_TOKEN).digest("hex"));
  const replicas = [];
  try {
    for (let i = 0; i < REPLICAS; i++) replicas.push(await startReplica(cloudK, redis.url, policy, logs));
    results.push(await arm(`keygate (${REPLICAS} replicas, 1 Redis)`, cloudK, keygateArm(replicas)));
  } finally {
    for (const r of replicas) await r.app.stop(5_000);
    await cloudK.close();
    await redis.stop();
  }

  const cloudD = await freshCloud();
  const direct = directArm(cloudD);
  try {
    results.push(await arm("SDK direct (naive)", cloudD, direct.call));
  } finally {
    direct.close();
    await cloudD.close();
  }

  console.log(table(results));
  const warnings = logs.lines.filter((l) => !l.includes('"redis error"'));
  if (warnings.length > 0)
    console.error(`replica warnings (${warnings.length}):\n${warnings.slice(0, 5).join("\n")}`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
