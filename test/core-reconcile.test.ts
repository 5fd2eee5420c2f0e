/**
 * The send path's decisions with a fake clock and a hand-made cloud: reconcile before any resend,
 * inherited phases, fenced marks, store suspicion, lease takeover, bounded backed-off retries.
 * End-to-end proofs with real processes and the emulator are in test/send-faults.test.ts.
 */
import { describe, expect, it } from "vitest";
import { createAssociateService, type AssociateServiceOptions } from "../src/core/associate-service.js";
import { cloudCodeError, retryPolicy } from "../src/core/cloud-errors.js";
import { isKeygateError, keygateError } from "../src/core/errors.js";
import type { AssociateInput, AssociateResult, InstanceInfo } from "../src/core/model.js";
import type { AuditEntry, Execution, Leases, MarkPhase, SendPhase } from "../src/core/ports.js";
import { judge, reconcile } from "../src/core/reconcile.js";
import { createLeases } from "../src/leases/leases.js";
import { createMemoryLeaseStore } from "../src/leases/memory-lease-store.js";
import { createTaskWatcher } from "../src/leases/task-watcher.js";
import { FakeClock } from "./support/fake-clock.js";

const REGION = "ap-guangzhou";
const A = "ins-0000000a";
const B = "ins-0000000b";
const K1 = "skey-11111111";
const K2 = "skey-22222222";
const HORIZON = 4_000;

function info(id: string, over: Partial<InstanceInfo> = {}): InstanceInfo {
  return {
    instanceId: id,
    instanceState: "STOPPED",
    osName: "Linux",
    projectId: 0,
    tags: {},
    keyIds: [],
    latestOperation: null,
    latestOperationState: null,
    latestOperationRequestId: null,
    latestOperationErrorMsg: null,
    ...over,
  };
}

type Behaviour = "ok" | "lost" | "busy" | "internal" | "mfa";

/** A small cloud: tasks last `taskMs`; `script` says what each AssociateInstancesKeyPairs does. */
function fakeCloud(clock: FakeClock, ids: string[], taskMs = 1_000) {
  const state = new Map(ids.map((id) => [id, info(id)]));
  const endsAt = new Map<string, number>();
  const script: Behaviour[] = [];
  const calls: number[] = [];
  const applies: string[] = [];
  const describes: number[] = [];
  let n = 0;
  const view = (id: string): InstanceInfo => {
    const s = state.get(id) ?? info(id);
    if (s.latestOperationState === "OPERATING" && clock.now() >= (endsAt.get(id) ?? 0)) {
      s.latestOperationState = "SUCCESS";
    }
    return { ...s, keyIds: s.latestOperationState === "OPERATING" ? [] : [...s.keyIds] };
  };
  const apply = (input: AssociateInput, requestId: string) => {
    applies.push(requestId);
    for (const id of input.instanceIds) {
      state.set(id, {
        ...view(id),
        keyIds: [...input.keyIds],
        latestOperation: "AssociateInstancesKeyPairs",
        latestOperationState: "OPERATING",
        latestOperationRequestId: requestId,
      });
      endsAt.set(id, clock.now() + taskMs);
    }
  };
  return {
    script,
    calls,
    applies,
    describes,
    /** Starts a task nobody in keygate asked for (a person in the console). */
    foreignTask(id: string, ms: number) {
      apply({ region: REGION, instanceIds: [id], keyIds: [], forceStop: false }, "foreign");
      endsAt.set(id, clock.now() + ms);
      applies.pop();
    },
    bind(id: string, keyIds: string[], requestId: string) {
      state.set(id, {
        ...view(id),
        keyIds,
        latestOperationRequestId: requestId,
        latestOperationState: "SUCCESS",
      });
    },
    upstream: {
      associateInstancesKeyPairs(input: AssociateInput) {
        calls.push(clock.now());
        const requestId = `req-${++n}`;
        const what = script.shift() ?? "ok";
        if (what === "busy")
          return Promise.reject(
            cloudCodeError("MutexOperation.TaskRunning", "busy", {
              upstreamCode: "MutexOperation.TaskRunning",
            }),
          );
        if (what === "mfa")
          return Promise.reject(
            cloudCodeError("UnauthorizedOperation.MFAExpired", "mfa", {
              upstreamCode: "UnauthorizedOperation.MFAExpired",
            }),
          );
        if (what === "internal")
          return Promise.reject(cloudCodeError("InternalError", "oops", { upstreamCode: "InternalError" }));
        apply(input, requestId);
        if (what === "lost") return Promise.reject(keygateError("UPSTREAM_TIMEOUT", "no answer in time"));
        return Promise.resolve({ requestId });
      },
      describeInstances(_region: string, instanceIds: string[], _opts?: unknown) {
        describes.push(clock.now());
        return Promise.resolve({ requestId: "d", instances: instanceIds.map(view) });
      },
    },
  };
}

