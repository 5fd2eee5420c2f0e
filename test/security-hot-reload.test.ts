/**
 * Policy hot reload through a running gateway reading a real file (KEYGATE_POLICY_FILE): a new
 * version takes effect within seconds, whether it is written in place or published the way the
 * kubelet updates a mounted ConfigMap (`..data` symlink swap). A bad version is refused: the last
 * good one stays in force, `keygate_policy_reloads_total{result="rejected"}` counts it, the log
 * says why (without echoing a pasted token), and health stays SERVING.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus } from "../src/gen/health/v1/health_pb.js";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { startEmulator, startGateway, type TestGateway } from "./support/app.js";
import { ConfigMapVolume } from "./support/configmap-volume.js";
import { sha256 } from "./support/policies.js";
import { pollValue } from "./support/wait.js";

const TOKEN_A = "reload-token-team-a-0b6f1d";
const TOKEN_NEW = "reload-token-team-new-93ac2e";
/** What an operator might paste into tokens_sha256 by mistake: it must never be logged. */
const PASTED_TOKEN = "pasted-plaintext-token-e1d4c7a9b2";

interface PolicyOpts {
  regions?: string[];
  keys?: string[];
  withNewTenant?: boolean;
}
function policy(o: PolicyOpts = {}): string {
  const regions = o.regions ?? ["ap-guangzhou"];
  const keys = o.keys ?? ["skey-aaaaaaaa"];
  return `
tenants:
  team-a:
    tokens_sha256: ["${sha256(TOKEN_A)}"]
    regions: [${regions.join(", ")}]
    instances:
      tags: { owner: team-a }
    keys: [${keys.join(", ")}]
${
  o.withNewTenant
    ? `  team-new:
    tokens_sha256: ["${sha256(TOKEN_NEW)}"]
    regions: [ap-guangzhou]
    instances:
      projects: [1002]
    keys: "*"
`
    : ""
}`;
}

async function metric(gw: TestGateway, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(gw.metricsUrl)).text();
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split("\n")) {
    const m = /^([a-z_]+)(?:\{(.*)\})? ([0-9.e+-]+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = (m[2] ?? "").split(",");
    if (want.every((w) => have.includes(w))) return Number(m[3]);
  }
  return 0;
}

/** The reason a call got ("OK" when allowed). */
async function reasonOf(
  gw: TestGateway,
  token: string,
  req: { region: string; instanceIds: string[]; keyIds: string[] },
): Promise<string> {
  const client = createClient(
    KeyPairService,
    createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }),
  );
  try {
    await client.associateKeyPairs(req, { headers: { authorization: `Bearer ${token}` }, timeoutMs: 10_000 });
    return "OK";
  } catch (e) {
    const err = ConnectError.from(e);
    return err.findDetails(ErrorDetailSchema)[0]?.reason ?? Code[err.code];
  }
}

