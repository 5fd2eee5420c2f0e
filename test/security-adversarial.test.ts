/**
 * G4 against a hostile caller: every request outside its tenant's policy, malformed, or without
 * a valid credential is refused before the cloud sees anything (zero AssociateInstancesKeyPairs
 * arrivals at the emulator and no limiter token spent), with the right code and reason, and a
 * refusal never names another tenant or anything the caller did not send itself.
 *
 * The gateway reads a real policy file (KEYGATE_POLICY_FILE) laid out like a mounted Kubernetes
 * ConfigMap, so the last test can remove a tenant with the kubelet's `..data` symlink swap.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { startEmulator, startGateway, type TestGateway } from "./support/app.js";
import { ConfigMapVolume } from "./support/configmap-volume.js";
import { sha256 } from "./support/policies.js";
import { pollValue } from "./support/wait.js";

const TOKEN_A = "adv-token-team-a-7f3c9e21";
const TOKEN_B = "adv-token-team-b-51d0aa94";
const TOKEN_C = "adv-token-team-c-c4e8b310";

/**
 * Three tenants over the emulator's default inventory:
 * - team-a: its tag `owner: team-a` plus ins-gz000008 by id; two regions; one key; at most 3 ids.
 * - team-b: project 1002 (the team-b instances); any key; may force-stop; ap-guangzhou only.
 * - team-c: ins-gz000007 by id; removed by a reload in the last test.
 */
function policyYaml(withTeamC: boolean): string {
  return `
tenants:
  team-a:
    tokens_sha256: ["${sha256(TOKEN_A)}"]
    regions: [ap-guangzhou, ap-shanghai]
    instances:
      ids: [ins-gz000008]
      tags: { owner: team-a }
    keys: [skey-aaaaaaaa]
    force_stop: false
    max_instances_per_request: 3
  team-b:
    tokens_sha256: ["${sha256(TOKEN_B)}"]
    regions: [ap-guangzhou]
    instances:
      projects: [1002]
    keys: "*"
    force_stop: true
${
  withTeamC
    ? `  team-c:
    tokens_sha256: ["${sha256(TOKEN_C)}"]
    regions: [ap-guangzhou]
    instances:
      ids: [ins-gz000007]
    keys: "*"
    force_stop: true
`
    : ""
}`;
}

let emulator: Emulator;
let gw: TestGateway;
let tmp: string;
let volume: ConfigMapVolume;

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "keygate-adversarial-"));
  volume = new ConfigMapVolume(tmp);
  volume.publish(policyYaml(true));
  emulator = await startEmulator(100);
  gw = await startGateway({ emulator, env: { KEYGATE_POLICY_FILE: volume.path } });
});
afterAll(async () => {
  await gw?.stop();
  await emulator?.close();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** Reads one sample from the app's /metrics; 0 when the series does not exist yet. */
async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(gw.metricsUrl)).text();
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-z_]+)(?:\{(.*)\})? ([0-9.e+-]+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = (m[2] ?? "").split(",");
    if (want.every((w) => have.includes(w))) return Number(m[3]);
  }
  return 0;
}

let mark = 0;
let tokensBefore = 0;
beforeEach(async () => {
  mark = emulator.stats.arrivals.length;
  tokensBefore = await metric("keygate_limiter_tokens_granted_total", {
    action: "AssociateInstancesKeyPairs",
  });
});
/** AssociateInstancesKeyPairs calls that reached the cloud since the test began. */
const associateArrivals = () =>
  emulator.stats.arrivals.slice(mark).filter((a) => a.action === "AssociateInstancesKeyPairs");

async function expectNothingUpstream(): Promise<void> {
  expect(associateArrivals()).toEqual([]);
  expect(await metric("keygate_limiter_tokens_granted_total", { action: "AssociateInstancesKeyPairs" })).toBe(
    tokensBefore,
  );
}

const client = (http: "1.1" | "grpc" = "1.1") =>
  createClient(
    KeyPairService,
    http === "grpc"
      ? createGrpcTransport({ baseUrl: gw.url })
      : createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }),
  );