/** An Execution that records its marks; `reject` makes marks fail as when another executor took over. */
function execution(inherited?: Execution["inherited"], reject?: SendPhase) {
  const marks: [MarkPhase, { sentAt?: number; requestId?: string } | undefined][] = [];
  const ex: Execution = {
    inherited,
    mark(phase, detail) {
      if (phase === reject) return Promise.reject(keygateError("STORE_UNAVAILABLE", "claim lost"));
      marks.push([phase, detail]);
      return Promise.resolve();
    },
  };
  return { ex, marks };
}

function setup(
  opts: {
    ids?: string[];
    taskMs?: number;
    inherited?: Execution["inherited"];
    reject?: SendPhase;
    suspect?: boolean;
    leases?: (clock: FakeClock) => Leases;
  } = {},
) {
  const clock = new FakeClock();
  const cloud = fakeCloud(clock, opts.ids ?? [A, B], opts.taskMs);
  const { ex, marks } = execution(opts.inherited, opts.reject);
  const audits: AuditEntry[] = [];
  const service = createAssociateService({
    clock,
    upstream: cloud.upstream,
    limiter: {
      acquire: () => Promise.resolve({ waitedMs: 0 }),
      penalize: () => Promise.resolve(),
      close: () => Promise.resolve(),
    },
    leases: opts.leases?.(clock) ?? createLeases({ clock, store: createMemoryLeaseStore({ clock }) }),
    operations: { run: (op) => op.execute(ex), close: () => Promise.resolve() },
    policy: {
      authenticate: () => ({ name: "t", weight: 1 }),
      needsLookup: () => [],
      decide: () => ({ allowed: true }),
    },
    lookup: { get: () => Promise.resolve(new Map()) },
    tasks: createTaskWatcher({
      clock,
      pollMs: 100,
      describe: async (r, ids, o) => (await cloud.upstream.describeInstances(r, ids, o)).instances,
    }),
    bucket: { key: "b", limit: 10, windowMs: 1_000 },
    scope: "s",
    owner: "me",
    taskMaxWaitMs: 60_000,
    resendHorizonMs: HORIZON,
    integrity: { suspect: () => opts.suspect ?? false },
    random: () => 0.5,
    hooks: { audit: (e) => audits.push(e) },
  } satisfies AssociateServiceOptions);
  const associate = (instanceIds = [A], idempotencyKey = "") =>
    service.associate({
      requestId: "call-1",
      credential: { bearer: "x" },
      signal: new AbortController().signal,
      deadline: clock.now() + 60_000,
      request: {
        region: REGION,
        instanceIds,
        keyIds: [K1],
        forceStop: false,
        idempotencyKey,
        waitForCompletion: true,
      },
    });
  /** Moves the fake time until `p` settles. */
  const run = async <T>(p: Promise<T>): Promise<T | Error> => {
    let done = false;
    const out = p.then(
      (v) => v,
      (e: unknown) => e as Error,
    );
    void out.finally(() => (done = true));
    for (let i = 0; i < 2_000 && !done; i++) {
      // Let the path run up to its next wait before time moves.
      for (let j = 0; j < 5; j++) await new Promise((r) => setImmediate(r));
      if (!done) await clock.advance(50);
    }
    expect(done).toBe(true);
    return out;
  };
  return { clock, cloud, marks, audits, associate, run };
}

