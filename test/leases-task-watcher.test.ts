import { describe, expect, it } from "vitest";
import { FakeClock } from "./support/fake-clock.js";
import { isKeygateError } from "../src/core/errors.js";
import type { InstanceInfo, TaskState } from "../src/core/model.js";
import type { CallOptions } from "../src/core/ports.js";
import { createTaskWatcher } from "../src/leases/task-watcher.js";

/** A scripted cloud: each instance's latest operation, changed by the test between polls. */
function fakeCloud() {
  const ops = new Map<string, { requestId: string | null; state: TaskState | null; error?: string }>();
  const calls: string[][] = [];
  let failNext = 0;
  const describe = (_region: string, ids: string[], _opts: CallOptions): Promise<InstanceInfo[]> => {
    calls.push(ids);
    if (failNext > 0) {
      failNext--;
      return Promise.reject(new Error("RequestLimitExceeded"));
    }
    return Promise.resolve(
      ids.flatMap((id) => {
        const op = ops.get(id);
        if (!op) return [];
        return [
          {
            instanceId: id,
            instanceState: "RUNNING",
            osName: "Ubuntu",
            projectId: 0,
            tags: {},
            keyIds: [],
            latestOperation: "AssociateInstancesKeyPairs",
            latestOperationState: op.state,
            latestOperationRequestId: op.requestId,
            latestOperationErrorMsg: op.error ?? null,
          },
        ];
      }),
    );
  };
  return { ops, calls, describe, failNextCalls: (n: number) => (failNext = n) };
}

const ids = (n: number) => Array.from({ length: n }, (_, i) => `ins-${String(i).padStart(8, "0")}`);
const opts = (deadline?: number): CallOptions => ({ signal: new AbortController().signal, deadline });

function watch<T>(p: Promise<T>) {
  const s: { done: boolean; value?: T; error?: unknown } = { done: false };
  p.then(
    (value) => Object.assign(s, { done: true, value }),
    (error: unknown) => Object.assign(s, { done: true, error }),
  );
  return s;
}