interface Req {
  region: string;
  instanceIds: string[];
  keyIds: string[];
  forceStop?: boolean;
}
let seq = 0;

/** Sends `req` with the given headers; returns the refusal (fails the test if it was allowed) and its audit line. */
async function refused(req: Req, headers: Record<string, string>, http: "1.1" | "grpc" = "1.1") {
  seq += 1;
  const requestId = `adv-${seq}-${Date.now()}`;
  const result = await client(http)
    .associateKeyPairs(req, { headers: { ...headers, "x-request-id": requestId }, timeoutMs: 10_000 })
    .then(
      (ok) => ({ ok }),
      (e: unknown) => ({ err: ConnectError.from(e) }),
    );
  if (!("err" in result)) throw new Error(`allowed: ${JSON.stringify(req)}`);
  const err = result.err;
  const detail = err.findDetails(ErrorDetailSchema)[0];
  const audits = await pollValue(
    `the audit line of ${requestId}`,
    () => Promise.resolve(gw.logs.audits().filter((a) => a.requestId === requestId)),
    (a) => a.length > 0,
  );
  expect(audits).toHaveLength(1);
  return { err, reason: detail?.reason, audit: audits[0] ?? {} };
}

const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

/** Everything the policy knows that a refusal must never reveal to `caller` unless the caller sent it. */
const TENANTS = ["team-a", "team-b", "team-c"];
const POLICY_IDS = ["ins-gz000008", "ins-gz000007", "skey-aaaaaaaa"];

/** The message names only the caller's own ids and no tenant, tag value or project. */
function expectNothingForeign(message: string, req: Req): void {
  for (const tenant of TENANTS) expect(message).not.toContain(tenant);
  for (const v of ["owner", "1001", "1002", "sha256", TOKEN_A, TOKEN_B, TOKEN_C]) {
    expect(message).not.toContain(v);
  }
  // What the caller sent, including malformed values (echoed with control characters masked).
  const sent = [...req.instanceIds, ...req.keyIds, req.region];
  const isOwn = (id: string) => sent.some((v) => v.toLowerCase().includes(id.toLowerCase()));
  for (const id of POLICY_IDS) if (!isOwn(id)) expect(message).not.toContain(id);
  const PLACEHOLDERS = ["ins-xxxxxxxx", "skey-xxxxxxxx"];
  for (const id of message.match(/\b(?:ins|skey)-[A-Za-z0-9]{8}\b/gi) ?? []) {
    if (!PLACEHOLDERS.includes(id)) expect(isOwn(id), `${id} in "${message}"`).toBe(true);
  }
}

async function expectPolicyDenied(
  req: Req,
  token: string,
  rule: string,
  messageShape: RegExp,
  offending: string[],
): Promise<void> {
  const { err, reason, audit } = await refused(req, bearer(token));
  expect(err.code).toBe(Code.PermissionDenied);
  expect(reason).toBe("POLICY_DENIED");
  expect(err.rawMessage).toMatch(messageShape);
  // The message names the rule (README, Tenant policy).
  expect(err.rawMessage.endsWith(`(policy rule: ${rule})`)).toBe(true);
  for (const id of offending) expect(err.rawMessage).toContain(id);
  expectNothingForeign(err.rawMessage, req);
  expect(audit).toMatchObject({ decision: "denied", rule, reason: "POLICY_DENIED" });
  await expectNothingUpstream();
}

