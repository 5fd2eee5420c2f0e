import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, rename, rm, symlink, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { MAX_POLICY_BYTES } from "../src/policy/load.js";
import type { Policy } from "../src/policy/policy.js";
import {
  createPolicySource,
  createStaticPolicySource,
  type ManagedPolicySource,
} from "../src/policy/source.js";
import { pollUntil } from "./support/wait.js";

const HASH = "631be138e52c7bc6d6f1c602cb9811ea36f75b58e35b5a780c55c9686882b18f";

/** A valid policy whose only tenant is `name`. */
const policyText = (name: string) => `
tenants:
  ${name}:
    tokens_sha256: ["${HASH}"]
    regions: [ap-guangzhou]
    instances: "*"
    keys: "*"
`;
const BAD = `
tenants:
  broken:
    tokens_sha256: ["${HASH}"]
    regions: [ap-mars]
    instances: "*"
    keys: "*"
`;

const tenantsOf = (p: Policy) => [...p.tenants.keys()];

let dir: string;
let source: ManagedPolicySource | undefined;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "keygate-policy-"));
});

afterEach(async () => {
  await source?.close();
  source = undefined;
  await rm(dir, { recursive: true, force: true });
});

/** Lays out a directory the way the kubelet mounts a ConfigMap: policy.yaml → ..data/policy.yaml, ..data → ..<version>. */
async function configMap(version: string, text: string): Promise<string> {
  await mkdir(join(dir, `..${version}`));
  await writeFile(join(dir, `..${version}`, "policy.yaml"), text);
  await symlink(`..${version}`, join(dir, "..data"));
  await symlink("..data/policy.yaml", join(dir, "policy.yaml"));
  return join(dir, "policy.yaml");
}

/** The kubelet's update: write a new version directory, then atomically swap the ..data symlink. */
async function configMapUpdate(version: string, previous: string, text: string): Promise<void> {
  await mkdir(join(dir, `..${version}`));
  await writeFile(join(dir, `..${version}`, "policy.yaml"), text);
  await symlink(`..${version}`, join(dir, "..data_tmp"));
  await rename(join(dir, "..data_tmp"), join(dir, "..data"));
  await rm(join(dir, `..${previous}`), { recursive: true });
}

describe("policy source", () => {
  it("follows a ConfigMap update (..data symlink swap) through the directory watch", async () => {
    const path = await configMap("2024_01_01_00_00_00.1", policyText("first"));
    const reloaded: string[][] = [];
    source = createPolicySource({ path, pollMs: 600_000, onReload: (p) => reloaded.push(tenantsOf(p)) });
    const start = await source.start();
    expect(start.ok && tenantsOf(start.policy)).toEqual(["first"]);

    await configMapUpdate("2024_01_01_00_05_00.2", "2024_01_01_00_00_00.1", policyText("second"));
    await pollUntil(() => tenantsOf(source!.current())[0] === "second", "the swapped version", 15_000);
    expect(reloaded).toEqual([["second"]]);
    expect(source.reloads).toBe(1);
    expect(source.failures).toBe(0);
  });

  it("follows an in-place write through the directory watch", async () => {
    const path = join(dir, "policy.yaml");
    await writeFile(path, policyText("first"));
    source = createPolicySource({ path, pollMs: 600_000 });
    await source.start();
    await writeFile(path, policyText("second"));
    await pollUntil(() => tenantsOf(source!.current())[0] === "second", "the rewritten version", 15_000);
  });

  it("notices changes by polling alone when there is no watch", async () => {
    const path = await configMap("v1", policyText("first"));
    source = createPolicySource({ path, pollMs: 50, watch: false });
    await source.start();
    await configMapUpdate("v2", "v1", policyText("second"));
    await pollUntil(() => tenantsOf(source!.current())[0] === "second", "the polled version", 15_000);
    const inPlace = join(dir, "..v2", "policy.yaml");
    await writeFile(inPlace, policyText("third"));
    await pollUntil(() => tenantsOf(source!.current())[0] === "third", "the polled in-place write", 15_000);
    expect(source.reloads).toBe(2);
  });

  it("refuses a bad version, keeps the last good one, reports it once, then takes the next good one", async () => {
    const path = await configMap("v1", policyText("good"));
    const reported: string[][] = [];
    source = createPolicySource({ path, pollMs: 50, onError: (errors) => reported.push(errors) });
    await source.start();
    const before = source.current();

    await configMapUpdate("v2", "v1", BAD);
    await pollUntil(() => source!.failures === 1, "the refusal", 15_000);
    expect(source.current()).toBe(before);
    expect(reported).toEqual([
      [expect.stringContaining('tenants.broken.regions[0]: "ap-mars" is not a supported region')],
    ]);
    expect(source.lastErrors).toEqual(reported[0]);
    // The same bad bytes are not reported again on every poll or event.
    expect(await source.check()).toBe("unchanged");
    await new Promise((r) => setTimeout(r, 200));
    expect(source.failures).toBe(1);

    await configMapUpdate("v3", "v2", policyText("fixed"));
    await pollUntil(() => tenantsOf(source!.current())[0] === "fixed", "the fixed version", 15_000);
    expect(source.lastErrors).toEqual([]);
    expect(source.reloads).toBe(1);
  });

  it("keeps the last good version when the file disappears", async () => {
    const path = join(dir, "policy.yaml");
    await writeFile(path, policyText("good"));
    const reported: string[][] = [];
    source = createPolicySource({ path, pollMs: 600_000, watch: false, onError: (e) => reported.push(e) });
    await source.start();
    await rm(path);
    expect(await source.check()).toBe("rejected");
    expect(reported[0]?.[0]).toMatch(/cannot read .*ENOENT/);
    expect(tenantsOf(source.current())).toEqual(["good"]);
  });

  it("reports every error when the first version is bad, and when the file is missing", async () => {
    const path = join(dir, "policy.yaml");
    await writeFile(path, BAD);
    source = createPolicySource({ path });
    const bad = await source.start();
    expect(bad).toEqual({ ok: false, errors: [expect.stringContaining("ap-mars")] });
    expect(() => source!.current()).toThrow("not started");

    const missing = createPolicySource({ path: join(dir, "nope.yaml") });
    expect(await missing.start()).toEqual({ ok: false, errors: [expect.stringMatching(/ENOENT/)] });
    await missing.close();
  });

  it("stops reacting after close", async () => {
    const path = join(dir, "policy.yaml");
    await writeFile(path, policyText("first"));
    source = createPolicySource({ path, pollMs: 50 });
    await source.start();
    await source.close();
    await writeFile(path, policyText("second"));
    await new Promise((r) => setTimeout(r, 300));
    expect(tenantsOf(source.current())).toEqual(["first"]);
  });

  it("serialises checks: concurrent calls never reload the same version twice", async () => {
    const path = join(dir, "policy.yaml");
    await writeFile(path, policyText("first"));
    source = createPolicySource({ path, pollMs: 600_000, watch: false });
    await source.start();
    await writeFile(path, policyText("second"));
    const outcomes = await Promise.all([source.check(), source.check(), source.check()]);
    expect(outcomes.filter((o) => o === "reloaded")).toHaveLength(1);
    expect(source.reloads).toBe(1);
  });
});