async function expectServing(gw: TestGateway): Promise<void> {
  const health = createClient(Health, createGrpcTransport({ baseUrl: gw.url }));
  expect((await health.check({ service: "" })).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
  expect((await health.check({ service: "keygate.v1.KeyPairService" })).status).toBe(
    HealthCheckResponse_ServingStatus.SERVING,
  );
}

const reloads = (gw: TestGateway, result: "ok" | "rejected") =>
  metric(gw, "keygate_policy_reloads_total", { result });

let emulator: Emulator;
let tmp: string;
beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "keygate-reload-"));
  emulator = await startEmulator(100);
});
afterAll(async () => {
  await emulator?.close();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

describe("a file written in place", () => {
  let gw: TestGateway;
  let file: string;
  beforeAll(async () => {
    mkdirSync(join(tmp, "inplace"));
    file = join(tmp, "inplace", "policy.yaml");
    writeFileSync(file, policy());
    gw = await startGateway({ emulator, env: { KEYGATE_POLICY_FILE: file } });
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it("takes effect within seconds", async () => {
    const shanghai = { region: "ap-shanghai", instanceIds: ["ins-sh000001"], keyIds: ["skey-aaaaaaaa"] };
    expect(await reasonOf(gw, TOKEN_A, shanghai)).toBe("POLICY_DENIED");

    const started = Date.now();
    writeFileSync(file, policy({ regions: ["ap-guangzhou", "ap-shanghai"] }));
    // Each probe before the reload is refused by the policy and costs the cloud nothing.
    await pollValue(
      "ap-shanghai to be allowed",
      () => reasonOf(gw, TOKEN_A, shanghai),
      (r) => r === "OK",
    );
    expect(Date.now() - started).toBeLessThan(20_000);
    expect(await reloads(gw, "ok")).toBeGreaterThanOrEqual(1);
    expect(
      gw.logs.json().some((l) => l.msg === "policy loaded" && String(l.policy).endsWith("policy.yaml")),
    ).toBe(true);
  });

  it("refuses a bad version written in place and keeps the last good one", async () => {
    const rejectedBefore = await reloads(gw, "rejected");
    const okBefore = await reloads(gw, "ok");
    // A typo that would silently drop a restriction if it were ignored.
    writeFileSync(file, policy({ regions: ["ap-guangzhou", "ap-shanghai"] }).replace("keys:", "key:"));
    // ">=": an in-place write truncates first, so a read may also catch (and refuse) an empty file.
    await pollValue(
      "the rejection to be counted",
      () => reloads(gw, "rejected"),
      (n) => n >= rejectedBefore + 1,
    );
    expect(await reloads(gw, "ok")).toBe(okBefore);
    const shanghai = { region: "ap-shanghai", instanceIds: ["ins-sh000001"], keyIds: ["skey-bbbbbbbb"] };
    expect(await reasonOf(gw, TOKEN_A, shanghai)).toBe("POLICY_DENIED"); // keys rule still in force
    await expectServing(gw);
  });
});

describe("a ConfigMap updated with the kubelet's ..data symlink swap", () => {
  let gw: TestGateway;
  let volume: ConfigMapVolume;
  beforeAll(async () => {
    mkdirSync(join(tmp, "configmap"));
    volume = new ConfigMapVolume(join(tmp, "configmap"));
    volume.publish(policy());
    gw = await startGateway({ emulator, env: { KEYGATE_POLICY_FILE: volume.path } });
  });
  afterAll(async () => {
    await gw?.stop();
  });

  const forNew = { region: "ap-guangzhou", instanceIds: ["ins-gz000003"], keyIds: ["skey-cccccccc"] };
  const forA = { region: "ap-guangzhou", instanceIds: ["ins-gz000001"], keyIds: ["skey-bbbbbbbb"] };

  it("takes effect within seconds", async () => {
    expect(await reasonOf(gw, TOKEN_NEW, forNew)).toBe("UNAUTHENTICATED");
    const okBefore = await reloads(gw, "ok");
    volume.publish(policy({ withNewTenant: true }));
    await pollValue(
      "team-new to be let in",
      () => reasonOf(gw, TOKEN_NEW, forNew),
      (r) => r === "OK",
    );
    expect(await reloads(gw, "ok")).toBe(okBefore + 1);
    await expectServing(gw);
  });

  it("refuses a bad version, keeps the last good one, counts it, and stays SERVING", async () => {
    const rejectedBefore = await reloads(gw, "rejected");
    const okBefore = await reloads(gw, "ok");
    const good = policy({ withNewTenant: true });
    // Several errors at once: an unknown field, a bad id, and a token pasted instead of its hash.
    const bad = good
      .replace(`tokens_sha256: ["${sha256(TOKEN_NEW)}"]`, `tokens_sha256: ["${PASTED_TOKEN}"]`)
      .replace("keys: [skey-aaaaaaaa]", "keys: [skey-aaaaaaaa, SKEY-BAD]\n    force-stop: true");
    volume.publish(bad);

    await pollValue(
      "the rejection to be counted",
      () => reloads(gw, "rejected"),
      (n) => n === rejectedBefore + 1,
    );
    const line = await pollValue(
      "the rejection's log line",
      () => Promise.resolve(gw.logs.json().find((l) => l.level === "error" && Array.isArray(l.errors))),
      (l) => l !== undefined,
    );
    const errors = (line?.errors ?? []) as string[];
    expect(errors.some((e) => e.includes("force-stop"))).toBe(true);
    expect(errors.some((e) => e.includes("SKEY-BAD"))).toBe(true);
    expect(errors.some((e) => e.includes("tokens_sha256"))).toBe(true);
    expect(gw.logs.lines.filter((l) => l.includes(PASTED_TOKEN))).toEqual([]);

    // The last good version is still in force, on every path through the policy.
    expect(await reasonOf(gw, TOKEN_NEW, forNew)).not.toBe("UNAUTHENTICATED");
    expect(await reasonOf(gw, TOKEN_A, forA)).toBe("POLICY_DENIED");
    expect(await reloads(gw, "ok")).toBe(okBefore);
    await expectServing(gw);

    // The same bad version seen again by the poll is not counted twice.
    await new Promise((r) => setTimeout(r, 2_500));
    expect(await reloads(gw, "rejected")).toBe(rejectedBefore + 1);
    await expectServing(gw);
  });

  it("takes the next good version after a bad one", async () => {
    const okBefore = await reloads(gw, "ok");
    volume.publish(policy({ withNewTenant: true, keys: ["skey-aaaaaaaa", "skey-bbbbbbbb"] }));
    await pollValue(
      "skey-bbbbbbbb to be allowed",
      () => reasonOf(gw, TOKEN_A, forA),
      (r) => r === "OK",
    );
    expect(await reloads(gw, "ok")).toBe(okBefore + 1);
    await expectServing(gw);
  });

  it("keeps the last good version when the file disappears", async () => {
    const rejectedBefore = await reloads(gw, "rejected");
    rmSync(volume.path);
    await pollValue(
      "the missing file to be counted",
      () => reloads(gw, "rejected"),
      (n) => n === rejectedBefore + 1,
    );
    expect(await reasonOf(gw, TOKEN_NEW, forNew)).not.toBe("UNAUTHENTICATED");
    await expectServing(gw);
  });
});
