import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pollUntil } from "./wait.js";

/** A private redis-server started for a test, stopped by its own PID (never port 6379, never FLUSHALL). */
export interface RedisProcess {
  port: number;
  url: string;
  pid: number;
  stop(): Promise<void>;
  /** Stops the process but keeps the port reserved for `restart()`. */
  kill(): Promise<void>;
  restart(): Promise<void>;
}

/** Ports this process handed out already: the OS may offer a just-closed port again at once. */
const handedOut = new Set<number>();

export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = createServer();
      s.once("error", reject);
      s.listen(0, "127.0.0.1", () => {
        const addr = s.address();
        const p = typeof addr === "object" && addr ? addr.port : 0;
        s.close(() => resolve(p));
      });
    });
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
}

function redisServerBinary(): string {
  try {
    return execFileSync("sh", ["-c", "command -v redis-server"], { encoding: "utf8" }).trim();
  } catch {
    throw new Error(
      "redis-server is not installed: run `apt-get install -y redis-server` (CI does this in .ci/run)",
    );
  }
}

/**
 * Polls the redis-server on `port` until it answers and, when `ready` is given, until `ready`
 * holds for its INFO and CLUSTER INFO text (a Cluster node, a Sentinel).
 */
export async function waitForRedis(
  port: number,
  ready?: (info: string) => boolean,
  timeoutMs = 10_000,
): Promise<void> {
  const { Redis } = await import("ioredis");
  const answers = async () => {
    const c = new Redis({
      port,
      host: "127.0.0.1",
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    c.on("error", () => undefined); // refused while the server boots: expected, retried
    try {
      await c.connect();
      if (!ready) return (await c.ping()) === "PONG";
      const info = String(await c.call("INFO"));
      const clusterInfo = await c.call("CLUSTER", "INFO").then(String, () => "");
      return ready(info + clusterInfo);
    } catch {
      return false;
    } finally {
      c.disconnect();
    }
  };
  await pollUntil(answers, `redis-server on port ${port}`, timeoutMs, 50);
}

export async function startRedis(extraArgs: string[] = []): Promise<RedisProcess> {
  const bin = redisServerBinary();
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "keygate-redis-"));
  let pid = 0;
  const launch = async () => {
    const pidfile = join(dir, "redis.pid");
    const child = spawn(
      bin,
      [
        "--port",
        String(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        dir,
        "--pidfile",
        pidfile,
        ...extraArgs,
      ],
      { stdio: "ignore", detached: false },
    );
    pid = child.pid ?? 0;
    child.unref();
    await waitForRedis(port);
  };
  const killIt = async () => {
    if (!pid) return;
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      /* already gone */
    }
    const until = Date.now() + 5_000;
    while (Date.now() < until) {
      try {
        process.kill(pid, 0);
        await new Promise((r) => setTimeout(r, 20));
      } catch {
        break;
      }
    }
    pid = 0;
  };
  await launch();
  const handle: RedisProcess = {
    port,
    url: `redis://127.0.0.1:${port}`,
    get pid() {
      return pid;
    },
    stop: async () => {
      await killIt();
      rmSync(dir, { recursive: true, force: true });
    },
    kill: killIt,
    restart: launch,
  };
  return handle;
}