describe("outside the tenant's policy → PERMISSION_DENIED, nothing upstream", () => {
  it("another tenant's instance, listed there by id", async () => {
    // ins-gz000008 belongs to team-a by id; team-b selects project 1002 and it is in project 0.
    const req = { region: "ap-guangzhou", instanceIds: ["ins-gz000008"], keyIds: ["skey-cccccccc"] };
    await expectPolicyDenied(req, TOKEN_B, "instances", /^instances not allowed/, ["ins-gz000008"]);
  });

  it("another tenant's instance, selected there by tag", async () => {
    // ins-gz000001 carries owner: team-a (project 1001): not team-b's.
    const req = { region: "ap-guangzhou", instanceIds: ["ins-gz000001"], keyIds: ["skey-cccccccc"] };
    await expectPolicyDenied(req, TOKEN_B, "instances", /^instances not allowed/, ["ins-gz000001"]);
  });

  it("another tenant's instance, selected there by project", async () => {
    // ins-gz000003 is in project 1002 with owner: team-b: not team-a's.
    const req = { region: "ap-guangzhou", instanceIds: ["ins-gz000003"], keyIds: ["skey-aaaaaaaa"] };
    await expectPolicyDenied(req, TOKEN_A, "instances", /^instances not allowed/, ["ins-gz000003"]);
  });

  it("an instance the cloud does not know gets the very same answer as a foreign one", async () => {
    const unknown = { region: "ap-guangzhou", instanceIds: ["ins-zz999999"], keyIds: ["skey-aaaaaaaa"] };
    const foreign = { region: "ap-guangzhou", instanceIds: ["ins-gz000003"], keyIds: ["skey-aaaaaaaa"] };
    const a = await refused(unknown, bearer(TOKEN_A));
    const b = await refused(foreign, bearer(TOKEN_A));
    expect(a.err.code).toBe(b.err.code);
    expect(a.err.rawMessage.replace("ins-zz999999", "X")).toBe(b.err.rawMessage.replace("ins-gz000003", "X"));
    await expectNothingUpstream();
  });

  it("own and foreign ids mixed: refused as a whole, naming only the foreign ones", async () => {
    const req = {
      region: "ap-guangzhou",
      instanceIds: ["ins-gz000001", "ins-gz000003", "ins-gz000008"],
      keyIds: ["skey-aaaaaaaa"],
    };
    const { err } = await refused(req, bearer(TOKEN_A));
    expect(err.rawMessage).toBe(
      "instances not allowed for this tenant: ins-gz000003 (policy rule: instances)",
    );
    await expectPolicyDenied(req, TOKEN_A, "instances", /ins-gz000003 \(policy rule: instances\)$/, [
      "ins-gz000003",
    ]);
  });

  it("a key pair outside the tenant's list", async () => {
    const req = {
      region: "ap-guangzhou",
      instanceIds: ["ins-gz000001"],
      keyIds: ["skey-aaaaaaaa", "skey-bbbbbbbb"],
    };
    await expectPolicyDenied(
      req,
      TOKEN_A,
      "keys",
      /^key pairs not allowed.*skey-bbbbbbbb \(policy rule: keys\)$/,
      ["skey-bbbbbbbb"],
    );
  });

  it("a region the tenant may not use", async () => {
    const req = { region: "ap-shanghai", instanceIds: ["ins-sh000002"], keyIds: ["skey-cccccccc"] };
    await expectPolicyDenied(req, TOKEN_B, "regions", /^region ap-shanghai is not allowed/, []);
  });

  it("force_stop for a tenant that may not force-stop", async () => {
    const req = {
      region: "ap-guangzhou",
      instanceIds: ["ins-gz000004"],
      keyIds: ["skey-aaaaaaaa"],
      forceStop: true,
    };
    await expectPolicyDenied(req, TOKEN_A, "force_stop", /^force_stop is not allowed/, []);
  });

  it("more instances than max_instances_per_request (own instances only)", async () => {
    const req = {
      region: "ap-guangzhou",
      instanceIds: ["ins-gz000001", "ins-gz000002", "ins-gz000005", "ins-gz000008"],
      keyIds: ["skey-aaaaaaaa"],
    };
    await expectPolicyDenied(req, TOKEN_A, "max_instances_per_request", /4 instances .* at most 3/, []);
  });

  it("another tenant's token used on the first tenant's instances", async () => {
    const req = {
      region: "ap-guangzhou",
      instanceIds: ["ins-gz000001", "ins-gz000002"],
      keyIds: ["skey-aaaaaaaa"],
    };
    await expectPolicyDenied(req, TOKEN_B, "instances", /^instances not allowed/, [
      "ins-gz000001",
      "ins-gz000002",
    ]);
  });

  it("the same refusals over gRPC", async () => {
    const req = { region: "ap-guangzhou", instanceIds: ["ins-gz000003"], keyIds: ["skey-aaaaaaaa"] };
    const { err, reason } = await refused(req, bearer(TOKEN_A), "grpc");
    expect(err.code).toBe(Code.PermissionDenied);
    expect(reason).toBe("POLICY_DENIED");
    expectNothingForeign(err.rawMessage, req);
    await expectNothingUpstream();
  });
});

