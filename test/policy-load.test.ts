import { readFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { checkPolicyFile } from "../src/policy/check-command.js";
import { DEMO_POLICY_YAML } from "../src/policy/demo.js";
import { loadPolicyFileIsolated, parsePolicyIsolated, validateIsolated } from "../src/policy/isolated.js";
import { loadPolicyFile, parsePolicy } from "../src/policy/load.js";
import { SUPPORTED_REGIONS } from "../src/core/regions.js";

const fixture = (name: string) => new URL(`./fixtures/policy/${name}`, import.meta.url).pathname;
const A = "631be138e52c7bc6d6f1c602cb9811ea36f75b58e35b5a780c55c9686882b18f";
const REGIONS = SUPPORTED_REGIONS.join(", ");
const HASH_HELP = `is not a sha256 hex digest (64 lower-case hex digits; "keygate token" prints one); the value is not shown in case it is a token`;
const ONE_TO_100 = "must be an integer from 1 to 100";
const CLASH = "(a credential must identify exactly one tenant)";

/** Each invalid fixture and the complete list of errors it must produce, in order. */
const invalid: Record<string, string[]> = {
  "invalid-not-yaml.txt": [
    "line 3, column 1: not valid YAML: Flow sequence in block collection must be sufficiently indented and end with a ]",
  ],
  "invalid-duplicate-yaml-key.yaml": [
    'line 8, column 5: duplicate key "force_stop" (each key may appear once)',
  ],
  "invalid-empty.yaml": ['(file): is empty; expected a map with "tenants"'],
  "invalid-top-level-list.yaml": ["(top level): expected a map, got a list"],
  "invalid-tenants-missing.yaml": ["tenants: is required", "tenant: unknown field (known fields: tenants)"],
  "invalid-no-tenants.yaml": ["tenants: must define at least one tenant"],
  "invalid-unknown-fields.yaml": [
    "tenants.team-a.instances.tag: unknown field (known fields: ids, tags, projects)",
    "tenants.team-a.force-stop: unknown field (known fields: tokens_sha256, identities, regions, instances, keys, force_stop, max_instances_per_request, weight)",
    "version: unknown field (known fields: tenants)",
  ],
  "invalid-instance-ids.yaml": [
    'tenants.team-a.instances.ids[1]: "ins-abcdefg" is not a valid instance id (ins- + 8 of [a-z0-9])',
    'tenants.team-a.instances.ids[2]: "ins-ABC" is not a valid instance id (ins- + 8 of [a-z0-9])',
    "tenants.team-a.instances.ids[3]: expected a string, got 12345678",
  ],
  "invalid-key-ids.yaml": [
    'tenants.team-a.keys[1]: "skey-AAAAAAAA" is not a valid key pair id (skey- + 8 of [a-z0-9])',
    'tenants.team-a.keys[2]: "key-aaaaaaaa" is not a valid key pair id (skey- + 8 of [a-z0-9])',
  ],
  "invalid-token-hashes.yaml": [
    "tenants.team-a.tokens_sha256[0]: is not lower-case: write the sha256 in lower-case hex",
    `tenants.team-a.tokens_sha256[1]: ${HASH_HELP}`,
    `tenants.team-a.tokens_sha256[2]: ${HASH_HELP}`,
  ],
  "invalid-duplicate-token.yaml": [
    `tenants.team-b.tokens_sha256[1]: already listed at tenants.team-a.tokens_sha256[0] ${CLASH}`,
  ],
  "invalid-regions.yaml": [
    `tenants.team-a.regions[1]: "ap-mars" is not a supported region (${REGIONS})`,
    `tenants.team-a.regions[2]: "us-east-1" is not a supported region (${REGIONS})`,
  ],
  "invalid-empty-selector.yaml": [
    'tenants.team-a.instances: names no selector: give ids, tags and/or projects (or "*" for any instance)',
  ],
  "invalid-empty-lists.yaml": [
    "tenants.team-a.tokens_sha256: must not be empty",
    "tenants.team-a.regions: must not be empty",
    "tenants.team-a.instances.ids: must not be empty",
    "tenants.team-a.instances.tags: must not be empty",
    "tenants.team-a.instances.projects: must not be empty",
    "tenants.team-a.keys: must not be empty",
  ],
  "invalid-types.yaml": [
    "tenants.team-a.tokens_sha256: expected a list, got a string (not shown)",
    'tenants.team-a.regions: expected a list, got "ap-guangzhou"',
    'tenants.team-a.instances: must be "*" or a map with ids, tags and/or projects',
    'tenants.team-a.keys: must be "*" or a list of key pair ids',
    'tenants.team-a.force_stop: expected true or false, got "yes"',
    'tenants.team-a.max_instances_per_request: expected a number, got "10"',
    "tenants.team-a.weight: expected a number, got true",
  ],
  "invalid-ranges.yaml": [
    "tenants.team-a.instances.tags.owner: expected a string, got 42",
    "tenants.team-a.instances.projects[0]: -1 is not a project id (an integer ≥ 0)",
    "tenants.team-a.instances.projects[1]: expected an integer, got 1.5",
    `tenants.team-a.max_instances_per_request: ${ONE_TO_100}`,
    "tenants.team-a.weight: must be a number greater than 0",
    `tenants.team-b.max_instances_per_request: ${ONE_TO_100}`,
    "tenants.team-b.weight: must be a number greater than 0",
  ],
  "invalid-tenant-name.yaml": [
    'tenants["team a/../b"]: "team a/../b" is not a valid tenant name (letters, digits, ".", "_", "-"; at most 63)',
  ],
  "invalid-no-credentials.yaml": [
    "tenants.team-a: has no way to authenticate: give tokens_sha256 and/or identities",
  ],
  "invalid-identities.yaml": [
    'tenants.team-a.identities.spiffe[0]: "https://cluster.local/ns/a" is not a SPIFFE id (spiffe://trust-domain/path)',
    'tenants.team-a.identities.spiffe[1]: "spiffe://Cluster.Local/ns/a" is not a SPIFFE id (spiffe://trust-domain/path)',
    'tenants.team-a.identities.dns[0]: "*.team-a.internal" is not a DNS name (wildcards are not allowed)',
    "tenants.team-a.identities.uri: unknown field (known fields: spiffe, dns)",
    "tenants.team-b.identities: names no identity: give spiffe and/or dns",
  ],
  "invalid-duplicate-identity.yaml": [
    `tenants.team-b.identities.spiffe[0]: already listed at tenants.team-a.identities.spiffe[0] ${CLASH}`,
    `tenants.team-b.identities.dns[0]: already listed at tenants.team-a.identities.dns[0] ${CLASH}`,
  ],
};

describe("policy file validation", () => {
  for (const [name, errors] of Object.entries(invalid)) {
    it(`${name} is refused with every error listed`, async () => {
      const result = await loadPolicyFile(fixture(name));
      expect(result.ok).toBe(false);
      if (result.ok) return;
      expect(result.errors).toEqual(errors);
    });
  }

  it("never echoes what was written in tokens_sha256 (it may be a token pasted by mistake)", async () => {
    for (const name of ["invalid-token-hashes.yaml", "invalid-types.yaml"]) {
      const result = await loadPolicyFile(fixture(name));
      const text = result.ok ? "" : result.errors.join("\n");
      expect(text).not.toContain("my-secret-token");
      expect(text.toLowerCase()).not.toContain(A.slice(0, 40));
    }
  });

  it("reports an unreadable file instead of throwing", async () => {
    const result = await loadPolicyFile(fixture("does-not-exist.yaml"));
    expect(result).toMatchObject({ ok: false, errors: [expect.stringMatching(/cannot read .*ENOENT/)] });
  });
});

describe("a valid policy", () => {
  it("the demo fixture is exactly the policy `keygate dev` runs with", async () => {
    expect(await readFile(fixture("valid-demo.yaml"), "utf8")).toBe(DEMO_POLICY_YAML);
    const result = parsePolicy(DEMO_POLICY_YAML, "demo");
    expect(result.ok).toBe(true);
  });

  it("is indexed by token hash and identity, with defaults filled in", async () => {
    const result = await loadPolicyFile(fixture("valid-full.yaml"));
    if (!result.ok) throw new Error(result.errors.join("\n"));
    const { policy } = result;
    const a = policy.tenants.get("team-a");
    const b = policy.tenants.get("team-b");
    expect(policy.byTokenSha256.get(A)).toBe(a);
    expect(policy.bySpiffe.get("spiffe://cluster.local/ns/team-a/sa/deployer")).toBe(a);
    expect(policy.byDns.get("deployer.team-a.internal")).toBe(a);
    expect(policy.byDns.get("svc.team-b.internal")).toBe(b);
    expect(a?.weight).toBe(2.5);
    expect(a?.maxInstancesPerRequest).toBe(10);
    expect(a?.instances).not.toBe("*");
    expect(b).toMatchObject({
      forceStop: false,
      maxInstancesPerRequest: 100,
      weight: 1,
      instances: "*",
      keys: "*",
    });
    expect(b?.tokensSha256).toEqual([]);
    expect(policy.digest).toMatch(/^[0-9a-f]{64}$/);
    expect(policy.source).toBe(fixture("valid-full.yaml"));
  });

  it("is frozen all the way down", async () => {
    const result = await loadPolicyFile(fixture("valid-full.yaml"));
    if (!result.ok) throw new Error(result.errors.join("\n"));
    const { policy } = result;
    const a = policy.tenants.get("team-a")!;
    expect(Object.isFrozen(policy)).toBe(true);
    expect(Object.isFrozen(a)).toBe(true);
    expect(() => (policy.tenants as Map<string, unknown>).set("evil", a)).toThrow(TypeError);
    expect(() => (policy.byTokenSha256 as Map<string, unknown>).delete(A)).toThrow(TypeError);
    expect(() => (a.regions as Set<string>).add("ap-tokyo")).toThrow(TypeError);
    expect(() => (a.tokensSha256 as string[]).push("x")).toThrow(TypeError);
    const selectors = a.instances === "*" ? undefined : a.instances;
    expect(() => (selectors?.ids as Set<string>).add("ins-zzzzzzzz")).toThrow(TypeError);
    expect(() => {
      (selectors?.tags as Record<string, string>).owner = "x";
    }).toThrow(TypeError);
    expect(a.regions.has("ap-tokyo")).toBe(false);
  });
});

describe("keygate policy check", () => {
  it("exits 0 with a one-line summary for a valid file", async () => {
    const result = await checkPolicyFile(fixture("valid-demo.yaml"));
    expect(result.exitCode).toBe(0);
    expect(result.output).toMatch(/^.*valid-demo\.yaml: OK, 2 tenants \(demo, other\), sha256 [0-9a-f]{64}$/);
  });

  it("exits 1 and lists every error", async () => {
    const result = await checkPolicyFile(fixture("invalid-ranges.yaml"));
    expect(result.exitCode).toBe(1);
    const lines = result.output.split("\n");
    expect(lines[0]).toMatch(/invalid-ranges\.yaml: invalid, 7 errors:$/);
    expect(lines.slice(1)).toEqual(invalid["invalid-ranges.yaml"]!.map((e) => `  ${e}`));
  });
});

/** 60,000 tenants that are each wrong: seconds and hundreds of MB for the parser and the schema. */
const CRAFTED = `tenants:\n${Array.from({ length: 60_000 }, (_, i) => `  t${i}: 1\n`).join("")}`;

describe("parsing in a bounded worker", () => {
  it("gives the same policy, frozen, as parsing in this thread", async () => {
    const text = await readFile(fixture("valid-full.yaml"), "utf8");
    const here = parsePolicy(text, "x");
    const there = await parsePolicyIsolated(text, "x");
    if (!here.ok || !there.ok) throw new Error("valid-full.yaml should be valid");
    expect(there.digest).toBe(here.digest);
    expect([...there.policy.tenants.values()]).toEqual([...here.policy.tenants.values()]);
    expect(Object.isFrozen(there.policy.tenants.get("team-a"))).toBe(true);
    expect(() => (there.policy.tenants as Map<string, unknown>).delete("team-a")).toThrow(TypeError);
  });

  it("gives the same errors as parsing in this thread", async () => {
    for (const name of ["invalid-ranges.yaml", "invalid-token-hashes.yaml", "invalid-not-yaml.txt"]) {
      const result = await loadPolicyFileIsolated(fixture(name));
      expect(result).toMatchObject({ ok: false, errors: invalid[name] });
    }
  });

  it("refuses a file whose parse needs more memory than allowed, and this process carries on", async () => {
    const result = await validateIsolated(CRAFTED, { memoryMb: 16, timeoutMs: 120_000 });
    expect(result).toEqual({
      ok: false,
      errors: ["(file): policy file too complex: parsing exceeded 16 MB"],
    });
    expect((await validateIsolated(DEMO_POLICY_YAML)).ok).toBe(true);
  });

  it("refuses a file whose parse takes longer than allowed", async () => {
    const result = await validateIsolated(CRAFTED, { timeoutMs: 50 });
    expect(result).toEqual({
      ok: false,
      errors: ["(file): policy file too complex: parsing exceeded 0.05 s"],
    });
  });

  it("is cancelled at once by its signal", async () => {
    const stop = new AbortController();
    const parsing = validateIsolated(CRAFTED, { signal: stop.signal });
    await new Promise((r) => setTimeout(r, 200));
    const asked = Date.now();
    stop.abort();
    expect(await parsing).toEqual({ ok: false, errors: ["(file): parsing was cancelled"] });
    expect(Date.now() - asked).toBeLessThan(1_000);
  });
});
