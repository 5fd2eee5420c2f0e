/**
 * The emulator says everything the API page says: each of its 29 codes (by the instance's state or
 * the input where they follow from it, by injection otherwise) in the real error shape, failed
 * tasks, the busy-but-idle lag, rate windows per credential and endpoint, both ForceStop readings.
 * The real SDK signs real HTTP against it; a fake clock drives tasks and windows.
 */
import { readFileSync } from "node:fs";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { runEmulator } from "../src/cli/emulator.js";
import { isKeygateError } from "../src/core/errors.js";
import { isIdle } from "../src/leases/task-watcher.js";
import type { AssociateInput } from "../src/core/model.js";
import {
  createEmulator,
  EMULATOR_SECRET_ID,
  EMULATOR_SECRET_KEY,
  type Emulator,
  type ForceStopReading,
  type InventorySpec,
} from "../src/upstream/emulator/index.js";
import { createTencentUpstream, type TencentUpstream } from "../src/upstream/tencent-upstream.js";
import { FakeClock } from "./support/fake-clock.js";

const TASK_MS = 1_000;
const REGION = "ap-guangzhou";
const opts = () => ({ signal: new AbortController().signal });
const PAGE_CODES = readFileSync(new URL("./fixtures/api-page-codes.txt", import.meta.url), "utf8")
  .split("\n")
  .map((l) => l.trim())
  .filter((l) => l !== "" && !l.startsWith("#"));

/** One instance per state the action refuses, plus a stopped and a running one. */
const STATES = [
  "STOPPED",
  "RUNNING",
  "PENDING",
  "LAUNCH_FAILED",
  "STARTING",
  "STOPPING",
  "REBOOTING",
  "SHUTDOWN",
  "TERMINATING",
  "ISOLATING",
  "FREEZING",
  "RESCUE_MODE",
  "ENTER_RESCUE_MODE",
  "EXIT_RESCUE_MODE",
  "ENTER_SERVICE_LIVE_MIGRATE",
  "SERVICE_LIVE_MIGRATE",
  "EXIT_SERVICE_LIVE_MIGRATE",
];
const idOf = (n: number) => `ins-ec${String(n).padStart(6, "0")}`;
const ID: Record<string, string> = Object.fromEntries(STATES.map((s, i) => [s, idOf(i + 1)]));
const HUNG = "ins-echung01";
const WINDOWS = "ins-ecwin001";

function inventory(): InventorySpec {
  const at = (instanceId: string, instanceState: string, extra: object = {}) => ({
    instanceId,
    region: REGION,
    zone: "ap-guangzhou-3",
    projectId: 0,
    osName: "TencentOS Server 3.1 (TK4)",
    instanceState,
    ...extra,
  });
  return {
    instances: [
      ...STATES.map((s) => at(ID[s] ?? "", s)),
      at(HUNG, "RUNNING", { normalShutdownFails: true }),
      at(WINDOWS, "STOPPED", { osName: "Windows Server 2019 DataCenter 64bit" }),
    ],
    keyPairs: [{ keyId: "skey-aaaaaaaa" }, { keyId: "skey-bbbbbbbb" }],
  };
}

