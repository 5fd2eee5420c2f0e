/**
 * Production runs compiled JavaScript (docs/decisions/deploy.md): the `keygate` bin starts the bundle in
 * dist/bundle/ (built by vitest's globalSetup, as `npm run build` does: tsc to dist/, then esbuild), reads a
 * handful of files and no package from node_modules for `serve`, loads neither tsx, esbuild nor the emulator,
 * finds the Redis scripts the bundle relocated, and starts with a temp directory nobody can write to.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { pathToFileURL } from "node:url";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus } from "../src/gen/health/v1/health_pb.js";
import { KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { HELP } from "../src/cli/commands.js";
import { prewarmPolicyParser, validateIsolated } from "../src/policy/isolated.js";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { startEmulator } from "./support/app.js";
import { BUNDLE_DIR, BUNDLE_MAIN, DIST_MAIN } from "./support/build.js";
import { TOKEN_A, TWO_TENANTS } from "./support/policies.js";
import {
  cleanEnv,
  killStrays,
  ROOT,
  runToEnd,
  serveEnv,
  spawnChild,
  waitListening,
  type Child,
} from "./support/process.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";
import { pollValue } from "./support/wait.js";

const BIN = "bin/keygate.js";
const DIST = join(ROOT, "dist");

let dir: string;
let readOnlyDir: string;
let policyFile: string;
let moduleLog: string;
let recordModules: string;
let emulator: Emulator;
let redis: RedisProcess;

/** Every file under `root`, relative to it. */
function filesUnder(root: string): string[] {
  return readdirSync(root, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(root, join(e.parentPath, e.name)));
}

/**
 * A directory no process of this user can write to. chmod is enough for an ordinary user; root ignores
 * modes, so as root the directory is also made immutable (chattr +i). Checked by writing to it.
 */
function makeReadOnlyDir(): string {
  const d = mkdtempSync(join(tmpdir(), "keygate-ro-tmp-"));
  execFileSync("chmod", ["0555", d]);
  if (process.getuid?.() === 0) execFileSync("chattr", ["+i", d]);
  let writable = true;
  try {
    writeFileSync(join(d, "probe"), "x");
  } catch {
    writable = false;
  }
  if (writable) throw new Error(`could not make ${d} read-only for this test`);
  return d;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "keygate-compiled-"));
  readOnlyDir = makeReadOnlyDir();
  policyFile = join(dir, "policy.yaml");
  writeFileSync(policyFile, TWO_TENANTS);
  // A module hook that writes down every module the child resolves (ESM imports, ours and packages').
  moduleLog = join(dir, "modules.log");
  writeFileSync(
    join(dir, "hooks.mjs"),
    `import { appendFileSync } from "node:fs";
export async function resolve(specifier, context, next) {
  const result = await next(specifier, context);
  appendFileSync(${JSON.stringify(moduleLog)}, result.url + "\\n");
  return result;
}
`,
  );
  recordModules = join(dir, "record-modules.mjs");
  writeFileSync(
    recordModules,
    `import { register } from "node:module";
register(${JSON.stringify(pathToFileURL(join(dir, "hooks.mjs")).href)});
`,
  );
  emulator = await startEmulator(50);
  redis = await startRedis();
}, 60_000);
afterEach(async () => {
  await killStrays();
});
afterAll(async () => {
  await emulator?.close();
  await redis?.stop();
  if (readOnlyDir) {
    if (process.getuid?.() === 0) execFileSync("chattr", ["-i", readOnlyDir]);
    rmSync(readOnlyDir, { recursive: true, force: true });
  }
  rmSync(dir, { recursive: true, force: true });
});

/** Waits for gRPC health SERVING on `port`. */
async function waitServing(port: number): Promise<void> {
  const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
  await pollValue(
    "health SERVING",
    () =>
      health.check({ service: "" }).then(
        (r) => r.status,
        (e: unknown) => String(e),
      ),
    (s) => s === HealthCheckResponse_ServingStatus.SERVING,
  );
}

async function stopWithSigterm(child: Child): Promise<void> {
  child.signal("SIGTERM");
  expect(await child.exited).toEqual({ code: 0, signal: null });
}

describe("the build", () => {
  it("compiles every module of src/ (src/gen included) and copies every file read at run time", () => {
    expect(existsSync(DIST_MAIN)).toBe(true);
    const src = filesUnder(join(ROOT, "src"));
    const dist = new Set(filesUnder(DIST));
    const expected = src.map((f) => (f.endsWith(".ts") ? f.replace(/\.ts$/, ".js") : f));
    expect(expected.filter((f) => f.endsWith(".lua")).length).toBeGreaterThan(0);
    expect(expected.filter((f) => f.startsWith("gen/")).length).toBeGreaterThan(0);
    expect(expected.filter((f) => !dist.has(f))).toEqual([]);
  });

  it("bundles the CLI and the parse worker, with every Lua script and package.json beside the bundle", () => {
    expect(existsSync(BUNDLE_MAIN)).toBe(true);
    expect(existsSync(join(BUNDLE_DIR, "parse-worker.js"))).toBe(true);
    const assets = filesUnder(join(BUNDLE_DIR, "assets")).sort();
    const lua = filesUnder(join(ROOT, "src")).filter((f) => f.endsWith(".lua"));
    expect(assets).toEqual([...lua, "package.json"].sort());
    // Every compiled module of the gateway went into some output file.
    const manifest = bundleManifest();
    const bundled = new Set(Object.values(manifest).flat());
    for (const m of ["main.js", "cli/serve.js", "policy/parse-worker.js", "upstream/emulator/index.js"]) {
      expect(bundled.has(m), m).toBe(true);
    }
  });

  it("carries stand-ins, not whatwg-url (tr46) and form-data (mime-db), which keygate never uses", () => {
    const sources = filesUnder(BUNDLE_DIR)
      .filter((f) => f.endsWith(".js.map"))
      .flatMap(
        (f) => (JSON.parse(readFileSync(join(BUNDLE_DIR, f), "utf8")) as { sources: string[] }).sources,
      );
    for (const pkg of ["whatwg-url", "tr46", "form-data", "mime-db", "mime-types"]) {
      expect(
        sources.filter((s) => s.includes(`node_modules/${pkg}/`)),
        pkg,
      ).toEqual([]);
    }
    expect(sources.some((s) => s.endsWith("scripts/bundle-stubs/whatwg-url.cjs"))).toBe(true);
    expect(sources.some((s) => s.endsWith("scripts/bundle-stubs/form-data.cjs"))).toBe(true);
  });
});

