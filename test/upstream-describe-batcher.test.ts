/**
 * The describe batcher's merging, fan-out, pacing, cancellation and failure rules, on the fake clock
 * with a scripted metered describe (the token's arrival and the cloud's answer are driven by the test).
 */
import { describe, expect, it } from "vitest";
import { FakeClock } from "./support/fake-clock.js";
import { isKeygateError, keygateError } from "../src/core/errors.js";
import type { InstanceInfo } from "../src/core/model.js";
import type { CallOptions } from "../src/core/ports.js";
import { createTaskWatcher } from "../src/leases/task-watcher.js";
import { createDescribeBatcher } from "../src/upstream/describe-batcher.js";
import type { DescribeFor, LazyMeteredDescribe } from "../src/upstream/metered-describe.js";

const info = (id: string, state: InstanceInfo["latestOperationState"] = "SUCCESS"): InstanceInfo => ({
  instanceId: id,
  instanceState: "RUNNING",
  osName: "Ubuntu",
  projectId: 0,
  tags: {},
  keyIds: [],
  latestOperation: "AssociateInstancesKeyPairs",
  latestOperationState: state,
  latestOperationRequestId: "req-1",
  latestOperationErrorMsg: null,
});

interface Call {
  region: string;
  call: CallOptions & DescribeFor;
  /** The ids sent: read when the test hands out the token. */
  sent?: string[];
  lazy: boolean;
  ids: string[] | (() => string[]);
  answer(found: InstanceInfo[]): void;
  fail(err: unknown): void;
}

/**
 * A metered describe whose token and answer the test hands out. In `auto` mode the token comes at
 * once (ids read) and the cloud answers every id that `known` has, after a tick.
 */
function scripted(opts: { auto?: boolean; known?: (id: string) => InstanceInfo | undefined } = {}) {
  const calls: Call[] = [];
  const known = opts.known ?? ((id: string) => info(id));
  const describe: LazyMeteredDescribe = (region, ids, call) =>
    new Promise<InstanceInfo[]>((resolve, reject) => {
      const c: Call = { region, call, ids, lazy: typeof ids === "function", answer: resolve, fail: reject };
      call.signal.addEventListener("abort", () => reject(call.signal.reason as Error), { once: true });
      calls.push(c);
      if (opts.auto) {
        const sent = token(c);
        setImmediate(() => resolve(sent.flatMap((id) => known(id) ?? [])));
      }
    });
  function token(c: Call): string[] {
    c.sent = typeof c.ids === "function" ? c.ids() : c.ids;
    return c.sent;
  }
  /** Hands out the token of call `i` and answers every id it sent. */
  function grantAndAnswer(i: number): void {
    const c = calls[i]!;
    c.answer(token(c).flatMap((id) => known(id) ?? []));
  }
  return { calls, describe, token, grantAndAnswer };
}

function track<T>(p: Promise<T>) {
  const s: { done: boolean; value?: T; error?: unknown } = { done: false };
  p.then(
    (value) => Object.assign(s, { done: true, value }),
    (error: unknown) => Object.assign(s, { done: true, error }),
  );
  return s;
}

/** Lets every pending answer travel through the promise chains. */
async function settle(clock: FakeClock): Promise<void> {
  for (let i = 0; i < 5; i++) await clock.advance(0);
}

const open = (deadline?: number): CallOptions => ({ signal: new AbortController().signal, deadline });
const idsOf = (infos: InstanceInfo[] | undefined) => (infos ?? []).map((i) => i.instanceId).sort();
const ins = (n: number) => `ins-${String(n).padStart(8, "0")}`;
const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => ins(from + i));
const R = "ap-guangzhou";