describe("malformed → INVALID_ARGUMENT with the cloud's code, nothing upstream", () => {
  const own = (instanceIds: string[], keyIds = ["skey-aaaaaaaa"]) => ({
    region: "ap-guangzhou",
    instanceIds,
    keyIds,
  });
  it.each([
    ["upper-case instance id", own(["INS-GZ000001"]), "InvalidInstanceId.Malformed"],
    ["mixed-case instance id", own(["ins-GZ000001"]), "InvalidInstanceId.Malformed"],
    ["instance id with a leading space", own([" ins-gz000001"]), "InvalidInstanceId.Malformed"],
    ["instance id with a trailing space", own(["ins-gz000001 "]), "InvalidInstanceId.Malformed"],
    ["instance id with a trailing newline", own(["ins-gz000001\n"]), "InvalidInstanceId.Malformed"],
    ["upper-case key id", own(["ins-gz000001"], ["SKEY-AAAAAAAA"]), "InvalidKeyPairId.Malformed"],
    ["padded key id", own(["ins-gz000001"], ["\tskey-aaaaaaaa"]), "InvalidKeyPairId.Malformed"],
    ["duplicated instance id", own(["ins-gz000001", "ins-gz000001"]), "InvalidParameterValue"],
    ["duplicated key id", own(["ins-gz000001"], ["skey-aaaaaaaa", "skey-aaaaaaaa"]), "InvalidParameterValue"],
    [
      "more than 100 instance ids",
      own(Array.from({ length: 101 }, (_, i) => `ins-a${String(i).padStart(7, "0")}`)),
      "InvalidParameterValue.LimitExceeded",
    ],
  ])("%s", async (_name, req, code) => {
    const { err, reason, audit } = await refused(req, bearer(TOKEN_A));
    expect(err.code).toBe(Code.InvalidArgument);
    expect(reason).toBe(code);
    expectNothingForeign(err.rawMessage, req);
    expect(audit).toMatchObject({ tenant: "team-a", decision: "denied", reason: code });
    await expectNothingUpstream();
  });

  it("a malformed id is never normalised into an allowed one", async () => {
    // If keygate trimmed or lower-cased, these would be team-a's own instances.
    for (const id of ["INS-GZ000001", " ins-gz000002", "ins-gz000008\u0000"]) {
      const { err } = await refused(own([id]), bearer(TOKEN_A));
      expect(err.code).toBe(Code.InvalidArgument);
      expect(err.rawMessage).not.toContain("\u0000");
    }
    await expectNothingUpstream();
  });
});

