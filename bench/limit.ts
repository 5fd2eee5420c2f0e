/**
 * G1/G2 end to end — keygate never lets more than 10 into any sliding 1000 ms and sustains at least
 * 9.5 requests/s under saturation. The CVM emulator and N = 1, 3, 8 keygate replicas as child processes sharing
 * one private redis-server; 40 callers spread over the replicas saturate the 10/s action. Side by
 * side in the same run, the same callers calling the SDK (a) directly and (b) through bottleneck's
 * Redis clustering (N limiter instances, as N replicas would have). Everything is counted at the
 * emulator, by arrival time. Loopback only; every loop is bounded.
 *
 * Run: npm run bench:limit [-- seconds]   (default 8 s of load per row)
 */
import { setMaxListeners } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import Bottleneck from "bottleneck";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { isKeygateError } from "../src/core/errors.js";
import { EMULATOR_SECRET_ID, EMULATOR_SECRET_KEY } from "../src/upstream/emulator/index.js";
import { createTencentUpstream, type TencentUpstream } from "../src/upstream/tencent-upstream.js";
import { startRedis } from "../test/support/redis-server.js";
import {
  ASSOCIATE,
  FLEET_POLICY,
  fleetIds,
  fleetInventory,
  LOAD_KEY,
  LOAD_TOKEN,
  maxIn1000,
  percentile,
  runLoad,
  sustainedRate,
  type LoadResult,
} from "../test/support/fleet.js";
import {
  type Child,
  emulatorAdmin,
  scrapeCounter,
  startEmulatorProcess,
  startGatewayProcess,
} from "./support/processes.js";

const seconds = Number(process.argv[2] ?? 20);
if (!Number.isFinite(seconds) || seconds < 2 || seconds > 120) {
  console.error("usage: node --import tsx bench/limit.ts [seconds 2..120]");
  process.exit(2);
}
const LOAD_MS = seconds * 1000;
const CALLERS = 40;
const INSTANCES = 400;
/** Direct SDK callers do not wait: cap their calls so the arrival log stays a sane size. */
const MAX_CALLS = 30_000;
const REPLICAS = process.argv[3] ? process.argv[3].split(",").map(Number) : [1, 3, 8];

const never = new AbortController().signal;
setMaxListeners(0, never);
const ids = fleetIds(INSTANCES);
let nextInstance = 0;
const input = () => ({
  region: "ap-guangzhou",
  instanceIds: [ids[nextInstance++ % ids.length]!],
  keyIds: [LOAD_KEY],
  forceStop: false,
});

interface Row {
  mode: string;
  replicas: number;
  load: LoadResult;
  arrivals: number;
  ok: number;
  maxIn1000: number;
  okRate: number;
  limitExceeded: number;
  /** keygate only: tokens handed to callers (metrics); more than arrivals = grants given up as too late. */
  granted?: number;
  /** keygate only: booked slots nobody sent on, by reason (`keygate_limiter_wasted_grants_total`). */
  wasted?: Record<string, number>;
}

const dir = mkdtempSync(join(tmpdir(), "keygate-bench-limit-"));
const inventoryFile = join(dir, "inventory.json");
const policyFile = join(dir, "policy.yaml");
writeFileSync(inventoryFile, JSON.stringify(fleetInventory(INSTANCES, 0)));
writeFileSync(policyFile, FLEET_POLICY);

const redis = await startRedis();
let emulator: Child | undefined;
let gateways: Child[] = [];
const rows: Row[] = [];

