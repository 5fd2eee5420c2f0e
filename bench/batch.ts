/**
 * Issue 13 — how many instance associations the same 10 calls/s carry when waiting callers share
 * cloud calls. 200 concurrent callers, each binding one key to one (fresh) instance per request,
 * against the CVM emulator (child process, its own large inventory) through 1 and 3 keygate
 * replicas sharing one private redis-server: batching on, batching off, and the same callers
 * calling the SDK directly, side by side in one run. Plus one row where 5% of the callers name
 * instances the cloud does not have: they get NOT_FOUND, nobody else fails, and sorting them out costs
 * a bounded number of extra calls. Everything is counted at the emulator. Loopback only; bounded.
 * Per keygate row it also prints the replicas' CPU per request (from /proc), their own latency
 * histograms, and the store work per request (scripts and commands, from Redis' commandstats).
 * The callers send Connect binary over HTTP/2 from one bench process (bench/support/lean-caller.ts);
 * the first batching-on row is repeated with the Connect-ES client as every caller, which costs the
 * bench process (and so the two shared cores) about twice as much per call.
 *
 * Run: npm run bench:batch [-- seconds [replicas,…]]   (default 15 s of load per row, as issue 13
 * measured; BENCH_BATCH_ONLY_ON=1 runs only the batching-on rows)
 */
import { setMaxListeners } from "node:events";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { splitBound } from "../src/core/batcher.js";
import { isKeygateError } from "../src/core/errors.js";
import { EMULATOR_SECRET_ID, EMULATOR_SECRET_KEY } from "../src/upstream/emulator/index.js";
import { createTencentUpstream } from "../src/upstream/tencent-upstream.js";
import { startRedis } from "../test/support/redis-server.js";
import {
  ASSOCIATE,
  BATCH_POLICY,
  fleetIds,
  fleetInventory,
  LOAD_KEY,
  LOAD_TOKEN,
  maxIn1000,
  percentile,
  runLoad,
  type LoadResult,
} from "../test/support/fleet.js";
import { LeanCallError, leanConnection, type LeanRequest } from "./support/lean-caller.js";
import {
  type Child,
  cpuMsOf,
  emulatorAdmin,
  scrapeCounter,
  startEmulatorProcess,
  startGatewayProcess,
} from "./support/processes.js";

const seconds = Number(process.argv[2] ?? 15);
if (!Number.isFinite(seconds) || seconds < 2 || seconds > 60) {
  console.error("usage: node --import tsx bench/batch.ts [seconds 2..60]");
  process.exit(2);
}
const LOAD_MS = seconds * 1000;
const CALLERS = 200;
/** Enough fresh instances for every row at 1,200 associations/s (each request takes the next). */
const INSTANCES = Math.max(6_000, seconds * 1_300);
/** Direct SDK callers do not wait: cap their calls so the arrival log stays a sane size. */
const MAX_CALLS = 60_000;
const MAX_DIRECT_CALLS = 20_000;
const BAD_SHARE = 0.05;
/** Callers sharing one HTTP/2 connection to a replica (see keygateRow). */
const CALLERS_PER_CONNECTION = 20;

const never = new AbortController().signal;
setMaxListeners(0, never);
const ids = fleetIds(INSTANCES);
let nextInstance = 0;
const freshInstance = () => ids[nextInstance++ % ids.length]!;
/** Callers whose index is a multiple of 20 (5%) name instances the cloud does not have. */
const isBadCaller = (caller: number) => caller % Math.round(1 / BAD_SHARE) === 0;
let nextBad = 0;
const badInstance = () => `ins-zz${String(++nextBad % 1_000_000).padStart(6, "0")}`;

interface Row {
  mode: string;
  replicas: number;
  load: LoadResult;
  calls: number;
  assocPerS: number;
  callsPerS: number;
  maxIn1000: number;
  mutex: number;
  limitExceeded: number;
  notFoundCalls: number;
  splits?: number;
  sortedOut?: number;
  badCallers?: { notFound: number; other: number };
}

