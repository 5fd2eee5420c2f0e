import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { FakeClock } from "./support/fake-clock.js";
import { isKeygateError } from "../src/core/errors.js";
import type { AssociateInput } from "../src/core/model.js";
import {
  createEmulator,
  EMULATOR_SECRET_ID,
  EMULATOR_SECRET_KEY,
  type Emulator,
} from "../src/upstream/emulator/index.js";
import { createTencentUpstream, type TencentUpstream } from "../src/upstream/tencent-upstream.js";

const TASK_MS = 1500;
const opts = () => ({ signal: new AbortController().signal });

describe("emulator AssociateInstancesKeyPairs", () => {
  // A fake clock started at real time: signatures stay fresh, tasks finish only when told.
  const clock = new FakeClock(Date.now());
  let emu: Emulator;
  let up: TencentUpstream;
  beforeAll(async () => {
    emu = await createEmulator({ taskMs: TASK_MS, clock, associateLimit: 1000, describeLimit: 1000 });
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

  const associate = async (over: Partial<AssociateInput>): Promise<string> => {
    try {
      const { requestId } = await up.associateInstancesKeyPairs(
        {
          region: "ap-guangzhou",
          instanceIds: ["ins-gz000001"],
          keyIds: ["skey-aaaaaaaa"],
          forceStop: false,
          ...over,
        },
        opts(),
      );
      return `OK ${requestId}`;
    } catch (e) {
      if (!isKeygateError(e)) throw e;
      return e.upstreamCode ?? `!${e.reason}`;
    }
  };
  const describeOne = async (id: string, region = "ap-guangzhou") => {
    const { instances } = await up.describeInstances(region, [id], opts());
    return instances[0];
  };

  it.each([
    ["no instance ids", { instanceIds: [] }, "MissingParameter"],
    ["no key ids", { keyIds: [] }, "MissingParameter"],
    ["malformed instance id", { instanceIds: ["ins-1122"] }, "InvalidInstanceId.Malformed"],
    ["upper-case instance id", { instanceIds: ["INS-GZ000001"] }, "InvalidInstanceId.Malformed"],
    ["malformed key id", { keyIds: ["skey-1122"] }, "InvalidKeyPairId.Malformed"],
    [
      "101 instances",
      { instanceIds: Array.from({ length: 101 }, (_, i) => `ins-${String(i).padStart(8, "0")}`) },
      "InvalidParameterValue.LimitExceeded",
    ],
    [
      "101 keys",
      { keyIds: Array.from({ length: 101 }, (_, i) => `skey-${String(i).padStart(8, "0")}`) },
      "InvalidParameterValue.LimitExceeded",
    ],
    ["unsupported region", { region: "ap-mumbai" }, "UnsupportedRegion"],
    ["unknown instance", { instanceIds: ["ins-zzzzzzzz"] }, "InvalidInstanceId.NotFound"],
    ["instance of another region", { instanceIds: ["ins-sh000001"] }, "InvalidInstanceId.NotFound"],
    ["unknown key", { keyIds: ["skey-zzzzzzzz"] }, "InvalidKeyPairId.NotFound"],
    ["key of another region", { keyIds: ["skey-dddddddd"] }, "InvalidKeyPairId.NotFound"],
    ["Windows instance", { instanceIds: ["ins-gz000005"] }, "UnsupportedOperation.InstanceOsWindows"],
    [
      "RUNNING without ForceStop",
      { instanceIds: ["ins-gz000004"] },
      "UnsupportedOperation.InstanceStateRunning",
    ],
    ["PENDING", { instanceIds: ["ins-gz000006"] }, "UnsupportedOperation.InstanceStatePending"],
    ["STOPPING", { instanceIds: ["ins-gz000007"] }, "UnsupportedOperation.InstanceStateStopping"],
    [
      "SHUTDOWN",
      { region: "ap-shanghai", instanceIds: ["ins-sh000004"] },
      "UnsupportedOperation.InstanceStateShutdown",
    ],
    [
      "REBOOTING",
      { region: "ap-shanghai", instanceIds: ["ins-sh000005"] },
      "UnsupportedOperation.InstanceStateRebooting",
    ],
    [
      "ForceStop on a PENDING one",
      { instanceIds: ["ins-gz000006"], forceStop: true },
      "UnsupportedOperation.InstanceStatePending",
    ],
  ] as const)("%s → %s", async (_name, over, code) => {
    expect(await associate(over as Partial<AssociateInput>)).toBe(code);
  });

  it("fails all instances or none: one bad instance starts no task", async () => {
    expect(await associate({ instanceIds: ["ins-gz000001", "ins-gz000004"] })).toBe(
      "UnsupportedOperation.InstanceStateRunning",
    );
    expect((await describeOne("ins-gz000001"))?.latestOperationState).toBeNull();
  });

  it("runs a cloud task: OPERATING, MutexOperation meanwhile, then SUCCESS with the keys replaced", async () => {
    const first = await associate({ keyIds: ["skey-aaaaaaaa"] });
    expect(first).toMatch(/^OK /);
    const requestId = first.slice(3);
    const during = await describeOne("ins-gz000001");
    expect(during).toMatchObject({
      latestOperation: "AssociateInstancesKeyPairs",
      latestOperationState: "OPERATING",
      latestOperationRequestId: requestId,
      keyIds: [],
    });
    expect(await associate({ keyIds: ["skey-bbbbbbbb"] })).toBe("MutexOperation.TaskRunning");
    // Another instance in the same call being busy blocks the whole call.
    expect(await associate({ instanceIds: ["ins-gz000002", "ins-gz000001"] })).toBe(
      "MutexOperation.TaskRunning",
    );

    await clock.advance(TASK_MS - 1);
    expect((await describeOne("ins-gz000001"))?.latestOperationState).toBe("OPERATING");
    await clock.advance(1);
    expect(await describeOne("ins-gz000001")).toMatchObject({
      latestOperationState: "SUCCESS",
      latestOperationRequestId: requestId,
      keyIds: ["skey-aaaaaaaa"],
      instanceState: "STOPPED",
    });
    // The next association replaces the bound key.
    expect(await associate({ keyIds: ["skey-bbbbbbbb", "skey-cccccccc"] })).toMatch(/^OK /);
    await clock.advance(TASK_MS);
    expect((await describeOne("ins-gz000001"))?.keyIds).toEqual(["skey-bbbbbbbb", "skey-cccccccc"]);
  });

  it("with ForceStop binds a RUNNING instance and leaves it RUNNING", async () => {
    expect(await associate({ instanceIds: ["ins-gz000004"], forceStop: true })).toMatch(/^OK /);
    await clock.advance(TASK_MS);
    expect(await describeOne("ins-gz000004")).toMatchObject({
      instanceState: "RUNNING",
      latestOperationState: "SUCCESS",
      keyIds: ["skey-aaaaaaaa"],
    });
  });

  it("an external busy marker makes the instance OPERATING for a while", async () => {
    emu.markBusy(["ins-gz000002"], 500, { code: "OperationDenied.InstanceOperationInProgress" });
    expect((await describeOne("ins-gz000002"))?.latestOperationState).toBe("OPERATING");
    expect(await associate({ instanceIds: ["ins-gz000002"] })).toBe(
      "OperationDenied.InstanceOperationInProgress",
    );
    await clock.advance(500);
    expect((await describeOne("ins-gz000002"))?.latestOperationState).toBe("SUCCESS");
    expect(await associate({ instanceIds: ["ins-gz000002"] })).toMatch(/^OK /);
  });

  it("records every arrival with its outcome", async () => {
    await associate({ instanceIds: ["ins-zzzzzzzz"] });
    await associate({});
    expect(emu.stats.outcomes({ action: "AssociateInstancesKeyPairs" })).toEqual({
      "InvalidInstanceId.NotFound": 1,
      OK: 1,
    });
    expect(
      emu.stats.arrivals.every((a) => a.secretId === EMULATOR_SECRET_ID && a.region === "ap-guangzhou"),
    ).toBe(true);
  });
});
