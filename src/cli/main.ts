/** Entry point of the `keygate` command; the only module that reads process.argv and process.env. */
import { SettingsError } from "../config/settings.js";
import { StartupError } from "../main.js";
import { run } from "./commands.js";

function main(): void {
  run(process.argv.slice(2), process.env).then(
    (code) => {
      if (code !== "running") process.exitCode = code;
    },
    (err: unknown) => {
      if (err instanceof SettingsError || err instanceof StartupError) {
        process.stderr.write(`keygate: ${err.message}\n`);
      } else {
        process.stderr.write(`keygate: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      }
      process.exit(1);
    },
  );
}

main();