async function measure(
  mode: string,
  replicas: number,
  load: LoadResult,
  granted?: number,
  wasted?: Record<string, number>,
): Promise<Row> {
  const admin = emulatorAdmin(emulator!.url);
  const associates = (await admin.arrivals()).filter((a) => a.action === ASSOCIATE);
  if (process.env.BENCH_LIMIT_DUMP) {
    // For a closer look: every arrival (time, outcome) of the row, one JSON file per row.
    const file = join(process.env.BENCH_LIMIT_DUMP, `${mode.replace(/\W+/g, "-")}-${replicas}.json`);
    writeFileSync(file, JSON.stringify(associates.map((a) => [a.at, a.outcome])));
  }
  const okTimes = associates.filter((a) => a.outcome === "OK").map((a) => a.at);
  const row: Row = {
    mode,
    replicas,
    load,
    arrivals: associates.length,
    ok: okTimes.length,
    maxIn1000: maxIn1000(associates.map((a) => a.at)),
    okRate: sustainedRate(okTimes),
    limitExceeded: associates.filter((a) => a.outcome.startsWith("RequestLimitExceeded")).length,
    ...(granted !== undefined ? { granted } : {}),
    ...(wasted !== undefined ? { wasted } : {}),
  };
  const sorted = [...okTimes].sort((a, b) => a - b);
  const rounds = sorted.slice(10).map((t, i) => t - sorted[i]!);
  rows.push(row);
  console.log(
    `${mode.padEnd(22)} N=${replicas} arrivals=${row.arrivals} ok=${row.ok} maxIn1000ms=${row.maxIn1000} ` +
      `okRate=${row.okRate.toFixed(2)}/s RequestLimitExceeded=${row.limitExceeded} ` +
      `callers ok=${load.ok} failed=${JSON.stringify(load.failed)} ` +
      `p50=${percentile(load.latencies, 50)}ms p99=${percentile(load.latencies, 99)}ms` +
      (granted !== undefined ? ` tokensGranted=${granted}` : "") +
      (wasted !== undefined ? ` wastedSlots=${JSON.stringify(wasted)}` : "") +
      ` 11-arrival spans p1/p50/p99=${percentile(rounds, 1)}/${percentile(rounds, 50)}/${percentile(rounds, 99)}ms`,
  );
  // Let the emulator's cloud tasks end before the next row, then start it from a clean log.
  await new Promise((r) => setTimeout(r, 300));
  await admin.reset();
  return row;
}

async function keygateRow(n: number): Promise<void> {
  gateways = [];
  for (let i = 0; i < n; i++) {
    gateways.push(
      await startGatewayProcess({
        KEYGATE_REDIS_URL: redis.url,
        KEYGATE_UPSTREAM_URL: emulator!.url,
        KEYGATE_POLICY_FILE: policyFile,
        TENCENTCLOUD_SECRET_ID: EMULATOR_SECRET_ID,
        TENCENTCLOUD_SECRET_KEY: EMULATOR_SECRET_KEY,
        KEYGATE_DRAIN_MS: "3000",
        // The limiter itself under saturation: one cloud call per request (bench:batch shows merging).
        KEYGATE_BATCH: "off",
      }),
    );
  }
  await emulatorAdmin(emulator!.url).reset();
  const clients = gateways.map((g) =>
    createClient(KeyPairService, createConnectTransport({ baseUrl: g.url, httpVersion: "2" })),
  );
  const load = await runLoad({
    callers: CALLERS,
    untilMs: Date.now() + LOAD_MS,
    maxCalls: MAX_CALLS,
    reasonOf: (e) => ConnectError.from(e).findDetails(ErrorDetailSchema)[0]?.reason ?? String(e),
    call: (caller) =>
      clients[caller % clients.length]!.associateKeyPairs(
        { region: "ap-guangzhou", instanceIds: [ids[nextInstance++ % ids.length]!], keyIds: [LOAD_KEY] },
        { headers: { authorization: `Bearer ${LOAD_TOKEN}` }, timeoutMs: 30_000 },
      ),
  });
  const granted = (
    await Promise.all(
      gateways.map((g) => scrapeCounter(g, "keygate_limiter_tokens_granted_total", ASSOCIATE)),
    )
  ).reduce((s, x) => s + x, 0);
  const wasted: Record<string, number> = {};
  for (const reason of ["late", "no_waiter", "cancelled"]) {
    const counts = await Promise.all(
      gateways.map((g) =>
        scrapeCounter(g, "keygate_limiter_wasted_grants_total", `action="${ASSOCIATE}",reason="${reason}"`),
      ),
    );
    wasted[reason] = counts.reduce((s, x) => s + x, 0);
  }
  await Promise.all(gateways.map((g) => g.stop()));
  gateways = [];
  await measure("keygate", n, load, granted, wasted);
}