/** dist/bundle/manifest.json: output file (relative to dist/bundle/) → the compiled modules it carries. */
function bundleManifest(): Record<string, string[]> {
  return JSON.parse(readFileSync(join(BUNDLE_DIR, "manifest.json"), "utf8")) as Record<string, string[]>;
}

describe("bin/keygate.js runs the compiled code", () => {
  it("--help", async () => {
    const r = await runToEnd(process.execPath, [BIN, "--help"], cleanEnv());
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(HELP);
  });

  it("serve reaches SERVING on Redis, answers a call, and loads neither tsx nor the emulator", async () => {
    rmSync(moduleLog, { force: true });
    const child = spawnChild(
      process.execPath,
      ["--import", recordModules, BIN, "serve"],
      serveEnv(policyFile, emulator.url, { KEYGATE_REDIS_URL: redis.url }),
    );
    const { api } = await waitListening(child);
    await waitServing(api);

    // A real call: the limiter, the leases and the operations run their Lua scripts from dist/bundle/assets/.
    const client = createClient(
      KeyPairService,
      createConnectTransport({ baseUrl: `http://127.0.0.1:${api}`, httpVersion: "1.1" }),
    );
    const res = await client.associateKeyPairs(
      { region: "ap-guangzhou", instanceIds: ["ins-gz000001"], keyIds: ["skey-aaaaaaaa"] },
      { headers: { authorization: `Bearer ${TOKEN_A}` } },
    );
    expect(res.requestId).toMatch(/^[0-9a-f-]{36}$/);
    await stopWithSigterm(child);

    const urls = [...new Set(readFileSync(moduleLog, "utf8").split("\n").filter(Boolean))];
    const files = urls.filter((u) => u.startsWith("file:"));
    // Every file comes from bin/ and the bundle (the main thread's and the parse worker's), except the
    // OpenTelemetry API, which the build leaves external (scripts/build.mjs): no other package from
    // node_modules (so neither tsx nor esbuild), no tsc output, nothing transpiled at run time.
    const bundleUrl = `${pathToFileURL(BUNDLE_DIR).href}/`;
    const fromBundle = files.filter((u) => u.startsWith(bundleUrl)).map((u) => u.slice(bundleUrl.length));
    const others = files.filter((u) => !u.startsWith(bundleUrl) && u !== pathToFileURL(join(ROOT, BIN)).href);
    expect(others.filter((u) => !u.includes("/node_modules/@opentelemetry/api/"))).toEqual([]);
    expect(fromBundle).toContain("main.js");
    expect(fromBundle).toContain("parse-worker.js");
    expect(fromBundle.length).toBeLessThan(30);
    // `serve` has no use for the emulator, the demo policy or the policy checker: no file it loaded carries them.
    const manifest = bundleManifest();
    const loaded = fromBundle.flatMap((f) => manifest[f] ?? []);
    expect(loaded).toContain("cli/serve.js");
    expect(
      loaded.filter((m) => /^(upstream\/emulator\/|policy\/demo|policy\/check-command)/.test(m)),
    ).toEqual([]);
  }, 90_000);
});

describe("a read-only temp directory", () => {
  it("does not stop the compiled serve; the same directory does stop the tsx start", async () => {
    const child = spawnChild(
      process.execPath,
      [BIN, "serve"],
      serveEnv(policyFile, emulator.url, { TMPDIR: readOnlyDir, KEYGATE_REDIS_URL: redis.url }),
    );
    const { api } = await waitListening(child);
    await waitServing(api);
    await stopWithSigterm(child);

    // The control: tsx keeps a compile cache in the temp directory and cannot start without it, so this
    // directory really is what used to crash a start.
    const viaTsx = await runToEnd(
      process.execPath,
      ["--import", "tsx", "src/cli/main.ts", "--help"],
      cleanEnv({ TMPDIR: readOnlyDir }),
    );
    expect(viaTsx.code).not.toBe(0);
    expect(viaTsx.stderr).toContain(readOnlyDir);
  }, 90_000);
});

describe("the policy parser started ahead (serve's start-up)", () => {
  it("answers like a parser started on demand, for a good and a bad file", async () => {
    for (const text of [TWO_TENANTS, "tenants:\n  x:\n    regions: [nowhere]\n"]) {
      prewarmPolicyParser();
      const prewarmed = await validateIsolated(text);
      const onDemand = await validateIsolated(text);
      expect(prewarmed).toEqual(onDemand);
    }
    expect((await validateIsolated(TWO_TENANTS)).ok).toBe(true);
  });

  it("a spare nobody takes does not keep the process alive", async () => {
    const code = `import(${JSON.stringify(pathToFileURL(join(DIST, "policy", "isolated.js")).href)}).then((m) => m.prewarmPolicyParser())`;
    const r = await runToEnd(process.execPath, ["-e", code], cleanEnv(), 20_000);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
  });
});