describe("describe batcher", () => {
  it("merges concurrent requests of one region into one call with each id once; each gets only its own", async () => {
    const clock = new FakeClock();
    const cloud = scripted();
    const batch = createDescribeBatcher({ describe: cloud.describe, clock, gapMs: 250 });
    const a = track(batch(R, [ins(1), ins(2)], open()));
    const b = track(batch(R, [ins(2), ins(3), ins(3)], open()));
    const c = track(batch(R, [ins(9)], open()));
    const other = track(batch("ap-shanghai", [ins(1)], open()));
    await clock.advance(0);
    expect(cloud.calls.map((c) => c.region).sort()).toEqual(["ap-guangzhou", "ap-shanghai"]);
    const gz = cloud.calls.findIndex((c) => c.region === R);
    // ins-9 does not exist: the cloud leaves it out, so its requester gets an empty answer.
    const known = cloud.token(cloud.calls[gz]!);
    expect(known.sort()).toEqual([ins(1), ins(2), ins(3), ins(9)]);
    expect(cloud.calls[gz]!.lazy).toBe(true);
    cloud.calls[gz]!.answer([info(ins(1)), info(ins(2)), info(ins(3))]);
    cloud.grantAndAnswer(1 - gz);
    await clock.advance(0);
    expect(idsOf(a.value)).toEqual([ins(1), ins(2)]);
    expect(idsOf(b.value)).toEqual([ins(2), ins(3)]);
    expect(c.value).toEqual([]);
    expect(idsOf(other.value)).toEqual([ins(1)]);
    expect(cloud.calls).toHaveLength(2);
  });

  it("takes in requests until the token arrives; later ones go in the next call, after the pacing gap", async () => {
    const clock = new FakeClock();
    const cloud = scripted();
    const merged: [number, number][] = [];
    const batch = createDescribeBatcher({
      describe: cloud.describe,
      clock,
      gapMs: 250,
      hooks: { merged: (ids, requests) => merged.push([ids, requests]) },
    });
    // An idle replica sends a lone request at once: merging adds no wait when nothing is queued.
    const first = track(batch(R, [ins(1)], open()));
    await clock.advance(0);
    expect(cloud.calls).toHaveLength(1);
    // The call waits for its token (the bucket is busy): requests made meanwhile ride along.
    const second = track(batch(R, [ins(2)], open()));
    await clock.advance(100);
    expect(cloud.calls).toHaveLength(1);
    cloud.grantAndAnswer(0);
    await clock.advance(0);
    expect(idsOf(first.value)).toEqual([ins(1)]);
    expect(idsOf(second.value)).toEqual([ins(2)]);
    expect(cloud.calls[0]!.sent).toEqual([ins(1), ins(2)]);
    expect(merged).toEqual([[2, 2]]);

    // The next partial call waits until 250 ms after the previous one went, gathering what comes.
    const third = track(batch(R, [ins(3)], open()));
    await clock.advance(100); // t = 200
    const fourth = track(batch(R, [ins(4), ins(3)], open()));
    await clock.advance(40); // t = 240
    expect(cloud.calls).toHaveLength(1);
    await clock.advance(10); // t = 250
    expect(cloud.calls).toHaveLength(2);
    cloud.grantAndAnswer(1);
    await clock.advance(0);
    expect(cloud.calls[1]!.sent).toEqual([ins(3), ins(4)]);
    expect(idsOf(third.value)).toEqual([ins(3)]);
    expect(idsOf(fourth.value)).toEqual([ins(3), ins(4)]);
    expect(merged).toEqual([
      [2, 2],
      [2, 2],
    ]);
  });

  it("never sends more than 100 ids in a call; a full call goes at once, without the pacing gap", async () => {
    const clock = new FakeClock();
    const cloud = scripted({ auto: true });
    const batch = createDescribeBatcher({ describe: cloud.describe, clock, gapMs: 250 });
    // Occupy the pacing gap with one partial call.
    await batch(R, [ins(0)], open());
    const requests = Array.from({ length: 25 }, (_, i) =>
      track(batch(R, range(1 + i * 10, 11 + i * 10), open())),
    );
    await clock.advance(0);
    // 250 ids: two full calls went at once; the last 50 wait for the gap.
    expect(cloud.calls.slice(1).map((c) => c.sent?.length)).toEqual([100, 100]);
    expect(requests.filter((r) => r.done)).toHaveLength(20);
    await clock.advance(250);
    expect(cloud.calls.slice(1).map((c) => c.sent?.length)).toEqual([100, 100, 50]);
    const sent = cloud.calls.slice(1).flatMap((c) => c.sent ?? []);
    expect(new Set(sent).size).toBe(250);
    for (const [i, r] of requests.entries()) expect(idsOf(r.value)).toEqual(range(1 + i * 10, 11 + i * 10));
  });

  it("a request larger than what is left in the open call spans two calls and gets both answers", async () => {
    const clock = new FakeClock();
    const cloud = scripted({ auto: true });
    const batch = createDescribeBatcher({ describe: cloud.describe, clock, gapMs: 0 });
    const a = track(batch(R, range(0, 60), open()));
    const b = track(batch(R, range(30, 130), open())); // 30 shared, 70 new: 40 fit, 30 go on
    await settle(clock);
    expect(cloud.calls.map((c) => c.sent?.length)).toEqual([100, 30]);
    expect(idsOf(a.value)).toEqual(range(0, 60));
    expect(idsOf(b.value)).toEqual(range(30, 130));
  });

  it("one requester leaving does not cancel the call for the others; its ids are dropped if not yet sent", async () => {
    const clock = new FakeClock();
    const cloud = scripted();
    const batch = createDescribeBatcher({ describe: cloud.describe, clock, gapMs: 250 });
    const leaver = new AbortController();
    const gone = track(batch(R, [ins(1), ins(2)], { signal: leaver.signal }));
    const stays = track(batch(R, [ins(2), ins(3)], open()));
    await clock.advance(0);
    leaver.abort();
    await clock.advance(0);
    expect(isKeygateError(gone.error) && gone.error.reason).toBe("CANCELLED");
    expect(cloud.calls[0]!.call.signal.aborted).toBe(false);
    cloud.grantAndAnswer(0);
    await clock.advance(0);
    expect(cloud.calls[0]!.sent).toEqual([ins(2), ins(3)]);
    expect(idsOf(stays.value)).toEqual([ins(2), ins(3)]);
  });

  it("a requester leaving after the send does not abort the call; the last one leaving does", async () => {
    const clock = new FakeClock();
    const cloud = scripted();
    const batch = createDescribeBatcher({ describe: cloud.describe, clock, gapMs: 250 });
    const [x, y] = [new AbortController(), new AbortController()];
    const first = track(batch(R, [ins(1)], { signal: x.signal }));
    const second = track(batch(R, [ins(1)], { signal: y.signal }));
    await clock.advance(0);
    cloud.token(cloud.calls[0]!); // sent, no answer yet
    x.abort();
    await clock.advance(0);
    expect(cloud.calls[0]!.call.signal.aborted).toBe(false);
    expect(second.done).toBe(false);
    y.abort();
    await clock.advance(0);
    expect(cloud.calls[0]!.call.signal.aborted).toBe(true);
    expect(first.done && second.done).toBe(true);
    // Nothing is left behind: the next request starts a fresh call.
    const next = track(batch(R, [ins(1)], open()));
    await clock.advance(250);
    expect(cloud.calls).toHaveLength(2);
    cloud.grantAndAnswer(1);
    await clock.advance(0);
    expect(idsOf(next.value)).toEqual([ins(1)]);
  });

  it("every request keeps its own deadline", async () => {
    const clock = new FakeClock();
    const cloud = scripted();
    const batch = createDescribeBatcher({ describe: cloud.describe, clock, gapMs: 250 });
    const short = track(batch(R, [ins(1)], open(clock.now() + 300)));
    const long = track(batch(R, [ins(2)], open(clock.now() + 5_000)));
    const none = track(batch(R, [ins(3)], open()));
    await clock.advance(300);
    expect(isKeygateError(short.error) && short.error.reason).toBe("DEADLINE_EXCEEDED");
    expect(long.done || none.done).toBe(false);
    // The call itself carries no deadline of one member: the others may wait longer.
    expect(cloud.calls[0]!.call.deadline).toBeUndefined();
    cloud.grantAndAnswer(0);
    await clock.advance(0);
    expect(cloud.calls[0]!.sent).toEqual([ins(2), ins(3)]);
    expect(idsOf(long.value)).toEqual([ins(2)]);
    expect(idsOf(none.value)).toEqual([ins(3)]);
  });

  it("a failed call fails every request it carried with the same error; the next poll sends anew", async () => {
    const clock = new FakeClock();
    const cloud = scripted();
    const batch = createDescribeBatcher({ describe: cloud.describe, clock, gapMs: 0 });
    const a = track(batch(R, [ins(1)], open()));
    const b = track(batch(R, [ins(2)], open()));
    await clock.advance(0);
    const down = keygateError("STORE_UNAVAILABLE", "the shared store could not be reached (test)");
    cloud.token(cloud.calls[0]!);
    cloud.calls[0]!.fail(down);
    await clock.advance(0);
    expect(a.error).toBe(down);
    expect(b.error).toBe(down);
    const again = track(batch(R, [ins(1)], open()));
    await clock.advance(0);
    cloud.grantAndAnswer(1);
    await clock.advance(0);
    expect(idsOf(again.value)).toEqual([ins(1)]);
  });

  it("a tenant's policy lookup is not merged: it goes through as asked, charged to that tenant", async () => {
    const clock = new FakeClock();
    const cloud = scripted({ auto: true });
    const batch = createDescribeBatcher({ describe: cloud.describe, clock, gapMs: 250 });
    const tenant = { name: "team-a", weight: 1 };
    const polled = track(batch(R, [ins(1)], open()));
    const looked = track(batch(R, [ins(1), ins(2)], { ...open(), tenant }));
    await settle(clock);
    expect(cloud.calls).toHaveLength(2);
    const lookup = cloud.calls.find((c) => c.call.tenant !== undefined)!;
    expect(lookup.lazy).toBe(false);
    expect(lookup.call.tenant).toEqual(tenant);
    expect(cloud.calls.find((c) => c.call.tenant === undefined)!.call.tenant).toBeUndefined();
    expect(idsOf(polled.value)).toEqual([ins(1)]);
    expect(idsOf(looked.value)).toEqual([ins(1), ins(2)]);
  });

  it("refuses nothing it was not asked: an empty request sends nothing, an aborted one is not queued", async () => {
    const clock = new FakeClock();
    const cloud = scripted({ auto: true });
    const batch = createDescribeBatcher({ describe: cloud.describe, clock, gapMs: 0 });
    expect(await batch(R, [], open())).toEqual([]);
    const gone = new AbortController();
    gone.abort();
    await expect(batch(R, [ins(1)], { signal: gone.signal })).rejects.toMatchObject({ reason: "CANCELLED" });
    await clock.advance(0);
    expect(cloud.calls).toHaveLength(0);
  });

  it("150 instances watched by 50 task watchers take a few merged calls per round instead of 50", async () => {
    const clock = new FakeClock();
    let finished = false;
    const cloud = scripted({ auto: true, known: (id) => info(id, finished ? "SUCCESS" : "OPERATING") });
    const merged = createTaskWatcher({
      describe: createDescribeBatcher({ describe: cloud.describe, clock, gapMs: 250 }),
      clock,
      pollMs: 500,
    });
    const watches = Array.from({ length: 50 }, (_, i) =>
      track(merged.waitForTasks(R, range(i * 3, i * 3 + 3), "req-1", open())),
    );
    // Polling while every task runs.
    for (let t = 0; t < 2_500; t += 50) await clock.advance(50);
    const mergedCalls = cloud.calls.length;
    finished = true;
    for (let t = 0; t < 1_000; t += 50) await clock.advance(50);
    expect(watches.every((w) => w.done && w.value?.every((o) => o.state === "SUCCESS"))).toBe(true);
    // Six rounds (t = 0, 500, ..., 2500). Per round: one full call of 100 ids, and what does not fit
    // goes in at most two partial calls (the first poll of a round may leave before the rest arrive;
    // the next partial call waits for the gap). Per-caller polling would have sent 50 per round.
    expect(Math.max(...cloud.calls.map((c) => c.sent?.length ?? 0))).toBe(100);
    expect(mergedCalls).toBeLessThanOrEqual(3 * 6);
    expect(mergedCalls).toBeGreaterThanOrEqual(2 * 6);
  });

  it("an idle check through merged polls still fails fast with STORE_UNAVAILABLE", async () => {
    const clock = new FakeClock();
    const down = keygateError("STORE_UNAVAILABLE", "the shared store could not be reached (test)");
    const describe: LazyMeteredDescribe = () => Promise.reject(down);
    const watcher = createTaskWatcher({
      describe: createDescribeBatcher({ describe, clock, gapMs: 250 }),
      clock,
    });
    const idle = track(watcher.waitUntilIdle(R, [ins(1)], open(clock.now() + 10_000)));
    await clock.advance(0);
    expect(idle.error).toBe(down);
  });
});
