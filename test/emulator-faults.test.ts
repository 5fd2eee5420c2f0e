/**
 * Faults that make a send's outcome uncertain (the cloud acted but the client never heard, or the
 * cloud acts only after the client gave up), "busy while idle", and the per-instance counters that
 * tests and bench:faults read to check "exactly one apply per request".
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { FakeClock } from "./support/fake-clock.js";
import { isKeygateError } from "../src/core/errors.js";
import {
  createEmulator,
  EMULATOR_SECRET_ID,
  EMULATOR_SECRET_KEY,
  type Emulator,
} from "../src/upstream/emulator/index.js";
import { createTencentUpstream, type TencentUpstream } from "../src/upstream/tencent-upstream.js";
import { cleanEnv, killStrays, runToEnd, spawnKeygate } from "./support/process.js";
import { pollUntil } from "./support/wait.js";
import { freePort } from "./support/redis-server.js";

const ASSOCIATE = "AssociateInstancesKeyPairs";
const ID = "ins-gz000001";
const input = { region: "ap-guangzhou", instanceIds: [ID], keyIds: ["skey-aaaaaaaa"], forceStop: false };
const opts = () => ({ signal: new AbortController().signal });

const outcome = async (p: Promise<{ requestId: string }>): Promise<string> => {
  try {
    return `OK ${(await p).requestId}`;
  } catch (e) {
    if (!isKeygateError(e)) throw e;
    return e.upstreamCode ?? e.reason;
  }
};

describe("emulator faults: late, lost and stalled replies, late applies", () => {
  // Held replies and applies wait on this clock, so the test decides when they happen; it starts
  // at real time so signatures stay fresh.
  const clock = new FakeClock(Date.now());
  let emu: Emulator;
  /** Gives up after 400 ms of real time, like keygate's upstream timeout. */
  let impatient: TencentUpstream;
  let patient: TencentUpstream;
  beforeAll(async () => {
    emu = await createEmulator({ taskMs: 60_000, clock, associateLimit: 1000, describeLimit: 1000 });
    const make = (reqTimeoutMs: number) =>
      createTencentUpstream({
        upstreamUrl: emu.url,
        credential: { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY },
        reqTimeoutMs,
        keepAlive: false,
      });
    impatient = make(400);
    patient = make(60_000);
  });
  afterEach(() => emu.reset());
  afterAll(async () => {
    impatient.close();
    patient.close();
    await emu.close();
  });

  const describeOne = async () =>
    (await patient.describeInstances("ap-guangzhou", [ID], opts())).instances[0];
  const arrived = (n: number) =>
    pollUntil(() => emu.stats.arrivals.filter((a) => a.action === ASSOCIATE).length >= n, `${n} arrivals`);

  it("lateReply: applied at once, answered only after delayMs", async () => {
    emu.faults.set({ rules: [{ kind: "lateReply", action: ASSOCIATE, delayMs: 30_000, next: 1 }] });
    const call = outcome(patient.associateInstancesKeyPairs(input, opts()));
    await arrived(1);
    expect(emu.stats.applies).toHaveLength(1);
    expect((await describeOne())?.latestOperationState).toBe("OPERATING");
    await clock.advance(30_000);
    const applied = emu.stats.applies[0]?.requestId ?? "";
    expect(await call).toBe(`OK ${applied}`);
    expect(emu.stats.perInstance()[ID]).toEqual({ applied: 1, mutexAnswers: 0, injectedMutexAnswers: 0 });
  });

  it("lateReply longer than the client's timeout: the client times out, the cloud applied once", async () => {
    emu.faults.set({ rules: [{ kind: "lateReply", action: ASSOCIATE, delayMs: 30_000 }] });
    expect(await outcome(impatient.associateInstancesKeyPairs(input, opts()))).toBe("UPSTREAM_TIMEOUT");
    expect(emu.stats.perInstance()[ID]?.applied).toBe(1);
    expect(emu.stats.arrivals[0]?.outcome).toBe("LATE_REPLY");
  });

  it("lateApply: nothing happens until delayMs, then the request is applied although its client left", async () => {
    emu.faults.set({ rules: [{ kind: "lateApply", action: ASSOCIATE, delayMs: 5_000, next: 1 }] });
    expect(await outcome(impatient.associateInstancesKeyPairs(input, opts()))).toBe("UPSTREAM_TIMEOUT");
    expect(emu.stats.applies).toHaveLength(0);
    expect((await describeOne())?.latestOperationState).toBeNull();
    await clock.advance(5_000);
    expect(emu.stats.applies).toHaveLength(1);
    const late = await describeOne();
    expect(late?.latestOperationState).toBe("OPERATING");
    expect(late?.latestOperationRequestId).toBe(emu.stats.arrivals[0]?.requestId);
  });

  it("lateApply meets a resend: the resend applies, the original then collides with its task", async () => {
    emu.faults.set({ rules: [{ kind: "lateApply", action: ASSOCIATE, delayMs: 5_000, next: 1 }] });
    expect(await outcome(impatient.associateInstancesKeyPairs(input, opts()))).toBe("UPSTREAM_TIMEOUT");
    expect(await outcome(patient.associateInstancesKeyPairs(input, opts()))).toMatch(/^OK /);
    await clock.advance(5_000);
    expect(emu.stats.perInstance()[ID]).toEqual({ applied: 1, mutexAnswers: 1, injectedMutexAnswers: 0 });
  });

  it("lostReply: applied, never answered", async () => {
    emu.faults.set({ rules: [{ kind: "lostReply", action: ASSOCIATE, next: 1 }] });
    expect(await outcome(impatient.associateInstancesKeyPairs(input, opts()))).toBe("UPSTREAM_TIMEOUT");
    expect(emu.stats.perInstance()[ID]?.applied).toBe(1);
    expect(emu.stats.arrivals[0]?.outcome).toBe("HANG");
  });

  it("stallBody: applied, headers sent, the body never ends", async () => {
    emu.faults.set({ rules: [{ kind: "stallBody", action: ASSOCIATE, next: 1 }] });
    expect(await outcome(impatient.associateInstancesKeyPairs(input, opts()))).toBe("UPSTREAM_TIMEOUT");
    expect(emu.stats.perInstance()[ID]?.applied).toBe(1);
    expect(emu.stats.arrivals[0]?.outcome).toBe("STALLED_BODY");
  });

  it("reply faults spoil only answers that applied: a refused request is answered as usual", async () => {
    emu.faults.set({ rules: [{ kind: "lostReply", action: ASSOCIATE }] });
    const bad = { ...input, keyIds: ["skey-zzzzzzzz"] };
    expect(await outcome(impatient.associateInstancesKeyPairs(bad, opts()))).toBe(
      "InvalidKeyPairId.NotFound",
    );
    expect(emu.stats.applies).toHaveLength(0);
  });

  it("busy while idle: mutexTaskRunning answers AssociateInstancesKeyPairs only; DescribeInstances shows idle", async () => {
    emu.faults.set({ rules: [{ kind: "mutexTaskRunning" }] });
    expect(await outcome(patient.associateInstancesKeyPairs(input, opts()))).toBe(
      "MutexOperation.TaskRunning",
    );
    expect(await outcome(patient.associateInstancesKeyPairs(input, opts()))).toBe(
      "MutexOperation.TaskRunning",
    );
    const seen = await describeOne();
    expect(seen).toMatchObject({ instanceState: "STOPPED", latestOperationState: null, keyIds: [] });
    expect(emu.stats.perInstance()[ID]).toEqual({ applied: 0, mutexAnswers: 0, injectedMutexAnswers: 2 });
  });

  it("counts real collisions per instance, and the admin stats show applies and counts", async () => {
    const first = await outcome(patient.associateInstancesKeyPairs(input, opts()));
    expect(await outcome(patient.associateInstancesKeyPairs(input, opts()))).toBe(
      "MutexOperation.TaskRunning",
    );
    const stats = (await (await fetch(`${emu.url}/__emulator/stats`)).json()) as {
      applies: { requestId: string; instanceIds: string[]; keyIds: string[]; forceStop: boolean }[];
      instances: Record<string, unknown>;
    };
    expect(stats.applies).toEqual([
      expect.objectContaining({
        requestId: first.slice(3),
        instanceIds: [ID],
        keyIds: ["skey-aaaaaaaa"],
        forceStop: false,
      }),
    ]);
    expect(stats.instances).toEqual({ [ID]: { applied: 1, mutexAnswers: 1, injectedMutexAnswers: 0 } });
  });

  it("refuses a delay on a kind that takes none, and a late kind without one, over HTTP too", async () => {
    expect(() => emu.faults.set({ rules: [{ kind: "lateReply" }] })).toThrow(
      /rules\.0\.delayMs: lateReply needs delayMs/,
    );
    const res = await fetch(`${emu.url}/__emulator/faults`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        rules: [
          { kind: "http500", delayMs: 10 },
          { kind: "lateApply", delayMs: -1 },
        ],
      }),
    });
    expect(res.status).toBe(400);
    const { error } = (await res.json()) as { error: string };
    expect(error).toMatch(/rules\.0\.delayMs: http500 takes no delayMs/);
    expect(error).toMatch(/rules\.1\.delayMs/);
    expect(emu.faults.get().rules).toEqual([]);
  });
});