const dir = mkdtempSync(join(tmpdir(), "keygate-bench-batch-"));
const inventoryFile = join(dir, "inventory.json");
const policyFile = join(dir, "policy.yaml");
writeFileSync(inventoryFile, JSON.stringify(fleetInventory(INSTANCES, 0)));
writeFileSync(policyFile, BATCH_POLICY);

const redis = await startRedis();
let emulator: Child | undefined;
let gateways: Child[] = [];
const rows: Row[] = [];

const reasonOfConnect = (e: unknown) =>
  e instanceof LeanCallError
    ? (e.reason ?? e.code)
    : (ConnectError.from(e).findDetails(ErrorDetailSchema)[0]?.reason ??
      ConnectError.from(e).code.toString());
const sdkReason = (e: unknown) =>
  isKeygateError(e) ? (e.upstreamCode ?? e.reason) : e instanceof Error ? e.message : String(e);

/** `elapsedS`: from the first request to the last answer (a row ends when its last call returns). */
async function measure(
  mode: string,
  replicas: number,
  load: LoadResult,
  elapsedS: number,
  extra: Partial<Row> = {},
) {
  const admin = emulatorAdmin(emulator!.url);
  const { applies } = await admin.applied();
  const associates = (await admin.arrivals()).filter((a) => a.action === ASSOCIATE);
  const instances = applies.reduce((n, a) => n + a.instanceIds.length, 0);
  const row: Row = {
    mode,
    replicas,
    load,
    calls: associates.length,
    assocPerS: instances / elapsedS,
    callsPerS: associates.length / elapsedS,
    maxIn1000: maxIn1000(associates.map((a) => a.at)),
    mutex: associates.filter((a) => a.outcome.startsWith("MutexOperation")).length,
    limitExceeded: associates.filter((a) => a.outcome.startsWith("RequestLimitExceeded")).length,
    notFoundCalls: associates.filter((a) => a.outcome === "InvalidInstanceId.NotFound").length,
    ...extra,
  };
  rows.push(row);
  // How full the calls were, and how closely the limiter packed them (10 per 1000 ms + margin).
  const sizes = applies.map((a) => a.instanceIds.length);
  const at = associates.map((a) => a.at).sort((x, y) => x - y);
  const span11 = at.slice(10).map((t, i) => t - at[i]!);
  if (sizes.length > 0)
    console.log(
      `  instances per applied call: mean ${(instances / sizes.length).toFixed(1)}, ` +
        `full (100) ${((100 * sizes.filter((x) => x === 100).length) / sizes.length).toFixed(0)}%; ` +
        `11 consecutive calls span min ${Math.min(...span11)} ms, median ${percentile(span11, 50)} ms`,
    );
  console.log(
    `${mode.padEnd(46)} N=${replicas} assoc/s=${row.assocPerS.toFixed(0)} calls=${row.calls} ` +
      `over ${elapsedS.toFixed(1)} s maxIn1000ms=${row.maxIn1000} MutexOperation=${row.mutex} RequestLimitExceeded=${row.limitExceeded} ` +
      `callers ok=${load.ok} failed=${JSON.stringify(load.failed)} ` +
      `p50=${percentile(load.latencies, 50)}ms p99=${percentile(load.latencies, 99)}ms` +
      (row.splits !== undefined
        ? ` splits=${row.splits} sortedOut=${row.sortedOut ?? 0} notFoundCalls=${row.notFoundCalls}`
        : ""),
  );
  // Let the cloud tasks end, then start the next row from a clean log and a fresh inventory.
  await new Promise((r) => setTimeout(r, 300));
  await admin.reset();
  nextInstance = 0;
}

/**
 * How the bench process calls keygate: `lean` (bench/support/lean-caller.ts, the same Connect
 * binary bytes from node:http2) or `connect` (the Connect-ES client). Both are real HTTP/2 callers
 * on one connection per 20 callers; they differ in what the bench process spends per call.
 */
