#!/usr/bin/env node
// `npm run build`: compiles src/ (src/gen included) to dist/ with tsc and tsconfig.build.json, then copies
// every file the modules read at run time (the Redis .lua scripts, found through `new URL(…, import.meta.url)`)
// to the same place under dist/. It builds into a fresh directory and swaps it in at the end, so a process or a
// test reading dist/ meanwhile never sees half a build. dist/ keeps src/'s layout and depth, so a path relative
// to a module (e.g. ../../package.json from src/cli/) means the same file from dist/. See
// docs/decisions/deploy.md.
import { execFileSync } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative, sep } from "node:path";
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
try {
  await bundle(staging);
} catch (e) {
  rmSync(staging, { recursive: true, force: true });
  process.stderr.write(
    `build: bundling failed: ${e instanceof Error ? e.message : String(e)}; dist/ is unchanged\n`,
  );
  process.exit(1);
}
// The freshness mark test/support/build.ts compares with the sources' times.
writeFileSync(join(staging, ".built"), `${new Date().toISOString()}\n`);

rmSync(dist, { recursive: true, force: true });
renameSync(staging, dist);
process.stdout.write(`build: dist/ written (${copied} runtime files copied besides the compiled modules)\n`);

/**
 * The production bundle (dist/bundle/, what bin/keygate.js and the image run): esbuild packs the compiled
 * modules and the packages they import into a few files, so a start reads a handful of files instead of
 * ~700 (start-up time: docs/decisions/deploy.md). Two builds:
 * - the CLI (dist/cli/main.js) with code splitting, so every lazily imported command stays a chunk of its
 *   own and `serve` never loads the emulator or the policy checker. OpenTelemetry stays external (loaded
 *   from node_modules): the SDK only when tracing is configured, the small API always. The API must be one
 *   copy shared with the SDK (a bundled copy hands out tracers the SDK never reaches), and bundled SDK
 *   packages, being CommonJS imported with import(), would show esbuild only their default export;
 * - the policy parse worker (dist/policy/parse-worker.js) as one self-contained file, which isolated.js
 *   finds beside itself as `./parse-worker.js`.
 * Files read at run time through `new URL("<relative path>", import.meta.url)` (the Lua scripts, package.json)
 * are copied under dist/bundle/assets/ and the URLs rewritten to point there. esbuild is a build-time tool
 * only: the runtime image never carries it.
 */
async function bundle(out) {
  const { build } = await import("esbuild");
  const bundleDir = join(out, "bundle");
  const assets = new Map();
  const relocate = {
    name: "relocate-runtime-files",
    setup(b) {
      b.onLoad({ filter: /\.js$/ }, (args) => {
        if (!args.path.startsWith(out)) return undefined;
        const text = readFileSync(args.path, "utf8");
        const rewritten = text.replace(
          /new URL\((["'])(\.{1,2}\/[^"']+)\1, import\.meta\.url\)/g,
          (whole, _q, rel) => {
            const file = join(dirname(args.path), rel);
            if (!/\.(lua|json)$/.test(file)) return whole;
            // Inside dist/ a file keeps its place; one outside it (package.json) is taken from where it lies
            // relative to the final dist/ (the build runs in a staging directory).
            const inside = !relative(out, file).startsWith("..");
            const source = inside ? file : join(dist, relative(out, file));
            const where = inside ? relative(out, file) : relative(root, source);
            if (!existsSync(source))
              throw new Error(`${relative(out, args.path)} reads ${rel}, which does not exist`);
            assets.set(join(bundleDir, "assets", where), source);
            return `new URL(${JSON.stringify(`./assets/${where.split(sep).join("/")}`)}, import.meta.url)`;
          },
        );
        // A URL built from a variable cannot be relocated: refuse it rather than ship a bundle that fails
        // at run time. The parse worker's own URL is the one exception (its file sits beside the chunk).
        for (const m of rewritten.matchAll(/new URL\(([^)]*), import\.meta\.url\)/g)) {
          if (!/^["']/.test(m[1]) && m[1] !== "`./parse-worker${ext}`") {
            throw new Error(
              `${relative(out, args.path)}: new URL(${m[1]}, import.meta.url) cannot be bundled`,
            );
          }
        }
        return { contents: rewritten, loader: "js" };
      });
    },
  };
  const common = {
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    outdir: bundleDir,
    minify: true,
    keepNames: true,
    sourcemap: "linked",
    legalComments: "none",
    logLevel: "silent",
    plugins: [relocate],
    // Packages the SDK's dependencies load at start but keygate never uses (scripts/bundle-stubs/ says why).
    alias: {
      "whatwg-url": join(root, "scripts", "bundle-stubs", "whatwg-url.cjs"),
      "form-data": join(root, "scripts", "bundle-stubs", "form-data.cjs"),
    },
    // CommonJS packages (ioredis, the Tencent Cloud SDK, prom-client, …) call require() for Node's own
    // modules; an ES module has no require until it makes one.
    banner: {
      js: 'import { createRequire as __keygateCreateRequire } from "node:module"; const require = __keygateCreateRequire(import.meta.url);',
    },
  };
  const cli = await build({
    ...common,
    entryPoints: { main: join(out, "cli", "main.js") },
    splitting: true,
    chunkNames: "[name]-[hash]",
    external: [
      "@opentelemetry/api",
      "@opentelemetry/sdk-trace-node",
      "@opentelemetry/exporter-trace-otlp-http",
      "@opentelemetry/resources",
    ],
    metafile: true,
  });
  const worker = await build({
    ...common,
    entryPoints: { "parse-worker": join(out, "policy", "parse-worker.js") },
    metafile: true,
  });
  for (const [target, source] of assets) {
    mkdirSync(dirname(target), { recursive: true });
    copyFileSync(source, target);
  }
  // Which compiled modules went into which output file (test/cli-compiled.test.ts reads it).
  const inputsOf = (meta) =>
    Object.fromEntries(
      Object.entries(meta.outputs)
        .filter(([file]) => file.endsWith(".js"))
        .map(([file, o]) => [
          relative(bundleDir, join(root, file)).split(sep).join("/"),
          Object.keys(o.inputs)
            .filter((i) => !i.includes("node_modules/"))
            .map((i) => relative(out, join(root, i)).split(sep).join("/")),
        ]),
    );
  writeFileSync(
    join(bundleDir, "manifest.json"),
    `${JSON.stringify({ ...inputsOf(cli.metafile), ...inputsOf(worker.metafile) }, null, 2)}\n`,
  );
}

function* walk(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* walk(path);
    else yield path;
  }
}