describe("emulator: every documented code, tasks, lag, windows", () => {
  const clock = new FakeClock(Date.now());
  let emu: Emulator;
  let up: TencentUpstream;
  beforeAll(async () => {
    emu = await createEmulator({
      clock,
      taskMs: TASK_MS,
      inventory: inventory(),
      associateLimit: 1_000,
      describeLimit: 1_000,
    });
    up = createTencentUpstream({
      upstreamUrl: emu.url,
      credential: { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY },
      keepAlive: false,
    });
  });
  afterEach(() => emu.reset());
  afterAll(async () => {
    up.close();
    await emu.close();
  });

  /** "OK <requestId>" or the cloud's code, plus what came with it. */
  const associate = async (over: Partial<AssociateInput>) => {
    try {
      const { requestId } = await up.associateInstancesKeyPairs(
        {
          region: REGION,
          instanceIds: [ID.STOPPED ?? ""],
          keyIds: ["skey-aaaaaaaa"],
          forceStop: false,
          ...over,
        },
        opts(),
      );
      return { code: "OK", requestId, message: "" };
    } catch (e) {
      if (!isKeygateError(e)) throw e;
      return { code: e.upstreamCode ?? `!${e.reason}`, requestId: e.upstreamRequestId, message: e.message };
    }
  };
  const describeOne = async (id: string) => (await up.describeInstances(REGION, [id], opts())).instances[0];

  it.each<[state: string, code: string]>([
    ["RUNNING", "UnsupportedOperation.InstanceStateRunning"],
    ["PENDING", "UnsupportedOperation.InstanceStatePending"],
    ["LAUNCH_FAILED", "InvalidInstance.NotSupported"],
    ["STARTING", "UnsupportedOperation.InstanceStateStarting"],
    ["STOPPING", "UnsupportedOperation.InstanceStateStopping"],
    ["REBOOTING", "UnsupportedOperation.InstanceStateRebooting"],
    ["SHUTDOWN", "UnsupportedOperation.InstanceStateShutdown"],
    ["TERMINATING", "UnsupportedOperation.InstanceStateTerminating"],
    ["ISOLATING", "UnsupportedOperation.InstanceStateIsolating"],
    ["FREEZING", "UnsupportedOperation.InstanceStateFreezing"],
    ["RESCUE_MODE", "UnsupportedOperation.InstanceStateRescueMode"],
    ["ENTER_RESCUE_MODE", "UnsupportedOperation.InstanceStateRescueMode"],
    ["EXIT_RESCUE_MODE", "UnsupportedOperation.InstanceStateExitRescueMode"],
    ["ENTER_SERVICE_LIVE_MIGRATE", "UnsupportedOperation.InstanceStateEnterServiceLiveMigrate"],
    ["SERVICE_LIVE_MIGRATE", "UnsupportedOperation.InstanceStateEnterServiceLiveMigrate"],
    ["EXIT_SERVICE_LIVE_MIGRATE", "UnsupportedOperation.InstanceStateEnterServiceLiveMigrate"],
  ])("an instance in %s answers %s, naturally", async (state, code) => {
    expect((await associate({ instanceIds: [ID[state] ?? ""] })).code).toBe(code);
    expect(emu.stats.applies).toHaveLength(0);
  });

  it.each<[what: string, over: Partial<AssociateInput>, code: string]>([
    [
      "an id not shaped like an instance id",
      { instanceIds: ["i-12345678"] },
      "InvalidParameterValue.InstanceIdMalformed",
    ],
    ["an instance id of the wrong length", { instanceIds: ["ins-1122"] }, "InvalidInstanceId.Malformed"],
    ["a Windows instance", { instanceIds: [WINDOWS] }, "UnsupportedOperation.InstanceOsWindows"],
  ])("%s answers %s, naturally", async (_what, over, code) => {
    expect((await associate(over)).code).toBe(code);
  });

  it("a state that ends by itself passes on after its time; the action then accepts the instance", async () => {
    const id = ID.STOPPED ?? "";
    emu.setState(id, "STOPPING", { forMs: 500 });
    expect((await associate({ instanceIds: [id] })).code).toBe("UnsupportedOperation.InstanceStateStopping");
    expect((await describeOne(id))?.instanceState).toBe("STOPPING");
    await clock.advance(500);
    expect((await describeOne(id))?.instanceState).toBe("STOPPED");
    expect((await associate({ instanceIds: [id] })).code).toBe("OK");
  });

  it.each(PAGE_CODES)("%s can be injected, in the real error shape", async (code) => {
    emu.faults.set({ rules: [{ kind: "code", code, action: "AssociateInstancesKeyPairs", next: 1 }] });
    const out = await associate({});
    expect(out.code).toBe(code);
    // The RequestId the cloud answered is the one it logged for the arrival.
    const arrival = emu.stats.arrivals.at(-1);
    expect(out.requestId).toBe(arrival?.requestId);
    expect(arrival?.outcome).toBe(code);
    expect(emu.stats.applies).toHaveLength(0);
    // The rule was for one call only.
    expect((await associate({})).code).toBe("OK");
  });

  it("injection: any action, a message of one's own, matched on an instance id", async () => {
    emu.faults.set({
      rules: [
        {
          kind: "code",
          code: "UnauthorizedOperation.MFAExpired",
          message: "MFA expired",
          instanceIds: [idOf(1)],
        },
      ],
    });
    expect(await associate({ instanceIds: [ID.RUNNING ?? ""], forceStop: true })).toMatchObject({
      code: "OK",
    });
    const hit = await associate({ instanceIds: [idOf(1)] });
    expect(hit.code).toBe("UnauthorizedOperation.MFAExpired");
    expect(hit.message).toContain("MFA expired");
    // The same rule hits DescribeInstances naming the instance (no action given = every action).
    await expect(up.describeInstances(REGION, [idOf(1)], opts())).rejects.toMatchObject({
      upstreamCode: "UnauthorizedOperation.MFAExpired",
    });
    await expect(up.describeInstances(REGION, [WINDOWS], opts())).resolves.toBeDefined();
  });

  it("injection: the next N calls of an action, then the cloud behaves again", async () => {
    emu.faults.set({
      rules: [{ kind: "code", code: "InternalServerError", action: "AssociateInstancesKeyPairs", next: 2 }],
    });
    const codes = [];
    for (let i = 0; i < 3; i += 1) codes.push((await associate({ instanceIds: [idOf(1 + 0)] })).code);
    expect(codes).toEqual(["InternalServerError", "InternalServerError", "OK"]);
    // DescribeInstances was never hit.
    expect(await describeOne(idOf(1))).toBeDefined();
  });

  it("refuses a bad injection with every problem named, and changes nothing", () => {
    emu.faults.set({ rules: [{ kind: "http500", next: 1 }] });
    const before = emu.faults.get();
    for (const bad of [
      { rules: [{ kind: "code" }] },
      { rules: [{ kind: "code", code: "not a code" }] },
      { rules: [{ kind: "http500", code: "InternalError" }] },
      { rules: [{ kind: "hang", message: "m" }] },
      { rules: [{ kind: "code", code: "InternalError", instanceIds: [] }] },
    ]) {
      expect(() => emu.faults.set(bad as never)).toThrow(/code|message|instanceIds/);
      expect(emu.faults.get()).toEqual(before);
    }
  });

  it("a task can end FAILED: accepted, OPERATING, then FAILED with its message and nothing bound", async () => {
    emu.faults.set({ rules: [{ kind: "taskFailed", message: "disk busy", next: 1 }] });
    const id = ID.STOPPED ?? "";
    const out = await associate({ instanceIds: [id] });
    expect(out.code).toBe("OK");
    expect(await describeOne(id)).toMatchObject({
      latestOperationState: "OPERATING",
      latestOperationRequestId: out.requestId,
    });
    await clock.advance(TASK_MS);
    expect(await describeOne(id)).toMatchObject({
      latestOperationState: "FAILED",
      latestOperationErrorMsg: "disk busy",
      keyIds: [],
      instanceState: "STOPPED",
    });
    // The next one succeeds and binds.
    const ok = await associate({ instanceIds: [id] });
    await clock.advance(TASK_MS);
    expect(await describeOne(id)).toMatchObject({
      latestOperationState: "SUCCESS",
      latestOperationRequestId: ok.requestId,
      keyIds: ["skey-aaaaaaaa"],
    });
  });

  it("a console task can end FAILED too", async () => {
    emu.markBusy([idOf(1)], 100, { fails: "stop failed" });
    await clock.advance(100);
    expect(await describeOne(idOf(1))).toMatchObject({
      latestOperationState: "FAILED",
      latestOperationErrorMsg: "stop failed",
    });
  });
});

