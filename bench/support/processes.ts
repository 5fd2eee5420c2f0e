/**
 * Child processes for benchmarks: the CVM emulator and keygate replicas, each started as
 * production runs it, `node bin/keygate.js …` on the compiled bundle (built first when stale; not
 * npx: killing npx leaves its child running), and stopped by its own PID. Loopback only.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus } from "../../src/gen/health/v1/health_pb.js";
import type { Apply, Arrival, FaultSettings, InstanceCounts } from "../../src/upstream/emulator/index.js";
import { ensureBuilt, imageEntrypoint } from "../../test/support/build.js";
import { freePort } from "../../test/support/redis-server.js";
import { pollUntil } from "../../test/support/wait.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const CLI = "bin/keygate.js";
ensureBuilt();

export interface Child {
  pid: number;
  port: number;
  url: string;
  /** Prometheus endpoint of a gateway ("" for the emulator). */
  metricsUrl: string;
  /** Everything the child wrote to stderr (last 8 KB), for error reports. */
  stderr(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * BENCH_CPU_PROF_DIR=<dir>: every child writes a V8 CPU profile there when it exits (for finding
 * where a request's CPU goes; open the .cpuprofile in Chrome DevTools). Off by default.
 */
const profDir = process.env.BENCH_CPU_PROF_DIR;
/**
 * Children start with the image's node flags (its ENTRYPOINT, as production runs them), plus
 * BENCH_NODE_FLAGS="<flags>" when set: how docs/decisions/deploy.md measured the flags it dropped.
 */
const nodeArgs = [
  ...imageEntrypoint().slice(1, -1),
  ...(profDir ? ["--cpu-prof", `--cpu-prof-dir=${profDir}`] : []),
  ...(process.env.BENCH_NODE_FLAGS ?? "").split(" ").filter(Boolean),
];

function launch(args: string[], env: Record<string, string>, port: number, metricsPort = 0): Child {
  const child: ChildProcess = spawn(process.execPath, [...nodeArgs, CLI, ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "", ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let err = "";
  child.stderr?.on("data", (d: Buffer) => {
    err = (err + d.toString("utf8")).slice(-8192);
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const pid = child.pid ?? 0;
  return {
    pid,
    port,
    url: `http://127.0.0.1:${port}`,
    metricsUrl: metricsPort ? `http://127.0.0.1:${metricsPort}/metrics` : "",
    stderr: () => err,
    async stop(graceMs = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      process.kill(pid, "SIGTERM");
      const timer = setTimeout(() => {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          /* already gone */
        }
      }, graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** `keygate emulator` on a free port with an inventory file; resolves once its admin API answers. */
export async function startEmulatorProcess(inventoryFile: string, taskMs: number): Promise<Child> {
  const port = await freePort();
  const c = launch(
    ["emulator", "--port", String(port), "--inventory", inventoryFile, "--task-ms", String(taskMs)],
    {},
    port,
  );
  await pollUntil(
    () =>
      fetch(`${c.url}/__emulator/faults`).then(
        (r) => r.ok,
        () => false,
      ),
    "the emulator's admin API",
    30_000,
    100,
  ).catch((e: unknown) => {
    throw new Error(`emulator did not start: ${String(e)}\n${c.stderr()}`);
  });
  return c;
}

/** `keygate serve` with the given environment on free ports; resolves once its readiness is SERVING. */
export async function startGatewayProcess(env: Record<string, string>): Promise<Child> {
  const port = await freePort();
  const metricsPort = await freePort();
  const c = launch(
    ["serve"],
    {
      KEYGATE_HOST: "127.0.0.1",
      KEYGATE_PORT: String(port),
      KEYGATE_METRICS_PORT: String(metricsPort),
      KEYGATE_LOG_LEVEL: "warn",
      ...env,
    },
    port,
    metricsPort,
  );
  const health = createClient(Health, createGrpcTransport({ baseUrl: c.url }));
  await pollUntil(
    () =>
      health.check({ service: "" }, { timeoutMs: 1_000 }).then(
        (r) => r.status === HealthCheckResponse_ServingStatus.SERVING,
        () => false,
      ),
    "readiness SERVING",
    60_000,
    200,
  ).catch(async (e: unknown) => {
    await c.stop(1_000);
    throw new Error(`keygate serve did not become ready: ${String(e)}\n${c.stderr()}`);
  });
  return c;
}

/** Sum of one counter (all label sets matching `labelFilter`) on a gateway's /metrics. */
export async function scrapeCounter(c: Child, name: string, labelFilter = ""): Promise<number> {
  const text = await fetch(c.metricsUrl).then((r) => r.text());
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name) || !line.includes(labelFilter)) continue;
    const v = Number(line.slice(line.lastIndexOf(" ") + 1));
    if (Number.isFinite(v)) sum += v;
  }
  return sum;
}

/** The emulator's admin API. */
export const emulatorAdmin = (url: string) => ({
  async arrivals(): Promise<Arrival[]> {
    const r = await fetch(`${url}/__emulator/stats`);
    return ((await r.json()) as { arrivals: Arrival[] }).arrivals;
  },
  async reset(): Promise<void> {
    await fetch(`${url}/__emulator/reset`, { method: "POST" });
  },
  /** What the cloud applied, and per instance its applies and busy answers. */
  async applied(): Promise<{ applies: Apply[]; instances: Record<string, InstanceCounts> }> {
    const r = await fetch(`${url}/__emulator/stats`);
    return (await r.json()) as { applies: Apply[]; instances: Record<string, InstanceCounts> };
  },
  /** Replaces the fault setting (throws with the emulator's message when refused). */
  async faults(settings: FaultSettings): Promise<void> {
    const r = await fetch(`${url}/__emulator/faults`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(settings),
    });
    if (!r.ok) throw new Error(`emulator refused faults: ${await r.text()}`);
  },
});

/** utime + stime of a process so far, ms, from /proc/PID/stat (clock ticks of 10 ms; Linux). */
export function cpuMsOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}