describe("static policy source", () => {
  it("serves a policy given as text and never changes", async () => {
    const s = createStaticPolicySource(policyText("demo"), "demo");
    const start = await s.start();
    expect(start.ok).toBe(true);
    expect(s.current().source).toBe("demo");
    expect(await s.check()).toBe("unchanged");
    await s.close();
  });

  it("reports every error of a bad text", async () => {
    const s = createStaticPolicySource(BAD, "demo");
    expect(await s.start()).toEqual({ ok: false, errors: [expect.stringContaining("ap-mars")] });
  });
});

describe("policy source against hostile files", () => {
  it("refuses a FIFO at once and a file over the limit without reading it", async () => {
    const path = join(dir, "policy.yaml");
    await writeFile(path, policyText("good"));
    source = createPolicySource({ path, pollMs: 600_000, watch: false, settleMs: 50 });
    await source.start();
    await rm(path);
    execFileSync("mkfifo", [path]);
    expect(await source.check()).toBe("rejected");
    expect(source.lastErrors).toEqual([`(file): ${path} is a named pipe (FIFO), not a regular file`]);
    await rm(path);
    await writeFile(path, "");
    await truncate(path, MAX_POLICY_BYTES + 1);
    expect(await source.check()).toBe("rejected");
    expect(source.lastErrors[0]).toMatch(/is 1048577 bytes, larger than the 1048576-byte limit/);
    expect(tenantsOf(source.current())).toEqual(["good"]);
  });

  it("takes an in-place write only once two reads a settle period apart agree", async () => {
    const path = join(dir, "policy.yaml");
    await writeFile(path, policyText("first"));
    source = createPolicySource({ path, pollMs: 600_000, watch: false, settleMs: 1_000 });
    await source.start();
    const third = `  third:\n    tokens_sha256: ["${"b".repeat(64)}"]\n    regions: [ap-guangzhou]\n    instances: "*"\n    keys: "*"\n`;
    const next = policyText("second") + third;
    await writeFile(path, policyText("second")); // valid on its own: one tenant, "second"
    const checked = source.check();
    await new Promise((r) => setTimeout(r, 200));
    await writeFile(path, next);
    expect(await checked).toBe("reloaded");
    expect(tenantsOf(source.current())).toEqual(["second", "third"]);
    expect(source.reloads).toBe(1);
  });

  it("close() returns at once while a settle wait is in progress", async () => {
    const path = join(dir, "policy.yaml");
    await writeFile(path, policyText("first"));
    source = createPolicySource({ path, pollMs: 600_000, watch: false, settleMs: 60_000 });
    const started = source.start();
    await new Promise((r) => setTimeout(r, 200));
    const asked = Date.now();
    await source.close();
    expect(await started).toEqual({ ok: false, errors: ["(file): closed before the policy was read"] });
    expect(Date.now() - asked).toBeLessThan(5_000);
  });
});