describe("emulator: the busy-but-idle lag", () => {
  const clock = new FakeClock(Date.now());
  let emu: Emulator;
  let up: TencentUpstream;
  beforeAll(async () => {
    emu = await createEmulator({ clock, taskMs: TASK_MS, busyLagMs: 300, inventory: inventory() });
    up = createTencentUpstream({
      upstreamUrl: emu.url,
      credential: { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY },
      keepAlive: false,
    });
  });
  afterAll(async () => {
    up.close();
    await emu.close();
  });

  it("after a task ended, the action still says busy while DescribeInstances shows it idle, until the lag passes", async () => {
    const id = ID.STOPPED ?? "";
    const input = { region: REGION, instanceIds: [id], keyIds: ["skey-aaaaaaaa"], forceStop: false };
    await up.associateInstancesKeyPairs(input, opts());
    await clock.advance(TASK_MS);
    const [info] = (await up.describeInstances(REGION, [id], opts())).instances;
    expect(info?.latestOperationState).toBe("SUCCESS");
    await expect(up.associateInstancesKeyPairs(input, opts())).rejects.toMatchObject({
      upstreamCode: "MutexOperation.TaskRunning",
    });
    await clock.advance(300);
    await expect(up.associateInstancesKeyPairs(input, opts())).resolves.toBeDefined();
  });
});

