/**
 * `npm run bench:startup [-- runs=5 idleSeconds=5]`: how fast a fresh `keygate serve` is up and how much memory
 * it holds once idle: the bundle (dist/bundle/, what the image and the bin run), the tsc output it is made
 * from (dist/, ~700 module files) and the TypeScript sources through tsx (the naive alternatives), in the
 * same run. Each run is a new process on Redis (a private
 * redis-server) and the in-process CVM emulator; the modes take turns, so a busy moment hits all of them.
 *
 * Printed per mode: time from spawn to the "keygate listening" log line, time from spawn to gRPC health
 * SERVING (polled every 10 ms), VmRSS after `idleSeconds` of idling, and VmHWM (the peak). Figures and
 * conditions go into docs/benchmarks.md.
 */
import { spawn } from "node:child_process";
import { readFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus } from "../src/gen/health/v1/health_pb.js";
import { createEmulator, EMULATOR_SECRET_ID, EMULATOR_SECRET_KEY } from "../src/upstream/emulator/index.js";
import { ensureBuilt, imageEntrypoint } from "../test/support/build.js";
import { opsPolicy } from "../test/support/policies.js";
import { ROOT } from "../test/support/process.js";
import { freePort, startRedis } from "../test/support/redis-server.js";
import { sleep } from "../test/support/wait.js";
import { cpuMsOf } from "./support/processes.js";

const args = process.argv.slice(2).map(Number);
const RUNS = args[0] ?? 5;
const IDLE_S = args[1] ?? 5;
if (
  !Number.isInteger(RUNS) ||
  RUNS < 1 ||
  RUNS > 50 ||
  !Number.isFinite(IDLE_S) ||
  IDLE_S < 1 ||
  IDLE_S > 60
) {
  console.error("usage: npm run bench:startup -- [runs 1..50] [idleSeconds 1..60]");
  process.exit(2);
}

/** The node flags the image's ENTRYPOINT gives (and deploy/ repeats; test/cli-dockerfile.test.ts). */
const IMAGE_NODE_FLAGS = imageEntrypoint().slice(1, -1);

/** The command line each mode starts; node's own flags first. */
const MODES: { name: string; argv: string[] }[] = [
  { name: "tsx: node --import tsx src/cli/main.ts (before)", argv: ["--import", "tsx", "src/cli/main.ts"] },
  { name: "tsc-compiled: node dist/cli/main.js", argv: ["dist/cli/main.js"] },
  { name: "bundled: node bin/keygate.js (dist/bundle/)", argv: ["bin/keygate.js"] },
  {
    name: "bundled, image flags: node <flags> bin/keygate.js",
    argv: [...IMAGE_NODE_FLAGS, "bin/keygate.js"],
  },
];

interface Sample {
  listenMs: number;
  servingMs: number;
  /** CPU time (user + system) the process had used when it was first SERVING. */
  cpuMs: number;
  rssMb: number;
  peakMb: number;
}

function statusMb(pid: number, field: "VmRSS" | "VmHWM"): number {
  const line = readFileSync(`/proc/${pid}/status`, "utf8")
    .split("\n")
    .find((l) => l.startsWith(`${field}:`));
  return Number(/(\d+)/.exec(line ?? "")?.[1]) / 1024;
}

async function oneRun(argv: string[], env: Record<string, string>): Promise<Sample> {
  const port = await freePort();
  const started = performance.now();
  const child = spawn(process.execPath, [...argv, "serve"], {
    cwd: ROOT,
    env: { ...env, KEYGATE_PORT: String(port) },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const pid = child.pid ?? 0;
  let out = "";
  let err = "";
  let listenMs = Number.NaN;
  child.stdout.setEncoding("utf8").on("data", (d: string) => {
    out += d;
    if (Number.isNaN(listenMs) && out.includes('"keygate listening"')) listenMs = performance.now() - started;
  });
  child.stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  try {
    const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
    let servingMs = Number.NaN;
    let cpuMs = Number.NaN;
    while (Number.isNaN(servingMs)) {
      if (child.exitCode !== null) throw new Error(`keygate exited early:\n${err}`);
      if (performance.now() - started > 60_000) throw new Error(`not SERVING after 60 s:\n${err}`);
      const status = await health.check({ service: "" }, { timeoutMs: 500 }).then(
        (r) => r.status,
        () => undefined,
      );
      if (status === HealthCheckResponse_ServingStatus.SERVING) {
        servingMs = performance.now() - started;
        cpuMs = cpuMsOf(pid);
      } else await sleep(10);
    }
    await sleep(IDLE_S * 1000);
    return { listenMs, servingMs, cpuMs, rssMb: statusMb(pid, "VmRSS"), peakMb: statusMb(pid, "VmHWM") };
  } finally {
    if (child.exitCode === null) child.kill("SIGTERM");
    const timer = setTimeout(() => child.exitCode === null && child.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] ?? 0) : ((s[m - 1] ?? 0) + (s[m] ?? 0)) / 2;
};
const fmt = (xs: number[], digits = 0) =>
  `${median(xs).toFixed(digits)} (max ${Math.max(...xs).toFixed(digits)})`.padEnd(18);

async function main(): Promise<void> {
  ensureBuilt();
  const dir = mkdtempSync(join(tmpdir(), "keygate-bench-startup-"));
  const redis = await startRedis();
  const emulator = await createEmulator({ host: "127.0.0.1", port: 0, taskMs: 200 });
  try {
    const policyFile = join(dir, "policy.yaml");
    writeFileSync(policyFile, opsPolicy("token-startup-bench-0123456789"));
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? "",
      HOME: process.env.HOME ?? "",
      KEYGATE_HOST: "127.0.0.1",
      KEYGATE_METRICS_PORT: "0",
      KEYGATE_LOG_LEVEL: "info",
      KEYGATE_POLICY_FILE: policyFile,
      KEYGATE_REDIS_URL: redis.url,
      KEYGATE_UPSTREAM_URL: emulator.url,
      TENCENTCLOUD_SECRET_ID: EMULATOR_SECRET_ID,
      TENCENTCLOUD_SECRET_KEY: EMULATOR_SECRET_KEY,
    };
    const load = loadavg().map((l) => l.toFixed(2));
    console.log(
      `bench:startup runs=${RUNS} idleSeconds=${IDLE_S} node=${process.version} cpus=${cpus().length} loadavg=${load.join("/")}`,
    );
    // One unmeasured start per mode: tsx fills its transpile cache, the OS its page cache.
    for (const m of MODES) await oneRun(m.argv, env);
    const samples = new Map<string, Sample[]>(MODES.map((m) => [m.name, []]));
    for (let i = 0; i < RUNS; i += 1) {
      for (const m of MODES) samples.get(m.name)?.push(await oneRun(m.argv, env));
    }
    console.log(
      `\n${"mode".padEnd(56)}${["listen ms", "SERVING ms", "CPU ms to SERVING", "idle RSS MB"].map((h) => h.padEnd(18)).join("")}peak RSS MB`,
    );
    for (const m of MODES) {
      const s = samples.get(m.name) ?? [];
      console.log(
        `${m.name.padEnd(56)}${fmt(s.map((x) => x.listenMs))}${fmt(s.map((x) => x.servingMs))}${fmt(s.map((x) => x.cpuMs))}${fmt(
          s.map((x) => x.rssMb),
          1,
        )}${fmt(
          s.map((x) => x.peakMb),
          1,
        )}`,
      );
    }
    console.log(
      "\nmedian (max) over the runs; targets: SERVING within 500 ms of start, idle RSS under 80 MB.",
    );
  } finally {
    await emulator.close();
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