type Callers = "lean" | "connect";

async function keygateRow(n: number, batch: boolean, bad = false, callers: Callers = "lean"): Promise<void> {
  gateways = [];
  for (let i = 0; i < n; i++) {
    gateways.push(
      await startGatewayProcess({
        KEYGATE_REDIS_URL: redis.url,
        KEYGATE_UPSTREAM_URL: emulator!.url,
        KEYGATE_POLICY_FILE: policyFile,
        TENCENTCLOUD_SECRET_ID: EMULATOR_SECRET_ID,
        TENCENTCLOUD_SECRET_KEY: EMULATOR_SECRET_KEY,
        KEYGATE_DRAIN_MS: "2000",
        KEYGATE_BATCH: batch ? "on" : "off",
        // Every request takes a fresh instance, so a lease held after the answer blocks nobody;
        // watching each request's task separately (merged by the task watcher's own batching,
        // issue 13 item 4) would otherwise pile up DescribeInstances waiters and lease renewals.
        KEYGATE_TASK_MAX_WAIT_MS: "1000",
      }),
    );
  }
  // Callers in groups of CALLERS_PER_CONNECTION, each group on its own HTTP/2 connection (its
  // own transport), the groups spread over the replicas: like hosts that each hold a connection.
  // One connection for all 200 would queue half of them in the client (the server allows 100
  // streams per connection) and measure the client, not keygate.
  const groups = Math.ceil(CALLERS / CALLERS_PER_CONNECTION);
  const lean = callers === "lean";
  const connections = Array.from({ length: Math.max(groups, n) }, (_, i) => {
    const url = gateways[i % n]!.url;
    if (lean) return leanConnection(url, LOAD_TOKEN);
    // Binary, as gRPC clients send; Connect's JSON costs both sides more CPU per request.
    const client = createClient(
      KeyPairService,
      createConnectTransport({ baseUrl: url, httpVersion: "2", useBinaryFormat: true }),
    );
    return {
      call: (req: LeanRequest, timeoutMs: number) =>
        client.associateKeyPairs(req, { headers: { authorization: `Bearer ${LOAD_TOKEN}` }, timeoutMs }),
      close: () => undefined,
    };
  });
  const connectionOf = (caller: number) =>
    caller < 0
      ? connections[-caller - 1]!
      : connections[Math.floor(caller / CALLERS_PER_CONNECTION) % connections.length]!;
  const call = (caller: number, instance: string) =>
    connectionOf(caller).call(
      { region: "ap-guangzhou", instanceIds: [instance], keyIds: [LOAD_KEY] },
      30_000,
    );
  // Warm every replica up (connections, scripts) on instances the load does not reach.
  await Promise.all(connections.map((_, i) => call(-i - 1, ids[ids.length - 1 - i]!)));
  await new Promise((r) => setTimeout(r, 1_100));
  await emulatorAdmin(emulator!.url).reset();
  nextInstance = 0;
  const badOutcomes = { notFound: 0, other: 0 };
  const cpuBefore = gateways.map((g) => cpuMsOf(g.pid));
  const started = Date.now();
  const load = await runLoad({
    callers: CALLERS,
    untilMs: Date.now() + LOAD_MS,
    maxCalls: MAX_CALLS,
    reasonOf: reasonOfConnect,
    call: async (caller) => {
      if (!(bad && isBadCaller(caller))) return call(caller, freshInstance());
      // A bad caller must hear NOT_FOUND: counted apart, so "failed" below is only good callers'.
      try {
        await call(caller, badInstance());
        badOutcomes.other += 1;
      } catch (e) {
        if (reasonOfConnect(e) === "InvalidInstanceId.NotFound") badOutcomes.notFound += 1;
        else badOutcomes.other += 1;
      }
    },
  });
  const elapsedS = (Date.now() - started) / 1000;
  const cpuUsed = gateways.reduce((sum, g, i) => sum + cpuMsOf(g.pid) - cpuBefore[i]!, 0);
  const answered = load.ok + Object.values(load.failed).reduce((x, y) => x + y, 0);
  console.log(
    `  gateway CPU: ${((1000 * cpuUsed) / Math.max(1, answered)).toFixed(0)} µs per request ` +
      `(${(cpuUsed / 1000 / elapsedS / n).toFixed(2)} cores per replica)`,
  );
  // Where a request's time goes, as the gateways saw it (means over the row): the rest of the
  // callers' latency is the client and the connection (the bench process).
  const sum = async (name: string, filter = "") =>
    (await Promise.all(gateways.map((g) => scrapeCounter(g, name, filter)))).reduce((s, x) => s + x, 0);
  const meanMs = async (name: string, filter = "") =>
    (1000 * (await sum(`${name}_sum`, filter))) / Math.max(1, await sum(`${name}_count`, filter));
  console.log(
    `  gateway means: request ${(await meanMs("keygate_request_duration_seconds")).toFixed(0)} ms, ` +
      `lease wait ${(await meanMs("keygate_lease_wait_seconds")).toFixed(0)} ms, ` +
      `cloud call ${(await meanMs("keygate_upstream_duration_seconds", ASSOCIATE)).toFixed(0)} ms, ` +
      `token wait (askers only) ${(await meanMs("keygate_limiter_wait_seconds", ASSOCIATE)).toFixed(0)} ms, ` +
      `tokens granted ${await sum("keygate_limiter_tokens_granted_total", ASSOCIATE)}, ` +
      `wasted: late ${await sum("keygate_limiter_wasted_grants_total", 'reason="late"')}, ` +
      `no waiter ${await sum("keygate_limiter_wasted_grants_total", 'reason="no_waiter"')}, ` +
      `cancelled ${await sum("keygate_limiter_wasted_grants_total", 'reason="cancelled"')}`,
  );
  // Store work per request: scripts run (one round trip each) and every command they ran.
  const stats = execFileSync("redis-cli", ["-p", String(redis.port), "info", "commandstats"], {
    encoding: "utf8",
  });
  const callsOf = (line: string) => Number(/calls=(\d+)/.exec(line)?.[1] ?? 0);
  const lines = stats.split("\n").filter((l) => l.startsWith("cmdstat_"));
  const scripts = lines.filter((l) => /^cmdstat_eval/.test(l)).reduce((s, l) => s + callsOf(l), 0);
  const commands = lines.reduce((s, l) => s + callsOf(l), 0);
  console.log(
    `  redis per request (warm-up included): ${(scripts / Math.max(1, answered)).toFixed(1)} scripts, ` +
      `${(commands / Math.max(1, answered)).toFixed(1)} commands in all`,
  );
  execFileSync("redis-cli", ["-p", String(redis.port), "config", "resetstat"]);
  const splits = (
    await Promise.all(gateways.map((g) => scrapeCounter(g, "keygate_batch_splits_total")))
  ).reduce((s, x) => s + x, 0);
  const sortedOut = (
    await Promise.all(gateways.map((g) => scrapeCounter(g, "keygate_batch_sorted_out_total")))
  ).reduce((s, x) => s + x, 0);
  connections.forEach((c) => c.close());
  await Promise.all(gateways.map((g) => g.stop()));
  gateways = [];
  const mode =
    (bad ? "keygate, 5% bad instances" : `keygate, batching ${batch ? "on" : "off"}`) +
    (lean ? "" : ", Connect-ES callers");
  await measure(mode, n, load, elapsedS, bad ? { splits, sortedOut, badCallers: badOutcomes } : {});
}

