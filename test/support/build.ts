/**
 * The compiled build (dist/) for tests and benchmarks: `ensureBuilt()` runs `npm run build`'s script when
 * dist/ is missing or older than any source it comes from, so `npm test` on a fresh clone and `npx keygate`
 * inside tests run current compiled code (docs/decisions/deploy.md).
 */
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
/** Written last by scripts/build.mjs: its time is the build's. */
export const BUILT_MARK = join(ROOT, "dist", ".built");
/** The compiled `keygate` entry point (tsc's output, one file per module). */
export const DIST_MAIN = join(ROOT, "dist", "cli", "main.js");
/** The bundle made from it, which the bin and the image run (scripts/build.mjs). */
export const BUNDLE_DIR = join(ROOT, "dist", "bundle");
export const BUNDLE_MAIN = join(BUNDLE_DIR, "main.js");

function newestMtime(path: string): number {
  const st = statSync(path);
  if (!st.isDirectory()) return st.mtimeMs;
  let newest = st.mtimeMs;
  for (const entry of readdirSync(path)) newest = Math.max(newest, newestMtime(join(path, entry)));
  return newest;
}

/** True when dist/ exists and is newer than src/, the build script and the compiler settings. */
export function isBuildFresh(): boolean {
  if (!existsSync(BUILT_MARK) || !existsSync(DIST_MAIN) || !existsSync(BUNDLE_MAIN)) return false;
  const inputs = ["src", "scripts/build.mjs", "tsconfig.json", "tsconfig.build.json", "package.json"];
  const newestInput = Math.max(...inputs.map((p) => newestMtime(join(ROOT, p))));
  return statSync(BUILT_MARK).mtimeMs >= newestInput;
}

/** Builds dist/ unless it is fresh; throws with tsc's output when the build fails. */
export function ensureBuilt(): void {
  if (isBuildFresh()) return;
  execFileSync(process.execPath, [join(ROOT, "scripts", "build.mjs")], { cwd: ROOT, stdio: "pipe" });
}

/** The Dockerfile's ENTRYPOINT (exec form): node, its flags, bin/keygate.js. */
export function imageEntrypoint(): string[] {
  const dockerfile = readFileSync(join(ROOT, "Dockerfile"), "utf8");
  const line = /^ENTRYPOINT\s+(\[.*\])\s*$/m.exec(dockerfile)?.[1];
  if (!line) throw new Error("the Dockerfile has no exec-form ENTRYPOINT");
  return JSON.parse(line) as string[];
}
