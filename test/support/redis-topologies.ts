import { execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { freePort, waitForRedis } from "./redis-server.js";

const run = promisify(execFile);

/** A set of private redis processes (Cluster or Sentinel) started for one test file, stopped by PID. */
export interface RedisTopology {
  url: string;
  stop(): Promise<void>;
}

export function launch(args: string[], cwd: string): number {
  const child = spawn("redis-server", args, { cwd, stdio: "ignore" });
  child.unref();
  return child.pid ?? 0;
}

export function stopper(pids: number[], dir: string) {
  return async () => {
    for (const pid of pids) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        /* already gone */
      }
    }
    await new Promise((r) => setTimeout(r, 50));
    rmSync(dir, { recursive: true, force: true });
  };
}

/** Three masters, no replicas, created with `redis-cli --cluster create`. */
export async function startCluster(): Promise<RedisTopology> {
  const dir = mkdtempSync(join(tmpdir(), "keygate-cluster-"));
  const ports = [await freePort(), await freePort(), await freePort()];
  const pids: number[] = [];
  for (const port of ports) {
    pids.push(
      launch(
        [
          "--port",
          String(port),
          "--bind",
          "127.0.0.1",
          "--cluster-enabled",
          "yes",
          "--cluster-config-file",
          `nodes-${port}.conf`,
          "--save",
          "",
          "--appendonly",
          "no",
        ],
        dir,
      ),
    );
  }
  for (const port of ports) await waitForRedis(port);
  await run("redis-cli", [
    "--cluster",
    "create",
    ...ports.map((p) => `127.0.0.1:${p}`),
    "--cluster-replicas",
    "0",
    "--cluster-yes",
  ]);
  for (const port of ports) await waitForRedis(port, (info) => info.includes("cluster_state:ok"));
  return { url: `redis+cluster://${ports.map((p) => `127.0.0.1:${p}`).join(",")}`, stop: stopper(pids, dir) };
}

/** One master watched by one Sentinel (quorum 1). */
export async function startSentinel(): Promise<RedisTopology> {
  const dir = mkdtempSync(join(tmpdir(), "keygate-sentinel-"));
  const master = await freePort();
  const sentinel = await freePort();
  const pids = [
    launch(["--port", String(master), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], dir),
  ];
  await waitForRedis(master);
  const conf = join(dir, "sentinel.conf");
  writeFileSync(
    conf,
    [
      `port ${sentinel}`,
      "bind 127.0.0.1",
      `dir ${dir}`,
      `sentinel monitor mymaster 127.0.0.1 ${master} 1`,
      "sentinel down-after-milliseconds mymaster 5000",
      "",
    ].join("\n"),
  );
  pids.push(launch([conf, "--sentinel"], dir));
  await waitForRedis(sentinel);
  return { url: `redis+sentinel://127.0.0.1:${sentinel}/mymaster`, stop: stopper(pids, dir) };
}
