/**
 * The `keygate` command line as users run it: real child processes from the project root, through
 * `npx keygate` (the package's bin, which runs the compiled dist/) and `node --import tsx src/cli/main.ts`
 * (the TypeScript sources, as in development). test/cli-compiled.test.ts covers the compiled start itself.
 */
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { cleanEnv, killStrays, runToEnd, spawnKeygate, waitListening } from "./support/process.js";
import { pollUntil } from "./support/wait.js";
import { freePort } from "./support/redis-server.js";

const keygate = (args: string[], env: Record<string, string> = {}) =>
  runToEnd(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], cleanEnv(env));
const npxKeygate = (args: string[], env: Record<string, string> = {}) =>
  runToEnd("npx", ["keygate", ...args], cleanEnv(env));

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "keygate-cli-"));
});
afterEach(async () => {
  await killStrays();
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe("keygate --help and unknown commands", () => {
  it("`npx keygate --help` exits 0 and lists every command", async () => {
    const r = await npxKeygate(["--help"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    for (const cmd of ["serve", "dev", "emulator", "policy check FILE", "token"]) {
      expect(r.stdout).toContain(`  ${cmd}`);
    }
  });

  it("an unknown command exits 2 with the help on stderr", async () => {
    const r = await keygate(["frobnicate"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('unknown command "frobnicate"');
    expect(r.stderr).toContain("Usage: keygate <command>");
  });
});

describe("keygate token", () => {
  it("prints a fresh random token and its sha256", async () => {
    const parse = (out: string) => ({
      token: /^token:\s+(\S+)$/m.exec(out)?.[1] ?? "",
      sha: /^sha256:\s+(\S+)$/m.exec(out)?.[1] ?? "",
    });
    const a = await keygate(["token"]);
    const b = await keygate(["token"]);
    expect(a.code).toBe(0);
    const ta = parse(a.stdout);
    const tb = parse(b.stdout);
    expect(ta.token.length).toBeGreaterThanOrEqual(32);
    expect(ta.sha).toMatch(/^[0-9a-f]{64}$/);
    expect(ta.sha).toBe(createHash("sha256").update(ta.token, "utf8").digest("hex"));
    expect(tb.token).not.toBe(ta.token);
  });

  it("the printed hash is what a policy file accepts in tokens_sha256", async () => {
    const t = /^token:\s+(\S+)$/m.exec((await keygate(["token"])).stdout)?.[1] ?? "";
    const sha = createHash("sha256").update(t, "utf8").digest("hex");
    const file = join(dir, "token-policy.yaml");
    writeFileSync(
      file,
      `tenants:\n  t:\n    tokens_sha256: ["${sha}"]\n    regions: [ap-guangzhou]\n    instances: "*"\n    keys: "*"\n`,
    );
    const r = await keygate(["policy", "check", file]);
    expect(r.code).toBe(0);
  });
});

describe("keygate policy check", () => {
  it("accepts a good file: exit 0", async () => {
    const r = await keygate(["policy", "check", "test/fixtures/policy/valid-full.yaml"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/OK, 2 tenants/);
  });

  it("rejects a bad file listing every error: exit 1", async () => {
    const r = await keygate(["policy", "check", "test/fixtures/policy/invalid-key-ids.yaml"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("2 errors");
    expect(r.stderr).toContain('tenants.team-a.keys[1]: "skey-AAAAAAAA"');
    expect(r.stderr).toContain('tenants.team-a.keys[2]: "key-aaaaaaaa"');
  });

  it("through npx too, and a missing FILE is a usage error", async () => {
    const bad = await npxKeygate(["policy", "check", "test/fixtures/policy/invalid-unknown-fields.yaml"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/invalid, \d+ errors?:/);
    const usage = await keygate(["policy", "check"]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain("usage: keygate policy check FILE");
  });
});

describe("keygate serve refuses a bad environment", () => {
  it("exits non-zero listing every problem, echoing no secret", async () => {
    const r = await keygate(["serve"], {
      KEYGATE_PORT: "abc",
      KEYGATE_REDIS_URL: "http://admin:hunter2-redis-pw@redis.internal:6379",
      TENCENTCLOUD_SECRET_KEY: "tc-secret-key-must-not-leak",
      KEYGATE_LOG_LEVEL: "loud",
    });
    expect(r.code).not.toBe(0);
    expect(r.stdout).toBe("");
    const problems = r.stderr.split("\n").filter((l) => l.startsWith("  - "));
    expect(problems).toHaveLength(5);
    expect(r.stderr).toContain('KEYGATE_PORT="abc"');
    expect(r.stderr).toContain("KEYGATE_POLICY_FILE is required");
    expect(r.stderr).toContain("KEYGATE_REDIS_URL must start with redis://");
    expect(r.stderr).toContain("TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY are required");
    expect(r.stderr).toContain('KEYGATE_LOG_LEVEL="loud"');
    expect(r.stderr).not.toContain("hunter2-redis-pw");
    expect(r.stderr).not.toContain("tc-secret-key-must-not-leak");
    // A configuration problem is reported as such, not as a crash.
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it("an invalid policy file stops start-up with every policy error", async () => {
    const port = await freePort();
    const r = await keygate(["serve"], {
      KEYGATE_HOST: "127.0.0.1",
      KEYGATE_PORT: String(port),
      KEYGATE_METRICS_PORT: "0",
      KEYGATE_POLICY_FILE: "test/fixtures/policy/invalid-key-ids.yaml",
      TENCENTCLOUD_SECRET_ID: "AKIDcli-test",
      TENCENTCLOUD_SECRET_KEY: "tc-secret-key-must-not-leak",
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("is invalid");
    expect(r.stderr).toContain("skey-AAAAAAAA");
    expect(r.stderr).toContain("key-aaaaaaaa");
    expect(r.stderr + r.stdout).not.toContain("tc-secret-key-must-not-leak");
  });
});

describe("keygate dev (npm start)", () => {
  it("prints a curl line for KEYGATE_PORT that works as pasted, and stops with exit 0 on SIGTERM", async () => {
    const [port, metricsPort] = [await freePort(), await freePort()];
    const child = spawnKeygate(
      ["dev"],
      cleanEnv({ KEYGATE_PORT: String(port), KEYGATE_METRICS_PORT: String(metricsPort) }),
    );
    const ports = await waitListening(child);
    expect(ports.api).toBe(port);
    await child.waitFor((c) => c.stdout().includes("Press Ctrl+C to stop."), "the example call");

    // The example: from the `curl` line through its backslash continuations.
    const lines = child.stdout().split("\n");
    const start = lines.findIndex((l) => l.trimStart().startsWith("curl "));
    expect(start).toBeGreaterThanOrEqual(0);
    let end = start;
    while (lines[end]?.trimEnd().endsWith("\\")) end += 1;
    const command = lines.slice(start, end + 1).join("\n");
    expect(command).toContain(`http://127.0.0.1:${port}/keygate.v1.KeyPairService/AssociateKeyPairs`);

    const r = await runToEnd("sh", ["-c", command], cleanEnv());
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const body = JSON.parse(r.stdout) as { requestId?: string; instances?: { state: string }[] };
    expect(body.requestId).toMatch(/^[0-9a-f-]{36}$/);
    // The demo asks to wait for the cloud task: the instance's outcome is in the answer.
    expect(body.instances?.[0]?.state).toBe("SUCCESS");
    await pollUntil(
      () => child.logs().some((l) => l.audit === true && l.upstreamRequestId === body.requestId),
      "the audit line of the pasted call",
    );

    child.signal("SIGTERM");
    const exit = await child.exited;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(child.logs().map((l) => l.msg)).toContain("stopped");
  });
});
