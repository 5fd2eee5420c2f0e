/**
 * `keygate <command>`: serve, dev, emulator, policy check, token. Each command imports what it needs
 * when it runs, so `keygate serve` never loads the emulator or the policy checker, and `--help` loads
 * nothing (start-up time and idle memory: docs/decisions/deploy.md).
 */
import { randomBytes } from "node:crypto";

export const HELP = `keygate — a policy-guarded, rate-limited gateway for Tencent Cloud CVM AssociateInstancesKeyPairs

Usage: keygate <command>

Commands:
  serve                 run the gateway, configured by KEYGATE_* / TENCENTCLOUD_* variables (see README)
  dev                   run the gateway with an in-memory store, the built-in CVM emulator and a demo
                        policy, and print a ready-to-paste example call (what \`npm start\` runs)
  emulator [--port N] [--inventory FILE] [--task-ms N] [--faults JSON]
           [--force-stop stopped-only|shutdown-first] [--busy-lag-ms N]
                        run the CVM emulator alone (default port 9000)
  policy check FILE     validate a policy file; exit 0, or list every error and exit 1
  token                 print a new random bearer token and its sha256 for the policy file
  version, --version    print keygate's version (and its source revision when the build recorded one)
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
    case "version":
    case "--version":
    case "-V": {
      const [{ buildRevisionFrom }, { buildInfo }] = await Promise.all([
        import("../config/settings.js"),
        import("../version.js"),
      ]);
      const b = buildInfo(buildRevisionFrom(env) ?? undefined);
      process.stdout.write(`keygate ${b.version} (revision ${b.revision}, node ${b.node})\n`);
      return 0;
    }
    case "token": {
      const { tokenSha256Hex } = await import("../policy/authenticate.js");
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
      const { checkPolicyFile } = await import("../policy/check-command.js");
      const result = await checkPolicyFile(rest[1]);
      (result.exitCode === 0 ? process.stdout : process.stderr).write(
        result.output.endsWith("\n") ? result.output : `${result.output}\n`,
      );
      return result.exitCode;
    }
    case "emulator": {
      const { runEmulator } = await import("./emulator.js");
      return runEmulator(rest, env);
    }
    case "serve":
      return (await import("./serve.js")).serve(env);
    case "dev": {
      const { runDev } = await import("./dev.js");
      return runDev(env);
    }
    default:
      process.stderr.write(`unknown command "${command}"\n\n${HELP}`);
      return 2;
  }
}