describe("keygate emulator --faults", () => {
  afterEach(async () => {
    await killStrays();
  });

  it("starts with the given faults in force", async () => {
    const port = await freePort();
    const rules = [{ kind: "lateReply", action: ASSOCIATE, delayMs: 20_000 }];
    const c = spawnKeygate(
      ["emulator", "--port", String(port), "--faults", JSON.stringify({ rules })],
      cleanEnv(),
    );
    await c.waitFor((x) => x.stdout().includes("CVM emulator listening"), "the emulator to listen", 30_000);
    const faults = await (await fetch(`http://127.0.0.1:${port}/__emulator/faults`)).json();
    expect(faults).toMatchObject({ rules });
  });

  it.each([
    ["not JSON", "{", /--faults: not valid JSON/],
    ["an unknown kind", '{"rules":[{"kind":"explode"}]}', /--faults: rules\.0\.kind/],
    ["a late kind without delayMs", '{"rules":[{"kind":"lateApply"}]}', /lateApply needs delayMs/],
  ])("refuses %s with exit 2", async (_what, json, message) => {
    const r = await runToEnd(
      process.execPath,
      ["--import", "tsx", "src/cli/main.ts", "emulator", "--port", "0", "--faults", json],
      cleanEnv(),
    );
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toContain("usage: keygate emulator");
  });
});