describe("reconcile (pure logic over a fake clock)", () => {
  const input: AssociateInput = { region: REGION, instanceIds: [A, B], keyIds: [K1, K2], forceStop: false };

  it("waits until an original still on its way would have arrived, then until idle, then reads once", async () => {
    const clock = new FakeClock();
    const seen: number[] = [];
    const sentAt = clock.now();
    await clock.advance(1_000);
    const p = reconcile(
      {
        clock,
        resendHorizonMs: HORIZON,
        tasks: {
          waitUntilIdle: (_r, ids) => {
            seen.push(clock.now());
            return Promise.resolve(
              ids.map((id) => info(id, { keyIds: [K1, K2], latestOperationRequestId: "r-9" })),
            );
          },
        },
      },
      input,
      { sentAt, requestIds: [] },
      { signal: new AbortController().signal },
    );
    await clock.advance(2_999);
    expect(seen).toEqual([]);
    await clock.advance(1);
    expect(seen).toEqual([sentAt + HORIZON]);
    await expect(p).resolves.toMatchObject({ applied: true, requestId: "r-9" });
  });

  it("judges applied when every instance has all keys bound, with the request id they share", () => {
    const v = judge(input, { sentAt: 0, requestIds: [] }, [
      info(A, {
        keyIds: [K2, K1, "skey-33333333"],
        latestOperationRequestId: "r-1",
        latestOperationState: "SUCCESS",
      }),
      info(B, { keyIds: [K1, K2], latestOperationRequestId: "r-1", latestOperationState: "SUCCESS" }),
    ]);
    expect(v).toEqual({
      applied: true,
      requestId: "r-1",
      instances: [
        { instanceId: A, state: "SUCCESS", message: "" },
        { instanceId: B, state: "SUCCESS", message: "" },
      ],
    });
  });

  it("judges applied when the latest operation is a recorded one, even if it failed (no resend)", () => {
    const v = judge(input, { sentAt: 0, requestIds: ["r-ours"] }, [
      info(A, { keyIds: [K1, K2], latestOperationRequestId: "r-other" }),
      info(B, {
        latestOperationRequestId: "r-ours",
        latestOperationState: "FAILED",
        latestOperationErrorMsg: "disk",
      }),
    ]);
    expect(v.applied && v.requestId).toBe("r-ours");
    expect(v.applied && v.instances[1]).toEqual({ instanceId: B, state: "FAILED", message: "disk" });
  });

  it("judges not applied when one instance lacks a key and shows no operation of ours", () => {
    const v = judge(input, { sentAt: 0, requestIds: ["r-ours"] }, [
      info(A, { keyIds: [K1, K2] }),
      info(B, { keyIds: [K1], latestOperationRequestId: "r-other" }),
    ]);
    expect(v.applied).toBe(false);
  });

  it("refuses to judge (INSTANCE_BUSY, nothing sent) while an instance is busy or unreadable", () => {
    for (const infos of [[info(A), info(B, { latestOperationState: "OPERATING" })], [info(A)]]) {
      let err: unknown;
      try {
        judge(input, { sentAt: 0, requestIds: [] }, infos);
      } catch (e) {
        err = e;
      }
      expect(isKeygateError(err) && err.reason).toBe("INSTANCE_BUSY");
    }
  });
});

