/**
 * `keygate serve`: the gateway configured by the environment. Loads neither the emulator nor the policy
 * checker. The policy parse worker starts first, so it loads its YAML parser and schema on another core
 * while this thread loads the rest of the gateway (start-up time: docs/decisions/deploy.md).
 */
import { prewarmPolicyParser } from "../policy/isolated.js";

export async function serve(env: Record<string, string | undefined>): Promise<"running"> {
  prewarmPolicyParser();
  const [{ loadSettings }, { createApp }, { createLogger }, { startTracing }, { stopOnSignals }] =
    await Promise.all([
      import("../config/settings.js"),
      import("../main.js"),
      import("../observability/logger.js"),
      import("../observability/tracing.js"),
      import("./signals.js"),
    ]);
  const settings = loadSettings(env, "serve");
  const logger = createLogger(settings.logLevel);
  const stopTracing = await startTracing(env);
  const app = await createApp({ settings, logger });
  // Signals drain from the moment the ports listen, also while the warm-up runs (ready means warm).
  await app.start({ onListening: () => stopOnSignals(app, logger, stopTracing) });
  return "running";
}
