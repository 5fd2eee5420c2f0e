import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { pollUntil } from "./wait.js";
import { EMULATOR_SECRET_ID, EMULATOR_SECRET_KEY } from "../../src/upstream/emulator/index.js";

/** The project root: child processes run from here, as a user's `npx keygate` would. */
export const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/**
 * The parent's environment without anything that configures keygate, the cloud SDK or
 * OpenTelemetry, so a developer's shell never changes what a test's child process does.
 */
export function cleanEnv(extra: Record<string, string> = {}): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined) continue;
    if (/^(KEYGATE_|TENCENTCLOUD_|OTEL_|TKE_)/.test(k) || /^(https?|no)_proxy$/i.test(k)) continue;
    out[k] = v;
  }
  return { ...out, ...extra };
}

/**
 * The environment of a `keygate serve` child wired to an emulator on loopback: free ports
 * unless `extra` names them, the emulator's credentials, fast task polling.
 */
export function serveEnv(
  policyFile: string,
  upstreamUrl: string,
  extra: Record<string, string> = {},
): Record<string, string> {
  return cleanEnv({
    KEYGATE_HOST: "127.0.0.1",
    KEYGATE_PORT: "0",
    KEYGATE_METRICS_PORT: "0",
    KEYGATE_POLICY_FILE: policyFile,
    KEYGATE_UPSTREAM_URL: upstreamUrl,
    TENCENTCLOUD_SECRET_ID: EMULATOR_SECRET_ID,
    TENCENTCLOUD_SECRET_KEY: EMULATOR_SECRET_KEY,
    KEYGATE_TASK_POLL_MS: "100",
    ...extra,
  });
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A child process this test started; it is only ever stopped through its own PID. */
export interface Child {
  readonly pid: number;
  readonly proc: ChildProcess;
  /** Everything written so far. */
  stdout(): string;
  stderr(): string;
  /** stdout lines that parse as JSON (keygate's log lines). */
  logs(): Record<string, unknown>[];
  /** Resolves once the process has exited (at once if it already has). */
  readonly exited: Promise<Exit>;
  hasExited(): boolean;
  /** Waits until `pred` holds for the output so far; fails with the output if the process exits first. */
  waitFor(pred: (c: Child) => boolean, what: string, timeoutMs?: number): Promise<void>;
  signal(sig: NodeJS.Signals): void;
  /** SIGKILL if still running, then wait for the exit. */
  kill(): Promise<void>;
}

const running = new Set<Child>();

/**
 * Starts `command args` from the project root. `node --import tsx` (not `npx tsx`) so that the
 * PID we hold is the server itself and stopping it frees its ports.
 */
export function spawnChild(command: string, args: string[], env: Record<string, string>): Child {
  const proc = spawn(command, args, { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
  if (proc.pid === undefined) throw new Error(`could not start ${command}`);
  const pid = proc.pid;
  let out = "";
  let err = "";
  proc.stdout?.setEncoding("utf8").on("data", (d: string) => (out += d));
  proc.stderr?.setEncoding("utf8").on("data", (d: string) => (err += d));
  let exit: Exit | undefined;
  const exited = new Promise<Exit>((resolve) => {
    // "close" fires after the pipes are drained, so all output is in `out`/`err` by then.
    proc.once("close", (code, signal) => {
      exit = { code, signal };
      running.delete(child);
      resolve(exit);
    });
  });
  const child: Child = {
    pid,
    proc,
    stdout: () => out,
    stderr: () => err,
    logs: () =>
      out.split("\n").flatMap((line) => {
        if (!line.startsWith("{")) return [];
        try {
          return [JSON.parse(line) as Record<string, unknown>];
        } catch {
          return [];
        }
      }),
    exited,
    hasExited: () => exit !== undefined,
    async waitFor(pred, what, timeoutMs = 20_000) {
      await pollUntil(
        () => {
          if (pred(child)) return true;
          if (exit !== undefined) {
            throw new Error(`process ${pid} exited (${JSON.stringify(exit)}) before ${what}`);
          }
          return false;
        },
        what,
        timeoutMs,
      ).catch((e: unknown) => {
        throw new Error(`${(e as Error).message}\nstdout:\n${out}\nstderr:\n${err}`);
      });
    },
    signal(sig) {
      if (exit === undefined) process.kill(pid, sig);
    },
    async kill() {
      if (exit === undefined) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          /* already gone */
        }
      }
      await exited;
    },
  };
  running.add(child);
  return child;
}

/** `keygate ARGS` through the TypeScript entry point (tsx, as in development; the bin runs dist/). */
export function spawnKeygate(args: string[], env: Record<string, string>): Child {
  return spawnChild(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], env);
}

/** Runs a one-shot command to its end. */
export async function runToEnd(
  command: string,
  args: string[],
  env: Record<string, string>,
  timeoutMs = 60_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const c = spawnChild(command, args, env);
  const timer = setTimeout(() => void c.kill(), timeoutMs);
  const { code } = await c.exited;
  clearTimeout(timer);
  return { code, stdout: c.stdout(), stderr: c.stderr() };
}

/** Kills (by PID) every child a test file started and that is still running; for afterAll/afterEach. */
export async function killStrays(): Promise<void> {
  await Promise.all([...running].map((c) => c.kill()));
}

/** The "keygate listening" log line's ports, once the server is up. */
export async function waitListening(c: Child): Promise<{ api: number; metrics: number }> {
  let found: { api: number; metrics: number } | undefined;
  await c.waitFor(
    () => {
      const line = c.logs().find((l) => l.msg === "keygate listening");
      if (!line) return false;
      const port = (v: unknown) => Number(String(v).split(":").pop());
      found = { api: port(line.api), metrics: port(line.metrics) };
      return true;
    },
    "the 'keygate listening' log line",
    30_000,
  );
  if (!found) throw new Error("unreachable");
  return found;
}
