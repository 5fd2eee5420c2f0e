import { loadSettings } from "../config/settings.js";
import { createApp } from "../main.js";
import { createLogger } from "../observability/logger.js";
import { DEMO_POLICY_YAML, DEMO_TOKEN, DEMO_REQUEST } from "../policy/demo.js";
import { createEmulator, EMULATOR_SECRET_ID, EMULATOR_SECRET_KEY } from "../upstream/emulator/index.js";
import { stopOnSignals } from "./signals.js";

/**
 * `keygate dev` (= `npm start`): the whole gateway with nothing to configure — in-memory
 * store, the built-in emulator as the cloud, a demo policy — bound to loopback because the
 * demo token is public. KEYGATE_PORT / KEYGATE_METRICS_PORT / KEYGATE_LOG_LEVEL still apply.
 */
export async function runDev(env: Record<string, string | undefined>): Promise<"running"> {
  const emulator = await createEmulator({ host: "127.0.0.1", port: 0, taskMs: 1500 });
  const settings = loadSettings(
    {
      KEYGATE_HOST: "127.0.0.1",
      KEYGATE_LOG_LEVEL: "info",
      ...pick(env, [
        "KEYGATE_HOST",
        "KEYGATE_PORT",
        "KEYGATE_METRICS_PORT",
        "KEYGATE_LOG_LEVEL",
        "KEYGATE_RATE_LIMIT",
      ]),
      TENCENTCLOUD_SECRET_ID: EMULATOR_SECRET_ID,
      TENCENTCLOUD_SECRET_KEY: EMULATOR_SECRET_KEY,
      KEYGATE_UPSTREAM_URL: emulator.url,
    },
    "dev",
  );
  const logger = createLogger(settings.logLevel);
  const app = await createApp({ settings, logger, policyText: { text: DEMO_POLICY_YAML, source: "demo" } });
  const { api, metrics } = await app.start();
  const base = `http://127.0.0.1:${api.port}`;
  const body = JSON.stringify(DEMO_REQUEST);
  process.stdout.write(
    [
      "",
      `keygate dev is running: API ${base}, metrics http://127.0.0.1:${metrics.port}/metrics, CVM emulator ${emulator.url}`,
      'In-memory store, demo policy (tenant "demo"), emulator as the cloud. Try:',
      "",
      `  curl -sS -H 'Content-Type: application/json' -H 'Authorization: Bearer ${DEMO_TOKEN}' \\`,
      `    -d '${body}' \\`,
      `    ${base}/keygate.v1.KeyPairService/AssociateKeyPairs`,
      "",
      "Press Ctrl+C to stop.",
      "",
    ].join("\n"),
  );
  stopOnSignals({ stop: () => app.stop(2_000) }, logger, () => emulator.close());
  return "running";
}

function pick(env: Record<string, string | undefined>, names: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const n of names) {
    const v = env[n];
    if (v !== undefined && v !== "") out[n] = v;
  }
  return out;
}