async function directRow(n: number): Promise<void> {
  const ups = Array.from({ length: n }, () =>
    createTencentUpstream({
      upstreamUrl: emulator!.url,
      credential: { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY },
      reqTimeoutMs: 10_000,
    }),
  );
  const started = Date.now();
  const load = await runLoad({
    callers: CALLERS,
    untilMs: Date.now() + LOAD_MS,
    maxCalls: MAX_DIRECT_CALLS,
    reasonOf: sdkReason,
    call: (caller) =>
      ups[caller % n]!.associateInstancesKeyPairs(
        { region: "ap-guangzhou", instanceIds: [freshInstance()], keyIds: [LOAD_KEY], forceStop: false },
        { signal: never },
      ),
  });
  const elapsedS = (Date.now() - started) / 1000;
  ups.forEach((u) => u.close());
  await measure("SDK direct (no keygate)", n, load, elapsedS);
}

const REPLICAS = process.argv[3] ? process.argv[3].split(",").map(Number) : [1, 3];
/** BENCH_BATCH_ONLY_ON=1: only the batching-on rows (a quick look; the comparison needs all rows). */
const onlyOn = process.env.BENCH_BATCH_ONLY_ON === "1";
try {
  emulator = await startEmulatorProcess(inventoryFile, 50);
  for (const n of REPLICAS) {
    await keygateRow(n, true);
    // The same row with the Connect-ES client as every caller: what the bench process' own cost does.
    if (n === REPLICAS[0]) await keygateRow(n, true, false, "connect");
    if (onlyOn) continue;
    await keygateRow(n, false);
    await directRow(n);
  }
  await keygateRow(1, true, true);
} finally {
  await Promise.all(gateways.map((g) => g.stop(2_000)));
  await emulator?.stop(2_000);
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
}