const upstreams = (n: number): TencentUpstream[] =>
  Array.from({ length: n }, () =>
    createTencentUpstream({
      upstreamUrl: emulator!.url,
      credential: { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY },
      reqTimeoutMs: 10_000,
    }),
  );
const sdkReason = (e: unknown) =>
  isKeygateError(e) ? (e.upstreamCode ?? e.reason) : e instanceof Error ? e.message : String(e);

async function directRow(n: number): Promise<void> {
  const ups = upstreams(n);
  const load = await runLoad({
    callers: CALLERS,
    untilMs: Date.now() + LOAD_MS,
    maxCalls: MAX_CALLS,
    reasonOf: sdkReason,
    call: (caller) => ups[caller % n]!.associateInstancesKeyPairs(input(), { signal: never }),
  });
  ups.forEach((u) => u.close());
  await measure("SDK direct (no limit)", n, load);
}

async function bottleneckRow(n: number, name: string, config: Bottleneck.ConstructorOptions): Promise<void> {
  const ups = upstreams(n);
  const limiters = Array.from(
    { length: n },
    () =>
      new Bottleneck({
        id: `{keygate-bench-${name}-${n}}`,
        datastore: "ioredis",
        clearDatastore: false,
        clientOptions: { host: "127.0.0.1", port: redis.port },
        ...config,
      }),
  );
  limiters.forEach((l) => l.on("error", () => undefined));
  await Promise.all(limiters.map((l) => l.ready()));
  const until = Date.now() + LOAD_MS;
  // A job still queued when the row ends waits at most this long (bottleneck refills on heartbeats).
  const load = await runLoad({
    callers: CALLERS,
    untilMs: until,
    maxCalls: MAX_CALLS,
    reasonOf: (e) => (e instanceof Bottleneck.BottleneckError ? "bottleneck: expired" : sdkReason(e)),
    call: (caller) =>
      limiters[caller % n]!.schedule({ expiration: LOAD_MS + 20_000 }, () =>
        ups[caller % n]!.associateInstancesKeyPairs(input(), { signal: never }),
      ),
  });
  await Promise.all(limiters.map((l) => l.disconnect(false)));
  ups.forEach((u) => u.close());
  await measure(`bottleneck ${name}`, n, load);
}

try {
  emulator = await startEmulatorProcess(inventoryFile, 50);
  for (const n of REPLICAS) {
    await keygateRow(n);
    if (process.env.BENCH_ONLY_KEYGATE) continue;
    await directRow(n);
    await bottleneckRow(n, "reservoir", {
      maxConcurrent: null,
      reservoir: 10,
      reservoirRefreshAmount: 10,
      reservoirRefreshInterval: 1000,
    });
    await bottleneckRow(n, "minTime", { maxConcurrent: null, minTime: 100 });
  }
} finally {
  await Promise.all(gateways.map((g) => g.stop(2_000)));
  await emulator?.stop(2_000);
  await redis.stop();
  rmSync(dir, { recursive: true, force: true });
}

const cpu = cpus();
console.log(
  "\nG1/G2: never more than 10 in any sliding 1000 ms, and at least 9.5 requests/s sustained (keygate rows)",
);
console.log(
  `${cpu.length} × ${cpu[0]?.model.trim() ?? "cpu"}, Node ${process.version}; ${CALLERS} callers, ` +
    `${seconds} s of load per row; counted at the emulator by arrival time.\n`,
);
console.log(
  "| limiter | replicas | max in any 1000 ms | OK requests/s (sustained) | RequestLimitExceeded | requests at the cloud | calls OK / failed | caller p50 / p99 |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
for (const r of rows) {
  const failed = Object.values(r.load.failed).reduce((s, x) => s + x, 0);
  console.log(
    `| ${r.mode} | ${r.replicas} | ${r.maxIn1000} | ${r.okRate.toFixed(2)} | ${r.limitExceeded} | ${r.arrivals} | ` +
      `${r.load.ok} / ${failed} | ${percentile(r.load.latencies, 50)} / ${percentile(r.load.latencies, 99)} ms |`,
  );
}
process.exit(0);
