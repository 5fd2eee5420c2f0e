import { describe, expect, it } from "vitest";
import { FakeClock } from "./support/fake-clock.js";
import type { InstanceInfo } from "../src/core/model.js";
import type { CallOptions } from "../src/core/ports.js";
import { createInstanceCache } from "../src/policy/instance-cache.js";

function info(instanceId: string): InstanceInfo {
  return {
    instanceId,
    instanceState: "STOPPED",
    osName: "TencentOS",
    projectId: 1001,
    tags: { owner: "team-a" },
    keyIds: [],
    latestOperation: null,
    latestOperationState: null,
    latestOperationRequestId: null,
    latestOperationErrorMsg: null,
  };
}

interface Call {
  region: string;
  ids: string[];
  signal: AbortSignal;
  resolve: (infos: InstanceInfo[]) => void;
  reject: (e: Error) => void;
}

/** A DescribeInstances stand-in whose calls the test answers by hand; `existing` are the ids the cloud knows. */
function fakeCloud(existing: (id: string) => boolean = (id) => !id.includes("gone")) {
  const calls: Call[] = [];
  const describe = (region: string, ids: string[], opts: CallOptions) =>
    new Promise<InstanceInfo[]>((resolve, reject) => {
      calls.push({ region, ids, signal: opts.signal, resolve, reject });
    });
  /** Answers every pending call as the cloud would. */
  const answerAll = async () => {
    for (const c of calls.splice(0)) c.resolve(c.ids.filter(existing).map(info));
    await new Promise((r) => setImmediate(r));
  };
  return { calls, describe, answerAll };
}

const opts = (): CallOptions => ({ signal: new AbortController().signal });
const ids = (n: number, prefix = "a") =>
  Array.from({ length: n }, (_, i) => `ins-${prefix}${String(i).padStart(7, "0")}`);