describe("no valid credential → UNAUTHENTICATED, nothing upstream", () => {
  // An allowed request for team-a: only the credential is wrong.
  const req = { region: "ap-guangzhou", instanceIds: ["ins-gz000001"], keyIds: ["skey-aaaaaaaa"] };

  it.each([
    ["no authorization header", {}],
    ["an empty authorization header", { authorization: "" }],
    ["`Bearer ` with nothing", { authorization: "Bearer " }],
    ["`Bearer` alone", { authorization: "Bearer" }],
    [
      "another scheme (Basic)",
      { authorization: `Basic ${Buffer.from(`team-a:${TOKEN_A}`).toString("base64")}` },
    ],
    ["the token without a scheme", { authorization: TOKEN_A }],
    ["the token's sha256 instead of the token", { authorization: `Bearer ${sha256(TOKEN_A)}` }],
    ["the token with a suffix", { authorization: `Bearer ${TOKEN_A}x` }],
    ["a prefix of the token", { authorization: `Bearer ${TOKEN_A.slice(0, -1)}` }],
    ["two tokens", { authorization: `Bearer ${TOKEN_B} ${TOKEN_A}` }],
    ["an over-long token", { authorization: `Bearer ${"a".repeat(5000)}` }],
  ])("%s", async (_name, headers: Record<string, string>) => {
    for (const http of ["1.1", "grpc"] as const) {
      const { err, reason, audit } = await refused(req, headers, http);
      expect(err.code).toBe(Code.Unauthenticated);
      expect(reason).toBe("UNAUTHENTICATED");
      expect(audit).toMatchObject({ tenant: null, decision: "denied", rule: "authentication" });
      expect(err.rawMessage).not.toContain(TOKEN_A);
    }
    await expectNothingUpstream();
  });

  it("two authorization headers (a valid token and another) are not picked from", async () => {
    for (const order of [
      [TOKEN_A, "someone-elses-guess"],
      ["someone-elses-guess", TOKEN_A],
    ]) {
      const headers = new Headers();
      for (const t of order) headers.append("authorization", `Bearer ${t}`);
      const err = await client()
        .associateKeyPairs(req, { headers, timeoutMs: 10_000 })
        .then(
          () => undefined,
          (e: unknown) => ConnectError.from(e),
        );
      expect(err?.code).toBe(Code.Unauthenticated);
    }
    await expectNothingUpstream();
  });

  it("an unauthenticated caller learns nothing from a malformed request either", async () => {
    const { err, reason } = await refused(
      { region: "ap-guangzhou", instanceIds: ["INS-GZ000001"], keyIds: ["skey-aaaaaaaa"] },
      { authorization: "Bearer nobody-knows-this-token" },
    );
    expect(err.code).toBe(Code.Unauthenticated);
    expect(reason).toBe("UNAUTHENTICATED");
    await expectNothingUpstream();
  });
});

describe("a tenant removed by a policy reload", () => {
  it("loses access as soon as the new ConfigMap version is in force", async () => {
    const req = { region: "ap-guangzhou", instanceIds: ["ins-gz000007"], keyIds: ["skey-cccccccc"] };
    // Control: team-c's token works before the reload (team-c's instance is STOPPING, so the
    // cloud itself refuses, and keygate waits that state out until the deadline, resending; what
    // matters is that keygate let it through to the cloud).
    const before = await client()
      .associateKeyPairs(req, { headers: bearer(TOKEN_C), timeoutMs: 2_000 })
      .then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
    expect(before?.findDetails(ErrorDetailSchema)[0]?.reason).not.toBe("UNAUTHENTICATED");
    expect(before?.findDetails(ErrorDetailSchema)[0]?.reason).not.toBe("POLICY_DENIED");
    expect(associateArrivals().length).toBeGreaterThan(0);
    expect(associateArrivals().every((x) => x.outcome === "UnsupportedOperation.InstanceStateStopping")).toBe(
      true,
    );

    const reloadsBefore = await metric("keygate_policy_reloads_total", { result: "ok" });
    volume.publish(policyYaml(false));
    await pollValue(
      "the reload to be counted",
      () => metric("keygate_policy_reloads_total", { result: "ok" }),
      (n) => n === reloadsBefore + 1,
    );

    mark = emulator.stats.arrivals.length;
    tokensBefore = await metric("keygate_limiter_tokens_granted_total", {
      action: "AssociateInstancesKeyPairs",
    });
    for (const http of ["1.1", "grpc"] as const) {
      const { err, reason, audit } = await refused(req, bearer(TOKEN_C), http);
      expect(err.code).toBe(Code.Unauthenticated);
      expect(reason).toBe("UNAUTHENTICATED");
      expect(audit).toMatchObject({ tenant: null, rule: "authentication" });
    }
    await expectNothingUpstream();
    // The other tenants are untouched by the reload.
    const still = await refused(
      { region: "ap-guangzhou", instanceIds: ["ins-gz000003"], keyIds: ["skey-aaaaaaaa"] },
      bearer(TOKEN_A),
    );
    expect(still.reason).toBe("POLICY_DENIED");
    expect(still.err.rawMessage).not.toContain("team-c");
  });
});
