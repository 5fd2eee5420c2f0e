#!/usr/bin/env node
// `npm run build`: compiles src/ (src/gen included) to dist/ with tsc and tsconfig.build.json, then copies
// every file the modules read at run time (the Redis .lua scripts, found through `new URL(…, import.meta.url)`)
// to the same place under dist/. It builds into a fresh directory and swaps it in at the end, so a process or a
// test reading dist/ meanwhile never sees half a build. dist/ keeps src/'s layout and depth, so a path relative
// to a module (e.g. ../../package.json from src/cli/) means the same file from dist/. See
// docs/decisions/deploy.md.
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative } from "node:path";
import process from "node:process";
import { URL, fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const src = join(root, "src");
const dist = join(root, "dist");
const staging = join(root, ".tmp", `dist-${process.pid}`);

const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
rmSync(staging, { recursive: true, force: true });
try {
  execFileSync(process.execPath, [tsc, "-p", join(root, "tsconfig.build.json"), "--outDir", staging], {
    stdio: "inherit",
  });
} catch {
  rmSync(staging, { recursive: true, force: true });
  process.stderr.write("build: tsc failed (see above); dist/ is unchanged\n");
  process.exit(1);
}

let copied = 0;
for (const file of walk(src)) {
  if (file.endsWith(".ts")) continue;
  const target = join(staging, relative(src, file));
  mkdirSync(dirname(target), { recursive: true });
  copyFileSync(file, target);
  copied += 1;
}
// The freshness mark test/support/build.ts compares with the sources' times.
writeFileSync(join(staging, ".built"), `${new Date().toISOString()}\n`);

rmSync(dist, { recursive: true, force: true });
renameSync(staging, dist);
process.stdout.write(`build: dist/ written (${copied} runtime files copied besides the compiled modules)\n`);

function* walk(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* walk(path);
    else yield path;
  }
}