describe("instance cache", () => {
  it("fetches a request's unknown ids in one call, 100 ids at most per call", async () => {
    const cloud = fakeCloud();
    const cache = createInstanceCache({ describe: cloud.describe, clock: new FakeClock() });
    const got = cache.get("ap-guangzhou", ids(250), opts());
    expect(cloud.calls.map((c) => c.ids.length)).toEqual([100, 100, 50]);
    await cloud.answerAll();
    const result = await got;
    expect(result.size).toBe(250);
    expect(result.get("ins-a0000249")?.instanceId).toBe("ins-a0000249");
  });

  it("answers from the cache until the TTL passes", async () => {
    const clock = new FakeClock();
    const cloud = fakeCloud();
    const cache = createInstanceCache({ describe: cloud.describe, clock, ttlMs: 5000 });
    const first = cache.get("ap-guangzhou", ["ins-a0000001"], opts());
    await cloud.answerAll();
    await first;
    await clock.advance(4999);
    expect((await cache.get("ap-guangzhou", ["ins-a0000001"], opts())).get("ins-a0000001")).toBeDefined();
    expect(cloud.calls).toHaveLength(0);
    await clock.advance(1);
    const again = cache.get("ap-guangzhou", ["ins-a0000001", "ins-a0000002"], opts());
    expect(cloud.calls.map((c) => c.ids)).toEqual([["ins-a0000001", "ins-a0000002"]]);
    await cloud.answerAll();
    expect((await again).size).toBe(2);
  });

  it("remembers 'not found' for a shorter time", async () => {
    const clock = new FakeClock();
    const cloud = fakeCloud();
    const cache = createInstanceCache({ describe: cloud.describe, clock, ttlMs: 5000, notFoundTtlMs: 1000 });
    const first = cache.get("ap-guangzhou", ["ins-gone0001"], opts());
    await cloud.answerAll();
    const result = await first;
    expect(result.has("ins-gone0001")).toBe(true);
    expect(result.get("ins-gone0001")).toBeUndefined();
    await clock.advance(999);
    await cache.get("ap-guangzhou", ["ins-gone0001"], opts());
    expect(cloud.calls).toHaveLength(0);
    await clock.advance(1);
    void cache.get("ap-guangzhou", ["ins-gone0001"], opts()).catch(() => undefined);
    expect(cloud.calls).toHaveLength(1);
    await cloud.answerAll();
  });

  it("lets concurrent lookups share the calls in flight, fetching only what nobody is fetching", async () => {
    const cloud = fakeCloud();
    const cache = createInstanceCache({ describe: cloud.describe, clock: new FakeClock() });
    const a = cache.get("ap-guangzhou", ["ins-a0000001", "ins-a0000002"], opts());
    const b = cache.get("ap-guangzhou", ["ins-a0000001", "ins-a0000002"], opts());
    const c = cache.get("ap-guangzhou", ["ins-a0000002", "ins-a0000003"], opts());
    expect(cloud.calls.map((x) => x.ids)).toEqual([["ins-a0000001", "ins-a0000002"], ["ins-a0000003"]]);
    await cloud.answerAll();
    expect([...(await a).keys()]).toEqual(["ins-a0000001", "ins-a0000002"]);
    expect([...(await b).keys()]).toEqual(["ins-a0000001", "ins-a0000002"]);
    expect([...(await c).keys()].sort()).toEqual(["ins-a0000002", "ins-a0000003"]);
  });

  it("keeps regions apart", async () => {
    const cloud = fakeCloud();
    const cache = createInstanceCache({ describe: cloud.describe, clock: new FakeClock() });
    const gz = cache.get("ap-guangzhou", ["ins-a0000001"], opts());
    const sh = cache.get("ap-shanghai", ["ins-a0000001"], opts());
    expect(cloud.calls.map((c) => c.region)).toEqual(["ap-guangzhou", "ap-shanghai"]);
    await cloud.answerAll();
    await Promise.all([gz, sh]);
  });

  it("does not cache a failure: every waiter gets it, the next lookup asks again", async () => {
    const cloud = fakeCloud();
    const cache = createInstanceCache({ describe: cloud.describe, clock: new FakeClock() });
    const a = cache.get("ap-guangzhou", ["ins-a0000001"], opts());
    const b = cache.get("ap-guangzhou", ["ins-a0000001"], opts());
    cloud.calls.splice(0)[0]!.reject(new Error("upstream unavailable"));
    await expect(a).rejects.toThrow("upstream unavailable");
    await expect(b).rejects.toThrow("upstream unavailable");
    const c = cache.get("ap-guangzhou", ["ins-a0000001"], opts());
    expect(cloud.calls).toHaveLength(1);
    await cloud.answerAll();
    expect((await c).get("ins-a0000001")).toBeDefined();
  });

  it("a caller that gives up leaves at once; the call is aborted only when every waiter left", async () => {
    const cloud = fakeCloud();
    const cache = createInstanceCache({ describe: cloud.describe, clock: new FakeClock() });
    const first = new AbortController();
    const second = new AbortController();
    const a = cache.get("ap-guangzhou", ["ins-a0000001"], { signal: first.signal });
    const b = cache.get("ap-guangzhou", ["ins-a0000001"], { signal: second.signal });
    const call = cloud.calls[0]!;
    first.abort(new Error("caller 1 went away"));
    await expect(a).rejects.toThrow("caller 1 went away");
    expect(call.signal.aborted).toBe(false);
    second.abort(new Error("caller 2 went away"));
    await expect(b).rejects.toThrow("caller 2 went away");
    expect(call.signal.aborted).toBe(true);
    // An abandoned call is not joined: the next lookup starts a fresh one.
    const c = cache.get("ap-guangzhou", ["ins-a0000001"], opts());
    expect(cloud.calls).toHaveLength(2);
    call.reject(new Error("aborted"));
    await cloud.answerAll();
    expect((await c).get("ins-a0000001")).toBeDefined();
  });

  it("refuses at once when the caller already gave up", async () => {
    const cloud = fakeCloud();
    const cache = createInstanceCache({ describe: cloud.describe, clock: new FakeClock() });
    const gone = new AbortController();
    gone.abort(new Error("gone"));
    await expect(cache.get("ap-guangzhou", ["ins-a0000001"], { signal: gone.signal })).rejects.toThrow(
      "gone",
    );
    expect(cloud.calls).toHaveLength(0);
  });

  it("stays within maxEntries, forgetting the oldest first, and forgets on invalidate", async () => {
    const cloud = fakeCloud();
    const cache = createInstanceCache({ describe: cloud.describe, clock: new FakeClock(), maxEntries: 3 });
    const got = cache.get("ap-guangzhou", ids(5), opts());
    await cloud.answerAll();
    await got;
    expect(cache.size).toBe(3);
    const again = cache.get("ap-guangzhou", ids(5), opts());
    expect(cloud.calls.map((c) => c.ids)).toEqual([ids(2)]);
    await cloud.answerAll();
    await again;
    cache.invalidate("ap-guangzhou", ["ins-a0000001"]);
    void cache.get("ap-guangzhou", ["ins-a0000001"], opts()).catch(() => undefined);
    expect(cloud.calls).toHaveLength(1);
    await cloud.answerAll();
  });
});
