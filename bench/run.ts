/**
 * `npm run bench [limit|contention|limiter-core|faults|hostile|batch|startup] [args…]`: runs one benchmark, or all of them in
 * turn when none is named. Each benchmark prints its own table and the naive alternative beside it.
 */
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const BENCHES = ["limit", "contention", "limiter-core", "faults", "hostile", "batch", "startup"] as const;
const [name, ...args] = process.argv.slice(2);
if (name !== undefined && !(BENCHES as readonly string[]).includes(name)) {
  process.stderr.write(`unknown benchmark "${name}"; choose one of: ${BENCHES.join(", ")}\n`);
  process.exit(2);
}
for (const bench of name === undefined ? BENCHES : [name]) {
  process.stdout.write(`\n=== bench: ${bench} ===\n`);
  const file = fileURLToPath(new URL(`./${bench}.ts`, import.meta.url));
  const r = spawnSync(process.execPath, ["--import", "tsx", file, ...args], { stdio: "inherit" });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
