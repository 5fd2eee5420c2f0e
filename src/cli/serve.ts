/** `keygate serve`: the gateway configured by the environment. Loads neither the emulator nor the policy checker. */
import { loadSettings } from "../config/settings.js";
import { createApp } from "../main.js";
import { createLogger } from "../observability/logger.js";
import { startTracing } from "../observability/tracing.js";
import { stopOnSignals } from "./signals.js";

export async function serve(env: Record<string, string | undefined>): Promise<"running"> {
  const settings = loadSettings(env, "serve");
  const logger = createLogger(settings.logLevel);
  const stopTracing = await startTracing(env);
  const app = await createApp({ settings, logger });
  await app.start();
  stopOnSignals(app, logger, stopTracing);
  return "running";
}
