/** Entry point of the `keygate` command; the only module that reads process.argv and process.env. */
import { run } from "./commands.js";

/**
 * A configuration or start-up problem (SettingsError, StartupError) is printed as its message alone.
 * Matched by name so that this entry point does not load the settings and the whole app for `--help`.
 */
function isUserError(err: unknown): err is Error {
  return err instanceof Error && (err.name === "SettingsError" || err.name === "StartupError");
}

function main(): void {
  run(process.argv.slice(2), process.env).then(
    (code) => {
      if (code !== "running") process.exitCode = code;
    },
    (err: unknown) => {
      if (isUserError(err)) {
        process.stderr.write(`keygate: ${err.message}\n`);
      } else {
        process.stderr.write(`keygate: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      }
      process.exit(1);
    },
  );
}

main();
