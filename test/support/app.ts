import { Writable } from "node:stream";
import { loadSettings } from "../../src/config/settings.js";
import { createApp, type App } from "../../src/main.js";
import { createLogger } from "../../src/observability/logger.js";
import {
  createEmulator,
  EMULATOR_SECRET_ID,
  EMULATOR_SECRET_KEY,
  type Emulator,
} from "../../src/upstream/emulator/index.js";

/** Every log line an app wrote, parsed, so tests can assert on audit lines and search for secrets. */
export class LogCapture extends Writable {
  readonly lines: string[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    for (const line of chunk.toString("utf8").split("\n")) if (line.trim() !== "") this.lines.push(line);
    cb();
  }
  json(): Record<string, unknown>[] {
    return this.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  }
  audits(): Record<string, unknown>[] {
    return this.json().filter((l) => l.audit === true);
  }
}

export interface TestGateway {
  app: App;
  url: string;
  port: number;
  /** http://127.0.0.1:PORT/metrics of the app's Prometheus port. */
  metricsUrl: string;
  logs: LogCapture;
  stop(): Promise<void>;
}

/**
 * Starts a whole gateway in-process on a free port, wired to `emulator` (the real SDK signs real HTTP).
 * Without `policyText`, the policy comes from `KEYGATE_POLICY_FILE` in `env` (hot reload included).
 */
export async function startGateway(opts: {
  emulator: Emulator;
  policyText?: string | undefined;
  env?: Record<string, string>;
}): Promise<TestGateway> {
  const settings = loadSettings(
    {
      KEYGATE_HOST: "127.0.0.1",
      KEYGATE_PORT: "0",
      KEYGATE_METRICS_PORT: "0",
      KEYGATE_LOG_LEVEL: "info",
      TENCENTCLOUD_SECRET_ID: EMULATOR_SECRET_ID,
      TENCENTCLOUD_SECRET_KEY: EMULATOR_SECRET_KEY,
      KEYGATE_UPSTREAM_URL: opts.emulator.url,
      KEYGATE_TASK_POLL_MS: "100",
      ...opts.env,
    },
    "dev",
  );
  const logs = new LogCapture();
  const app = await createApp({
    settings,
    logger: createLogger(settings.logLevel, logs),
    policyText: opts.policyText === undefined ? undefined : { text: opts.policyText, source: "test" },
    defaultMetrics: false,
  });
  const { api, metrics } = await app.start();
  return {
    app,
    url: `${settings.tls ? "https" : "http"}://127.0.0.1:${api.port}`,
    port: api.port,
    metricsUrl: `http://127.0.0.1:${metrics.port}/metrics`,
    logs,
    stop: () => app.stop(1_000),
  };
}

export async function startEmulator(taskMs = 200): Promise<Emulator> {
  return createEmulator({ host: "127.0.0.1", port: 0, taskMs });
}