describe("emulator: rate windows per credential and access endpoint", () => {
  it("a second endpoint of the same credential has a window of its own", async () => {
    const clock = new FakeClock(Date.now());
    const emu = await createEmulator({ clock, associateLimit: 3, inventory: inventory() });
    const client = (endpoint: string) =>
      createTencentUpstream({
        endpoint,
        upstreamUrl: emu.url,
        credential: { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY },
        keepAlive: false,
      });
    const a = client("cvm.tencentcloudapi.com");
    const b = client("cvm.ap-guangzhou.tencentcloudapi.com");
    const input = {
      region: REGION,
      instanceIds: ["ins-zzzzzzzz"],
      keyIds: ["skey-aaaaaaaa"],
      forceStop: false,
    };
    const code = (p: Promise<unknown>) =>
      p.then(
        () => "OK",
        (e: unknown) => (isKeygateError(e) ? (e.upstreamCode ?? e.reason) : "?"),
      );
    try {
      const first = [];
      for (let i = 0; i < 4; i += 1) first.push(await code(a.associateInstancesKeyPairs(input, opts())));
      expect(first).toEqual([
        "InvalidInstanceId.NotFound",
        "InvalidInstanceId.NotFound",
        "InvalidInstanceId.NotFound",
        "RequestLimitExceeded",
      ]);
      expect(await code(b.associateInstancesKeyPairs(input, opts()))).toBe("InvalidInstanceId.NotFound");
      expect(new Set(emu.stats.arrivals.map((x) => x.host.split(":")[0]))).toEqual(
        new Set(["cvm.tencentcloudapi.com", "cvm.ap-guangzhou.tencentcloudapi.com"]),
      );
    } finally {
      a.close();
      b.close();
      await emu.close();
    }
  });
});

describe.each<ForceStopReading>(["stopped-only", "shutdown-first"])(
  "emulator: ForceStop read as %s",
  (reading) => {
    const clock = new FakeClock(Date.now());
    let emu: Emulator;
    let up: TencentUpstream;
    beforeAll(async () => {
      emu = await createEmulator({
        clock,
        taskMs: TASK_MS,
        forceStopReading: reading,
        inventory: inventory(),
      });
      up = createTencentUpstream({
        upstreamUrl: emu.url,
        credential: { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY },
        keepAlive: false,
      });
    });
    afterEach(() => emu.reset());
    afterAll(async () => {
      up.close();
      await emu.close();
    });
    const run = async (instanceId: string, forceStop: boolean) => {
      try {
        await up.associateInstancesKeyPairs(
          { region: REGION, instanceIds: [instanceId], keyIds: ["skey-bbbbbbbb"], forceStop },
          opts(),
        );
      } catch (e) {
        if (isKeygateError(e)) return e.upstreamCode;
        throw e;
      }
      await clock.advance(TASK_MS);
      const [info] = (await up.describeInstances(REGION, [instanceId], opts())).instances;
      return `${info?.latestOperationState ?? "?"} ${info?.instanceState ?? "?"} [${info?.keyIds.join(",") ?? ""}]`;
    };
    const forced = () => emu.stats.applies.flatMap((a) => a.forcedStops ?? []);

    it("RUNNING without ForceStop: never forced down", async () => {
      const expected =
        reading === "stopped-only"
          ? "UnsupportedOperation.InstanceStateRunning"
          : "SUCCESS RUNNING [skey-bbbbbbbb]";
      expect(await run(ID.RUNNING ?? "", false)).toBe(expected);
      // A guest that will not shut down normally: refused, or the task fails; never forced.
      const hung =
        reading === "stopped-only" ? "UnsupportedOperation.InstanceStateRunning" : "FAILED RUNNING []";
      expect(await run(HUNG, false)).toBe(hung);
      expect(forced()).toEqual([]);
    });

    it("RUNNING with ForceStop: bound and running again; forced down only when the reading says so", async () => {
      expect(await run(ID.RUNNING ?? "", true)).toBe("SUCCESS RUNNING [skey-bbbbbbbb]");
      expect(await run(HUNG, true)).toBe("SUCCESS RUNNING [skey-bbbbbbbb]");
      expect(forced()).toEqual(reading === "stopped-only" ? [ID.RUNNING, HUNG] : [HUNG]);
    });

    it("STOPPED: ForceStop changes nothing", async () => {
      expect(await run(ID.STOPPED ?? "", true)).toBe("SUCCESS STOPPED [skey-bbbbbbbb]");
      expect(forced()).toEqual([]);
    });
  },
);