describe("task watcher", () => {
  it("waits until every instance shows our request finished; a previous request's state does not count", async () => {
    const clock = new FakeClock();
    const cloud = fakeCloud();
    cloud.ops.set("ins-00000001", { requestId: "old", state: "SUCCESS" });
    cloud.ops.set("ins-00000002", { requestId: "req-1", state: "OPERATING" });
    const w = watch(
      createTaskWatcher({ describe: cloud.describe, clock }).waitForTasks(
        "ap-guangzhou",
        ["ins-00000001", "ins-00000002"],
        "req-1",
        opts(),
      ),
    );
    await clock.advance(0);
    await clock.advance(500);
    expect(w.done).toBe(false);
    cloud.ops.set("ins-00000001", { requestId: "req-1", state: "SUCCESS" });
    cloud.ops.set("ins-00000002", { requestId: "req-1", state: "FAILED", error: "disk busy" });
    await clock.advance(500);
    expect(w.value).toEqual([
      { instanceId: "ins-00000001", state: "SUCCESS", message: "" },
      { instanceId: "ins-00000002", state: "FAILED", message: "disk busy" },
    ]);
    expect(cloud.calls).toHaveLength(3);
    // Finished instances are not asked about again.
    expect(cloud.calls[2]).toEqual(["ins-00000001", "ins-00000002"]);
  });

  it("concludes a task was replaced once the instance stays idle under another operation's record", async () => {
    const clock = new FakeClock();
    const cloud = fakeCloud();
    // Our task ran and ended between two polls, and a later operation (someone in the console) too.
    cloud.ops.set("ins-00000001", { requestId: "console-1", state: "SUCCESS" });
    const w = watch(
      createTaskWatcher({ describe: cloud.describe, clock, replacedAfterMs: 3_000 }).waitForTasks(
        "ap-guangzhou",
        ["ins-00000001"],
        "req-1",
        opts(),
      ),
    );
    await clock.advance(0);
    await clock.advance(2_500);
    // Within the grace (DescribeInstances may still be lagging behind our call): keep waiting.
    expect(w.done).toBe(false);
    await clock.advance(1_000);
    expect(w.value).toEqual([
      {
        instanceId: "ins-00000001",
        state: "OPERATING",
        message: expect.stringContaining("replaced this task's record") as unknown,
      },
    ]);
  });

  it("a foreign task that is still OPERATING restarts the grace", async () => {
    const clock = new FakeClock();
    const cloud = fakeCloud();
    cloud.ops.set("ins-00000001", { requestId: "old", state: "SUCCESS" });
    const w = watch(
      createTaskWatcher({ describe: cloud.describe, clock, replacedAfterMs: 3_000 }).waitForTasks(
        "ap-guangzhou",
        ["ins-00000001"],
        "req-1",
        opts(),
      ),
    );
    await clock.advance(0);
    await clock.advance(2_000);
    cloud.ops.set("ins-00000001", { requestId: "console-1", state: "OPERATING" });
    await clock.advance(1_500);
    cloud.ops.set("ins-00000001", { requestId: "console-1", state: "SUCCESS" });
    await clock.advance(2_000);
    expect(w.done).toBe(false);
    await clock.advance(1_500);
    expect(w.done).toBe(true);
  });

  it("asks DescribeInstances in batches of at most 100 and stops polling finished instances", async () => {
    const clock = new FakeClock();
    const cloud = fakeCloud();
    const all = ids(250);
    for (const id of all)
      cloud.ops.set(id, { requestId: "r", state: id < "ins-00000010" ? "OPERATING" : "SUCCESS" });
    const w = watch(
      createTaskWatcher({ describe: cloud.describe, clock }).waitForTasks("ap-guangzhou", all, "r", opts()),
    );
    await clock.advance(0);
    expect(cloud.calls.map((c) => c.length)).toEqual([100, 100, 50]);
    for (const id of all) cloud.ops.set(id, { requestId: "r", state: "SUCCESS" });
    await clock.advance(500);
    expect(cloud.calls.slice(3).map((c) => c.length)).toEqual([10]);
    expect(w.value?.every((o) => o.state === "SUCCESS")).toBe(true);
    expect(w.value).toHaveLength(250);
  });

  it("returns at the caller's deadline with unfinished instances OPERATING", async () => {
    const clock = new FakeClock();
    const cloud = fakeCloud();
    cloud.ops.set("ins-00000001", { requestId: "r", state: "OPERATING" });
    cloud.ops.set("ins-00000002", { requestId: "r", state: "SUCCESS" });
    const w = watch(
      createTaskWatcher({ describe: cloud.describe, clock, pollMs: 300 }).waitForTasks(
        "ap-guangzhou",
        ["ins-00000001", "ins-00000002", "ins-00000003"],
        "r",
        opts(clock.now() + 1_000),
      ),
    );
    await clock.advance(0);
    await clock.advance(999);
    expect(w.done).toBe(false);
    await clock.advance(1);
    expect(w.value?.map((o) => o.state)).toEqual(["OPERATING", "SUCCESS", "OPERATING"]);
  });

  it("gives up at maxWaitMs when the caller has no deadline", async () => {
    const clock = new FakeClock();
    const cloud = fakeCloud();
    cloud.ops.set("ins-00000001", { requestId: "r", state: "OPERATING" });
    const w = watch(
      createTaskWatcher({ describe: cloud.describe, clock, maxWaitMs: 5_000 }).waitForTasks(
        "r1",
        ["ins-00000001"],
        "r",
        opts(),
      ),
    );
    await clock.advance(0);
    await clock.advance(4_999);
    expect(w.done).toBe(false);
    await clock.advance(1);
    expect(w.value).toEqual([
      { instanceId: "ins-00000001", state: "OPERATING", message: expect.any(String) as string },
    ]);
  });

  it("keeps polling through DescribeInstances failures", async () => {
    const clock = new FakeClock();
    const cloud = fakeCloud();
    cloud.ops.set("ins-00000001", { requestId: "r", state: "SUCCESS" });
    cloud.failNextCalls(2);
    const w = watch(
      createTaskWatcher({ describe: cloud.describe, clock }).waitForTasks(
        "r1",
        ["ins-00000001"],
        "r",
        opts(),
      ),
    );
    await clock.advance(0);
    await clock.advance(1_000);
    expect(w.value?.[0]?.state).toBe("SUCCESS");
    expect(cloud.calls).toHaveLength(3);
  });

  it("stops with CANCELLED when the caller goes away", async () => {
    const clock = new FakeClock();
    const cloud = fakeCloud();
    cloud.ops.set("ins-00000001", { requestId: "r", state: "OPERATING" });
    const ctl = new AbortController();
    const w = watch(
      createTaskWatcher({ describe: cloud.describe, clock }).waitForTasks("r1", ["ins-00000001"], "r", {
        signal: ctl.signal,
      }),
    );
    await clock.advance(0);
    ctl.abort();
    await clock.advance(0);
    expect(isKeygateError(w.error) && w.error.reason).toBe("CANCELLED");
  });

  it("waitUntilIdle resolves once no instance is OPERATING, whoever started the task", async () => {
    const clock = new FakeClock();
    const cloud = fakeCloud();
    cloud.ops.set("ins-00000001", { requestId: "console", state: "OPERATING" });
    cloud.ops.set("ins-00000002", { requestId: null, state: null });
    const w = watch(
      createTaskWatcher({ describe: cloud.describe, clock }).waitUntilIdle(
        "r1",
        ["ins-00000001", "ins-00000002"],
        opts(),
      ),
    );
    await clock.advance(0);
    await clock.advance(1_500);
    expect(w.done).toBe(false);
    cloud.ops.set("ins-00000001", { requestId: "console", state: "FAILED" });
    await clock.advance(500);
    expect(w.done).toBe(true);
    expect(w.error).toBeUndefined();
    // The last view of each instance, for a caller that must know what it is sending onto.
    expect(
      w.value?.map((i) => [i.instanceId, i.latestOperationState, i.latestOperationRequestId]).sort(),
    ).toEqual([
      ["ins-00000001", "FAILED", "console"],
      ["ins-00000002", null, null],
    ]);
  });
});