describe("the send path", () => {
  it("a lost reply: no resend; the caller gets OK with the request id the cloud shows, after the horizon", async () => {
    const t = setup();
    t.cloud.script.push("lost");
    const res = (await t.run(t.associate())) as AssociateResult;
    expect(res.requestId).toBe("req-1");
    expect(res.instances).toEqual([{ instanceId: A, state: "SUCCESS", message: "" }]);
    expect(t.cloud.calls).toHaveLength(1);
    expect(t.cloud.applies).toEqual(["req-1"]);
    const sentAt = t.cloud.calls[0] ?? 0;
    expect(t.cloud.describes.every((d) => d >= sentAt + HORIZON)).toBe(true);
    expect(t.marks.map(([p]) => p)).toEqual(["sending", "uncertain", "sent"]);
    expect(t.marks[2]?.[1]).toEqual({ requestId: "req-1" });
    expect(t.audits[0]).toMatchObject({ attempts: 1, upstreamRequestId: "req-1", decision: "allowed" });
  });

  it("a refusal with a code leaves the record claimed: nothing is on its way, a rerun need not wait", async () => {
    const t = setup();
    t.cloud.script.push("mfa");
    const err = await t.run(t.associate());
    expect(err).toMatchObject({ kind: "failed_precondition", reason: "UnauthorizedOperation.MFAExpired" });
    expect(t.cloud.calls).toHaveLength(1);
    expect(t.marks.map(([p]) => p)).toEqual(["sending", "claimed"]);
  });

  it("a send that never reached the cloud is sent again once reconciling shows nothing applied", async () => {
    const t = setup();
    t.cloud.script.push("internal");
    const res = await t.run(t.associate());
    expect(res).toMatchObject({ requestId: "req-2" });
    expect(t.cloud.calls).toHaveLength(2);
    // A coded answer: the request arrived, so only the backoff and the idle check come before the resend.
    const gap = (t.cloud.calls[1] ?? 0) - (t.cloud.calls[0] ?? 0);
    expect(gap).toBeGreaterThanOrEqual(300);
    expect(gap).toBeLessThan(HORIZON);
    expect(t.cloud.describes.length).toBeGreaterThan(0);
    expect(t.audits[0]?.attempts).toBe(2);
  });

  it("inherited `sent` with a request id: never sends, watches that task and answers with its id", async () => {
    const t = setup({ inherited: { phase: "sent", sentAt: 1, requestId: "req-old" } });
    t.cloud.bind(A, [K1], "req-old");
    const res = (await t.run(t.associate())) as AssociateResult;
    expect(res.requestId).toBe("req-old");
    expect(t.cloud.calls).toHaveLength(0);
  });

  it.each(["sending", "uncertain"] as const)(
    "inherited `%s` whose call the cloud applied: OK with the id found, no send",
    async (phase) => {
      const t = setup({ inherited: { phase, sentAt: 1 } });
      t.cloud.bind(A, [K1], "req-applied");
      const res = (await t.run(t.associate())) as AssociateResult;
      expect(res.requestId).toBe("req-applied");
      expect(t.cloud.calls).toHaveLength(0);
      expect(t.marks.map(([p]) => p)).toEqual(["uncertain", "sent"]);
    },
  );

  it("inherited `sending` whose call never arrived: sent once, not before the horizon", async () => {
    const t = setup({ inherited: { phase: "sending", sentAt: new FakeClock().now() } });
    const res = (await t.run(t.associate())) as AssociateResult;
    expect(res.requestId).toBe("req-1");
    expect(t.cloud.calls).toHaveLength(1);
    expect(t.cloud.calls[0]).toBeGreaterThanOrEqual(new FakeClock().now() + HORIZON);
  });

  it("a rejected `sending` mark (another executor took over): nothing is sent", async () => {
    const t = setup({ reject: "sending" });
    const err = await t.run(t.associate());
    expect(isKeygateError(err)).toBe(true);
    expect(t.cloud.calls).toHaveLength(0);
  });

  it("busy while idle: at most retryPolicy.maxCloudCalls calls, each retry backed off longer", async () => {
    const t = setup();
    for (let i = 0; i < 20; i++) t.cloud.script.push("busy");
    const err = await t.run(t.associate());
    expect(err).toMatchObject({ upstreamCode: "MutexOperation.TaskRunning" });
    expect(t.cloud.calls).toHaveLength(retryPolicy.maxCloudCalls);
    const gaps = t.cloud.calls.slice(1).map((c, i) => c - (t.cloud.calls[i] ?? 0));
    for (let i = 1; i < gaps.length; i++) expect(gaps[i]).toBeGreaterThan(gaps[i - 1] ?? 0);
    expect(gaps[0]).toBeGreaterThanOrEqual(300);
    expect(t.audits[0]?.attempts).toBe(retryPolicy.maxCloudCalls);
  });

  it("store suspect + idempotency key whose keys are bound: OK with the id found, no send", async () => {
    const t = setup({ suspect: true });
    t.cloud.bind(A, [K1], "req-before-the-store-was-lost");
    const res = (await t.run(t.associate([A], "deploy-1"))) as AssociateResult;
    expect(res.requestId).toBe("req-before-the-store-was-lost");
    expect(t.cloud.calls).toHaveLength(0);
  });

  it("store suspect: the instances are verified idle before a send (a foreign task is waited out)", async () => {
    const t = setup({ suspect: true });
    t.cloud.foreignTask(A, 3_000);
    const started = t.clock.now();
    const res = (await t.run(t.associate())) as AssociateResult;
    expect(res.requestId).toBe("req-1");
    expect(t.cloud.calls[0]).toBeGreaterThanOrEqual(started + 3_000);
    expect(t.cloud.describes[0]).toBe(started);
  });

  it("a lease taken over from an expired holder: waits until the instances are idle before sending", async () => {
    const t = setup({
      leases: () => ({
        acquire: () =>
          Promise.resolve({
            fence: 2,
            lost: new AbortController().signal,
            tookOver: true,
            release: () => Promise.resolve(),
          }),
        close: () => Promise.resolve(),
      }),
    });
    t.cloud.foreignTask(A, 2_500);
    const started = t.clock.now();
    await t.run(t.associate());
    expect(t.cloud.calls).toHaveLength(1);
    expect(t.cloud.calls[0]).toBeGreaterThanOrEqual(started + 2_500);
  });

  it("a fresh lease on a trusted store sends at once, without asking the cloud first", async () => {
    const t = setup();
    const started = t.clock.now();
    await t.run(t.associate());
    expect(t.cloud.calls).toEqual([started]);
  });
});
