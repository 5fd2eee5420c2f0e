/**
 * G1/G2 end to end — keygate never lets more than 10 into any sliding 1000 ms and sustains at least
 * 9.5 requests/s under saturation. The CVM emulator and N = 1, 3, 8 keygate replicas as child processes sharing
 * one private redis-server; 40 callers spread over the replicas saturate the 10/s action. Side by
 * side in the same run, the same callers calling the SDK (a) directly and (b) through bottleneck's
 * Redis clustering (N limiter instances, as N replicas would have). Everything is counted at the
 * emulator, by arrival time. Loopback only; every loop is bounded.
 *
 * Run: npm run bench:limit [-- seconds [replicas,…]]   (default 20 s of load per row)
 *
 * Hostile rows (issue 14): npm run bench:limit -- 12 hostile — keygate only, each row with fresh replicas:
 * quiet (3), 8 replicas, 3 replicas while two CPU-bound processes compete for the cores, and a rolling
 * restart under load (every few seconds one replica leaves the rotation, is stopped with SIGTERM and a
 * fresh one joins once its readiness is SERVING). Each row prints the most calls in any sliding 1000 ms
 * at the emulator, the sustained rate, wasted and late grants, and the smallest gap between a call and
 * the 10th after it (1000 ms + the margin left). The rows run one call per request (KEYGATE_BATCH=off), so
 * they saturate the limiter; BENCH_LIMIT_BATCH=on runs them with merging, keygate's default.
 */
import { spawn } from "node:child_process";
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
const HOSTILE = process.argv[3] === "hostile";
const REPLICAS = process.argv[3] && !HOSTILE ? process.argv[3].split(",").map(Number) : [1, 3, 8];

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
  /** keygate only: grants that left after their slot (shifted) or were not sent (`keygate_late_sends_total`). */
  late?: Record<string, number>;
  /** Smallest distance between an arrival and the 10th after it (ms). */
  tenthGap: number;
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
  late?: Record<string, number>,
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
    ...(late !== undefined ? { late } : {}),
    tenthGap: NaN,
  };
  const sorted = [...okTimes].sort((a, b) => a - b);
  const rounds = sorted.slice(10).map((t, i) => t - sorted[i]!);
  const all = associates.map((a) => a.at).sort((a, b) => a - b);
  row.tenthGap = Math.min(...all.slice(10).map((t, i) => t - all[i]!));
  rows.push(row);
  console.log(
    `${mode.padEnd(22)} N=${replicas} arrivals=${row.arrivals} ok=${row.ok} maxIn1000ms=${row.maxIn1000} ` +
      `okRate=${row.okRate.toFixed(2)}/s RequestLimitExceeded=${row.limitExceeded} ` +
      `callers ok=${load.ok} failed=${JSON.stringify(load.failed)} ` +
      `p50=${percentile(load.latencies, 50)}ms p99=${percentile(load.latencies, 99)}ms` +
      (granted !== undefined ? ` tokensGranted=${granted}` : "") +
      (wasted !== undefined ? ` wastedSlots=${JSON.stringify(wasted)}` : "") +
      (late !== undefined ? ` lateSends=${JSON.stringify(late)}` : "") +
      ` smallest call-to-10th-after=${row.tenthGap}ms` +
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
    gateways.push(await startGatewayProcess(gatewayEnv()));
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
  const late: Record<string, number> = {};
  for (const outcome of ["shifted", "not_sent"]) {
    const counts = await Promise.all(
      gateways.map((g) =>
        scrapeCounter(g, "keygate_late_sends_total", `action="${ASSOCIATE}",outcome="${outcome}"`),
      ),
    );
    late[outcome] = counts.reduce((s, x) => s + x, 0);
  }
  await Promise.all(gateways.map((g) => g.stop()));
  gateways = [];
  await measure("keygate", n, load, granted, wasted, late);
}

const gatewayEnv = () => ({
  KEYGATE_REDIS_URL: redis.url,
  KEYGATE_UPSTREAM_URL: emulator!.url,
  KEYGATE_POLICY_FILE: policyFile,
  TENCENTCLOUD_SECRET_ID: EMULATOR_SECRET_ID,
  TENCENTCLOUD_SECRET_KEY: EMULATOR_SECRET_KEY,
  KEYGATE_DRAIN_MS: "3000",
  // The limiter itself under saturation: one cloud call per request (merged calls would leave it
  // idle; bench:batch shows merging). BENCH_LIMIT_BATCH=on: keygate's default, merging, where the
  // rows show the cap (G1) under the calls' own irregular timing but not the limiter's rate.
  KEYGATE_BATCH: process.env.BENCH_LIMIT_BATCH === "on" ? "on" : "off",
});

interface LimiterCounts {
  granted: number;
  wasted: Record<string, number>;
  late: Record<string, number>;
}

