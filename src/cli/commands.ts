/** `keygate <command>`: serve, dev, emulator, policy check, token. */
import { randomBytes } from "node:crypto";
import { loadSettings } from "../config/settings.js";
import { createLogger } from "../observability/logger.js";
import { startTracing } from "../observability/tracing.js";
import { tokenSha256Hex } from "../policy/authenticate.js";
import { checkPolicyFile } from "../policy/check-command.js";
import { createApp } from "../main.js";
import { stopOnSignals } from "./signals.js";
import { runDev } from "./dev.js";
import { runEmulator } from "./emulator.js";

export const HELP = `keygate — a policy-guarded, rate-limited gateway for Tencent Cloud CVM AssociateInstancesKeyPairs

Usage: keygate <command>

Commands:
  serve                 run the gateway, configured by KEYGATE_* / TENCENTCLOUD_* variables (see README)
  dev                   run the gateway with an in-memory store, the built-in CVM emulator and a demo
                        policy, and print a ready-to-paste example call (what \`npm start\` runs)
  emulator [--port N] [--inventory FILE] [--task-ms N] [--faults JSON]
                        run the CVM emulator alone (default port 9000)
  policy check FILE     validate a policy file; exit 0, or list every error and exit 1
  token                 print a new random bearer token and its sha256 for the policy file
  help, --help          show this text
`;

/** Runs a command; resolves with the exit code for one-shot commands, never for servers. */
export async function run(
  argv: string[],
  env: Record<string, string | undefined>,
): Promise<number | "running"> {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case "help":
    case "--help":
    case "-h":
      process.stdout.write(HELP);
      return 0;
    case "token": {
      const token = randomBytes(32).toString("base64url");
      process.stdout.write(`token:  ${token}\nsha256: ${tokenSha256Hex(token)}\n`);
      process.stdout.write(
        `Give the token to the caller; put only the sha256 into tokens_sha256 of its tenant.\n`,
      );
      return 0;
    }
    case "policy": {
      if (rest[0] !== "check" || rest[1] === undefined || rest.length !== 2) {
        process.stderr.write("usage: keygate policy check FILE\n");
        return 2;
      }
      const result = await checkPolicyFile(rest[1]);
      (result.exitCode === 0 ? process.stdout : process.stderr).write(
        result.output.endsWith("\n") ? result.output : `${result.output}\n`,
      );
      return result.exitCode;
    }
    case "emulator":
      return runEmulator(rest, env);
    case "serve":
      return serve(env);
    case "dev":
      return runDev(env);
    default:
      process.stderr.write(`unknown command "${command}"\n\n${HELP}`);
      return 2;
  }
}

async function serve(env: Record<string, string | undefined>): Promise<number | "running"> {
  const settings = loadSettings(env, "serve");
  const logger = createLogger(settings.logLevel);
  const stopTracing = await startTracing(env);
  const app = await createApp({ settings, logger });
  // Signals drain from the moment the ports listen, also while the warm-up runs (ready means warm).
  await app.start({ onListening: () => stopOnSignals(app, logger, stopTracing) });
  return "running";
}