const cpu = cpus();
console.log(
  "\nIssue 13: >= 900 associations/s on 1 replica, >= 300/s on 3, never > 10 calls in any sliding 1000 ms, " +
    "0 MutexOperation, caller p50 < 1 s (keygate batching on)",
);
console.log(
  `${cpu.length} × ${cpu[0]?.model.trim() ?? "cpu"}, Node ${process.version}; ${CALLERS} callers with one ` +
    `instance per request, ${seconds} s of load per row; counted at the emulator.\n`,
);
console.log(
  "| mode | replicas | instance associations/s | calls/s | max calls in any 1000 ms | MutexOperation | callers OK / failed (by reason) | caller p50 / p99 |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
for (const r of rows) {
  const failed = Object.values(r.load.failed).reduce((s, x) => s + x, 0);
  console.log(
    `| ${r.mode} | ${r.replicas} | ${r.assocPerS.toFixed(0)} | ${r.callsPerS.toFixed(1)} | ${r.maxIn1000} | ${r.mutex} | ` +
      `${r.load.ok} / ${failed} ${failed > 0 ? JSON.stringify(r.load.failed) : ""} | ` +
      `${percentile(r.load.latencies, 50)} / ${percentile(r.load.latencies, 99)} ms |`,
  );
}
for (const r of rows) {
  if (!r.badCallers) continue;
  // A refused call applied nothing: its instances went again (sorted out: the rest in one call;
  // split: in two), so the refused calls are the calls the bad instances cost.
  const badRequests = r.badCallers.notFound + r.badCallers.other;
  console.log(
    `\n5% bad row: bad callers' requests ${badRequests}: NOT_FOUND ${r.badCallers.notFound}, other ${r.badCallers.other}; ` +
      `good callers failed: ${Object.values(r.load.failed).reduce((s, x) => s + x, 0)}; ` +
      `calls refused NotFound (the extra calls): ${r.notFoundCalls} of ${r.calls}; callers sorted out by ` +
      `DescribeInstances ${r.sortedOut ?? 0}; splits ${r.splits ?? 0}. Bound per merged call of n with k missing: ` +
      `1 extra call when sorted out, else 2·k·ceil(log2 n) (k=5 of n=100: ${splitBound(100, 5)}).`,
  );
}
process.exit(0);