/** A gateway's limiter counters, added into `into` (scraped before it stops). */
async function scrapeLimiter(g: Child, into: LimiterCounts): Promise<void> {
  into.granted += await scrapeCounter(g, "keygate_limiter_tokens_granted_total", ASSOCIATE);
  for (const reason of ["late", "no_waiter", "cancelled"]) {
    const labels = `action="${ASSOCIATE}",reason="${reason}"`;
    into.wasted[reason] =
      (into.wasted[reason] ?? 0) + (await scrapeCounter(g, "keygate_limiter_wasted_grants_total", labels));
  }
  for (const outcome of ["shifted", "not_sent"]) {
    const labels = `action="${ASSOCIATE}",outcome="${outcome}"`;
    into.late[outcome] =
      (into.late[outcome] ?? 0) + (await scrapeCounter(g, "keygate_late_sends_total", labels));
  }
}

/** `node -e 'for(;;){}'`: a CPU-bound process competing for the cores, killed by its own PID. */
function startBurner(): { stop(): Promise<void> } {
  const child = spawn(process.execPath, ["-e", "for(;;){}"], { stdio: "ignore" });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return {
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    },
  };
}

/**
 * One hostile keygate row: `n` fresh replicas; `burners` CPU-bound processes running from before the
 * replicas start until the row ends; `rollEveryMs` > 0 = a rolling restart under load.
 */
async function hostileRow(label: string, n: number, burners: number, rollEveryMs = 0): Promise<void> {
  const burn = Array.from({ length: burners }, startBurner);
  const counts: LimiterCounts = { granted: 0, wasted: {}, late: {} };
  const join = (g: Child) => ({
    g,
    client: createClient(KeyPairService, createConnectTransport({ baseUrl: g.url, httpVersion: "2" })),
  });
  const live: ReturnType<typeof join>[] = [];
  let restarts = 0;
  try {
    gateways = await Promise.all(Array.from({ length: n }, () => startGatewayProcess(gatewayEnv())));
    live.push(...gateways.map(join));
    await emulatorAdmin(emulator!.url).reset();
    const until = Date.now() + LOAD_MS;
    const rolling = (async () => {
      if (rollEveryMs <= 0) return;
      // Like a Deployment's rolling update: the oldest replica leaves the endpoints, drains on
      // SIGTERM, and a fresh one takes traffic once its readiness says SERVING.
      while (Date.now() + rollEveryMs < until) {
        await new Promise((r) => setTimeout(r, rollEveryMs));
        const old = live.shift();
        if (!old) break;
        const fresh = startGatewayProcess(gatewayEnv());
        await scrapeLimiter(old.g, counts).catch(() => undefined);
        await old.g.stop(5_000);
        gateways = gateways.filter((g) => g !== old.g);
        const g = await fresh;
        gateways.push(g);
        live.push(join(g));
        restarts += 1;
      }
    })();
    const load = await runLoad({
      callers: CALLERS,
      untilMs: until,
      maxCalls: MAX_CALLS,
      reasonOf: (e) => {
        const c = ConnectError.from(e);
        return c.findDetails(ErrorDetailSchema)[0]?.reason ?? `code ${c.code}`;
      },
      call: (caller) => {
        const target = live[caller % Math.max(1, live.length)];
        if (!target) return Promise.reject(new Error("no replica in rotation"));
        return target.client.associateKeyPairs(
          { region: "ap-guangzhou", instanceIds: [ids[nextInstance++ % ids.length]!], keyIds: [LOAD_KEY] },
          { headers: { authorization: `Bearer ${LOAD_TOKEN}` }, timeoutMs: 30_000 },
        );
      },
    });
    await rolling;
    for (const g of gateways) await scrapeLimiter(g, counts);
    await Promise.all(gateways.map((g) => g.stop()));
    gateways = [];
    const name = rollEveryMs > 0 ? `${label} (${restarts} restarts)` : label;
    await measure(name, n, load, counts.granted, counts.wasted, counts.late);
  } finally {
    await Promise.all(burn.map((b) => b.stop()));
  }
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
  if (HOSTILE) {
    await hostileRow("quiet", 3, 0);
    await hostileRow("8 replicas", 8, 0);
    await hostileRow("2 CPU-bound processes", 3, 2);
    await hostileRow("rolling restart", 3, 0, Math.max(2_000, Math.floor(LOAD_MS / 4)));
  }
  for (const n of HOSTILE ? [] : REPLICAS) {
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
  "| limiter | replicas | max in any 1000 ms | OK requests/s (sustained) | RequestLimitExceeded | requests at the cloud | wasted grants (late / no_waiter / cancelled) | late sends (shifted / not sent) | smallest call → 10th after | calls OK / failed | caller p50 / p99 |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
for (const r of rows) {
  const failed = Object.values(r.load.failed).reduce((s, x) => s + x, 0);
  const wasted = r.wasted
    ? `${r.wasted.late ?? 0} / ${r.wasted.no_waiter ?? 0} / ${r.wasted.cancelled ?? 0}`
    : "–";
  const late = r.late ? `${r.late.shifted ?? 0} / ${r.late.not_sent ?? 0}` : "–";
  console.log(
    `| ${r.mode} | ${r.replicas} | ${r.maxIn1000} | ${r.okRate.toFixed(2)} | ${r.limitExceeded} | ${r.arrivals} | ` +
      `${wasted} | ${late} | ${r.tenthGap} ms | ` +
      `${r.load.ok} / ${failed} | ${percentile(r.load.latencies, 50)} / ${percentile(r.load.latencies, 99)} ms |`,
  );
}
process.exit(0);
