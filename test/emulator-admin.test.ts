import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { isKeygateError } from "../src/core/errors.js";
import {
  createEmulator,
  EMULATOR_SECRET_ID,
  EMULATOR_SECRET_KEY,
  type Arrival,
  type Emulator,
} from "../src/upstream/emulator/index.js";
import { createTencentUpstream, type TencentUpstream } from "../src/upstream/tencent-upstream.js";

const opts = () => ({ signal: new AbortController().signal });
const input = {
  region: "ap-guangzhou",
  instanceIds: ["ins-gz000001"],
  keyIds: ["skey-aaaaaaaa"],
  forceStop: false,
};

async function admin(emu: Emulator, method: "GET" | "POST", path: string, body?: unknown) {
  const res = await fetch(`${emu.url}/__emulator/${path}`, {
    method,
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

describe("emulator admin HTTP and DescribeInstances", () => {
  let emu: Emulator;
  let up: TencentUpstream;
  beforeAll(async () => {
    emu = await createEmulator({ taskMs: 60_000 });
    up = createTencentUpstream({
      upstreamUrl: emu.url,
      credential: { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY },
      reqTimeoutMs: 2000,
    });
  });
  afterEach(async () => {
    await admin(emu, "POST", "reset");
  });
  afterAll(async () => {
    up.close();
    await emu.close();
  });

  const outcome = async (p: Promise<unknown>) => {
    try {
      await p;
      return "OK";
    } catch (e) {
      if (!isKeygateError(e)) throw e;
      return e.upstreamCode ?? e.reason;
    }
  };

  it("injects the next N faults over HTTP, then behaves again", async () => {
    const set = await admin(emu, "POST", "faults", {
      rules: [
        { kind: "http500", next: 1, action: "AssociateInstancesKeyPairs" },
        { kind: "internalError", next: 1 },
      ],
    });
    expect(set.status).toBe(200);
    expect(await outcome(up.associateInstancesKeyPairs(input, opts()))).toBe("UPSTREAM_UNAVAILABLE");
    expect(await outcome(up.associateInstancesKeyPairs(input, opts()))).toBe("InternalError");
    expect(await outcome(up.associateInstancesKeyPairs(input, opts()))).toBe("OK");
    const stats = await admin(emu, "GET", "stats");
    expect((stats.json.arrivals as Arrival[]).map((a) => a.outcome)).toEqual([
      "HTTP500",
      "InternalError",
      "OK",
    ]);
    expect(stats.json.maxInWindow).toMatchObject({ AssociateInstancesKeyPairs: 3 });
  });

  it.each([
    ["http503", "UPSTREAM_UNAVAILABLE"],
    ["nonJson", "UPSTREAM_BAD_RESPONSE"],
    ["noResponse", "UPSTREAM_BAD_RESPONSE"],
    ["requestLimitExceeded", "RequestLimitExceeded"],
    ["mutexTaskRunning", "MutexOperation.TaskRunning"],
    ["operationInProgress", "OperationDenied.InstanceOperationInProgress"],
  ])("fault %s → %s", async (kind, expected) => {
    emu.faults.set({ rules: [{ kind: kind as "http503", next: 1 }] });
    expect(await outcome(up.associateInstancesKeyPairs(input, opts()))).toBe(expected);
  });

  it("probability 0 never fires, probability 1 always does", async () => {
    emu.faults.set({ rules: [{ kind: "internalError", probability: 0 }] });
    expect(await outcome(up.describeInstances("ap-guangzhou", ["ins-gz000001"], opts()))).toBe("OK");
    emu.faults.set({ rules: [{ kind: "internalError", probability: 1 }] });
    expect(await outcome(up.describeInstances("ap-guangzhou", ["ins-gz000001"], opts()))).toBe(
      "InternalError",
    );
  });

  it("adds latency", async () => {
    await admin(emu, "POST", "faults", { latencyMs: 150 });
    const started = performance.now();
    await up.describeInstances("ap-guangzhou", ["ins-gz000001"], opts());
    expect(performance.now() - started).toBeGreaterThanOrEqual(140);
  });

  it("refuses an invalid fault setting with every problem", async () => {
    const res = await admin(emu, "POST", "faults", { rules: [{ kind: "explode" }], latencyMs: -1 });
    expect(res.status).toBe(400);
    expect(String(res.json.error)).toMatch(/rules\.0\.kind/);
    expect(String(res.json.error)).toMatch(/latencyMs/);
  });

  it("marks an instance busy over HTTP", async () => {
    expect((await admin(emu, "POST", "busy", { instanceIds: ["ins-gz000002"], ms: 60_000 })).status).toBe(
      200,
    );
    const { instances } = await up.describeInstances("ap-guangzhou", ["ins-gz000002"], opts());
    expect(instances[0]?.latestOperationState).toBe("OPERATING");
    expect(
      await outcome(up.associateInstancesKeyPairs({ ...input, instanceIds: ["ins-gz000002"] }, opts())),
    ).toBe("MutexOperation.TaskRunning");
  });

  it("reset restores inventory, stats and faults", async () => {
    await up.associateInstancesKeyPairs(input, opts());
    emu.faults.set({ rules: [{ kind: "internalError" }] });
    await admin(emu, "POST", "reset");
    expect(emu.stats.arrivals).toHaveLength(0);
    const { instances } = await up.describeInstances("ap-guangzhou", ["ins-gz000001"], opts());
    expect(instances[0]?.latestOperationState).toBeNull();
  });

  it("describes by ids (unknown ids absent) and by pages", async () => {
    const byIds = await up.describeInstances(
      "ap-guangzhou",
      ["ins-gz000002", "ins-zzzzzzzz", "ins-sh000001"],
      opts(),
    );
    expect(byIds.instances.map((i) => i.instanceId)).toEqual(["ins-gz000002"]);
    expect(byIds.instances[0]).toMatchObject({
      instanceState: "STOPPED",
      projectId: 1001,
      tags: { owner: "team-a", env: "prod" },
      osName: expect.stringMatching(/Ubuntu/) as unknown,
    });
    expect(await outcome(up.describeInstances("ap-guangzhou", ["ins-12"], opts()))).toBe(
      "InvalidInstanceId.Malformed",
    );
  });

  it("GET /__emulator/instances lists every instance", async () => {
    const res = await fetch(`${emu.url}/__emulator/instances`);
    const all = (await res.json()) as { instanceId: string }[];
    expect(all.length).toBeGreaterThanOrEqual(12);
  });
});

describe("emulator inventory file", () => {
  it("loads YAML and lists every problem of a bad file", async () => {
    const dir = mkdtempSync(join(tmpdir(), "keygate-emu-"));
    try {
      const good = join(dir, "inv.yaml");
      writeFileSync(
        good,
        [
          "instances:",
          "  - { instanceId: ins-abcdefgh, region: ap-tokyo, zone: ap-tokyo-1, projectId: 7, osName: Debian, instanceState: STOPPED, tags: { team: x } }",
          "keyPairs:",
          "  - { keyId: skey-abcdefgh }",
        ].join("\n"),
      );
      const emu = await createEmulator({ inventoryFile: good });
      const up = createTencentUpstream({
        upstreamUrl: emu.url,
        credential: { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY },
      });
      try {
        const { instances } = await up.describeInstances("ap-tokyo", ["ins-abcdefgh"], opts());
        expect(instances[0]).toMatchObject({ projectId: 7, tags: { team: "x" } });
      } finally {
        up.close();
        await emu.close();
      }
      const bad = join(dir, "bad.json");
      writeFileSync(bad, JSON.stringify({ instances: [{ instanceId: "ins-1" }], keyPairs: [], extra: 1 }));
      await expect(createEmulator({ inventoryFile: bad })).rejects.toThrow(
        /instances\.0\.instanceId[\s\S]*instances\.0\.region/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