describe("keygate emulator flags and the idle predicate", () => {
  it("refuses an unknown ForceStop reading or lag with exit 2, before starting anything", async () => {
    expect(await runEmulator(["--force-stop", "sideways"])).toBe(2);
    expect(await runEmulator(["--busy-lag-ms", "-5"])).toBe(2);
  });

  it("idle = no task running and not in a state that ends by itself", () => {
    const at = (instanceState: string, latestOperationState: "OPERATING" | "SUCCESS" | null = "SUCCESS") => ({
      instanceState,
      latestOperationState,
    });
    expect(isIdle(at("STOPPED"))).toBe(true);
    expect(isIdle(at("RUNNING", null))).toBe(true);
    expect(isIdle(at("STOPPED", "OPERATING"))).toBe(false);
    for (const s of [
      "PENDING",
      "STARTING",
      "STOPPING",
      "REBOOTING",
      "EXIT_RESCUE_MODE",
      "ENTER_SERVICE_LIVE_MIGRATE",
    ]) {
      expect(isIdle(at(s)), s).toBe(false);
    }
    // Ends only when someone acts: idle, and the cloud's answer is a precondition.
    for (const s of ["SHUTDOWN", "RESCUE_MODE", "LAUNCH_FAILED"]) expect(isIdle(at(s)), s).toBe(true);
  });
});

describe("emulator: key pairs are regional", () => {
  it("a key pair exists only in the regions it names", async () => {
    const emu = await createEmulator({
      inventory: {
        instances: [
          ...["ap-guangzhou", "ap-shanghai"].map((region, i) => ({
            instanceId: `ins-kr00000${i}`,
            region,
            zone: `${region}-1`,
            projectId: 0,
            osName: "TencentOS Server 3.1 (TK4)",
            instanceState: "STOPPED",
          })),
        ],
        keyPairs: [
          { keyId: "skey-gzonly01", region: "ap-guangzhou" },
          { keyId: "skey-both0001", region: ["ap-guangzhou", "ap-shanghai"] },
        ],
      },
    });
    expect(emu.inventory.hasKeyPair("ap-guangzhou", "skey-gzonly01")).toBe(true);
    expect(emu.inventory.hasKeyPair("ap-shanghai", "skey-gzonly01")).toBe(false);
    expect(emu.inventory.hasKeyPair("ap-shanghai", "skey-both0001")).toBe(true);
    expect(emu.inventory.hasKeyPair("ap-beijing", "skey-both0001")).toBe(false);
    await emu.close();
  });
});

describe("emulator admin: busy and state routes", () => {
  let emu: Emulator;
  beforeAll(async () => {
    emu = await createEmulator({ inventory: inventory() });
  });
  afterAll(() => emu.close());
  const admin = async (path: string, body: unknown) => {
    const res = await fetch(`${emu.url}/__emulator/${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as { error?: string } };
  };
  const operating = () => emu.inventory.all().filter((i) => i.latestOperationState === "OPERATING");

  it("the busy route refuses an unknown code with a clear 400 and changes nothing", async () => {
    const res = await admin("busy", {
      instanceIds: [idOf(1)],
      ms: 5_000,
      code: "UnsupportedOperation.InstanceStateStopping",
    });
    expect(res.status).toBe(400);
    expect(res.body.error).toMatch(/unknown busy code.*MutexOperation\.TaskRunning.*faults/);
    expect(operating()).toEqual([]);
    const unknownId = await admin("busy", { instanceIds: [idOf(1), "ins-nothere1"], ms: 5_000 });
    expect(unknownId.status).toBe(400);
    expect(operating()).toEqual([]);
  });

  it("the busy route still takes both busy codes", async () => {
    for (const code of [
      undefined,
      "MutexOperation.TaskRunning",
      "OperationDenied.InstanceOperationInProgress",
    ]) {
      expect((await admin("busy", { instanceIds: [idOf(1)], ms: 5_000, code })).status).toBe(200);
      expect(emu.inventory.busyCode(idOf(1))).toBe(code ?? "MutexOperation.TaskRunning");
    }
    emu.reset();
  });

  it("the state route sets a state, passing on by itself with forMs; bad input is a 400", async () => {
    expect(
      (await admin("state", { instanceId: idOf(1), state: "STARTING", forMs: 60_000, then: "RUNNING" }))
        .status,
    ).toBe(200);
    expect(emu.inventory.all().find((i) => i.instanceId === idOf(1))?.instanceState).toBe("STARTING");
    for (const bad of [
      { instanceId: idOf(1), state: "starting" },
      { instanceId: "ins-nothere1", state: "STOPPED" },
      { instanceId: idOf(1), state: "STOPPED", forMs: -1 },
      { state: "STOPPED" },
    ]) {
      expect((await admin("state", bad)).status).toBe(400);
    }
    expect(emu.inventory.all().find((i) => i.instanceId === idOf(1))?.instanceState).toBe("STARTING");
    emu.reset();
  });
});
