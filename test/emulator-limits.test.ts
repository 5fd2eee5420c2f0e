import fc from "fast-check";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { FakeClock } from "./support/fake-clock.js";
import { isKeygateError } from "../src/core/errors.js";
import {
  createEmulator,
  EMULATOR_SECRET_ID,
  EMULATOR_SECRET_KEY,
  maxInSlidingWindow,
  type Emulator,
} from "../src/upstream/emulator/index.js";
import { createSlidingWindowLimiter } from "../src/upstream/emulator/sliding-window.js";
import { createTencentUpstream, type TencentUpstream } from "../src/upstream/tencent-upstream.js";

const opts = () => ({ signal: new AbortController().signal });

describe("maxInSlidingWindow", () => {
  it("counts arrivals less than a window apart", () => {
    expect(maxInSlidingWindow([], 1000)).toBe(0);
    expect(maxInSlidingWindow([0, 999], 1000)).toBe(2);
    expect(maxInSlidingWindow([0, 1000], 1000)).toBe(1);
    expect(maxInSlidingWindow([5, 0, 500, 1200, 1499], 1000)).toBe(3);
  });

  it("equals a brute-force count", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 5000 }), { maxLength: 60 }), (times) => {
        const brute = Math.max(0, ...times.map((t) => times.filter((u) => u >= t && u < t + 1000).length));
        expect(maxInSlidingWindow(times, 1000)).toBe(brute);
      }),
    );
  });
});

describe("sliding-window limiter", () => {
  it("never admits more than the limit in any window, and rejected arrivals count", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 300 }), { minLength: 1, maxLength: 120 }),
        fc.integer({ min: 1, max: 12 }),
        (gaps, limit) => {
          const limiter = createSlidingWindowLimiter({ limit, windowMs: 1000 });
          let t = 0;
          const all: number[] = [];
          const admitted: number[] = [];
          for (const gap of gaps) {
            t += gap;
            const before = all.filter((u) => u > t - 1000).length;
            const ok = limiter.admit("k", t);
            expect(ok).toBe(before < limit);
            all.push(t);
            if (ok) admitted.push(t);
          }
          expect(maxInSlidingWindow(admitted, 1000)).toBeLessThanOrEqual(limit);
        },
      ),
    );
  });
});

describe("emulator rate limits (fake clock: every call arrives at the same instant)", () => {
  const clock = new FakeClock(Date.now());
  let emu: Emulator;
  let up: TencentUpstream;
  beforeAll(async () => {
    emu = await createEmulator({ clock, taskMs: 10 });
    up = createTencentUpstream({
      upstreamUrl: emu.url,
      credential: { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY },
    });
  });
  afterEach(() => emu.reset());
  afterAll(async () => {
    up.close();
    await emu.close();
  });

  const codes = async (calls: Promise<unknown>[]) =>
    (await Promise.allSettled(calls)).map((r) =>
      r.status === "fulfilled"
        ? "OK"
        : isKeygateError(r.reason)
          ? (r.reason.upstreamCode ?? r.reason.reason)
          : "?",
    );
  const associate = () =>
    up.associateInstancesKeyPairs(
      { region: "ap-guangzhou", instanceIds: ["ins-zzzzzzzz"], keyIds: ["skey-aaaaaaaa"], forceStop: false },
      opts(),
    );

  it("11 associate calls in one second: exactly one RequestLimitExceeded", async () => {
    const out = await codes(Array.from({ length: 11 }, associate));
    expect(out.filter((c) => c === "RequestLimitExceeded")).toHaveLength(1);
    expect(emu.stats.maxInWindow({ action: "AssociateInstancesKeyPairs" })).toBe(11);
  });

  it("rejected calls keep the window full until it slides", async () => {
    await codes(Array.from({ length: 10 }, associate));
    await clock.advance(500);
    expect(await codes([associate()])).toEqual(["RequestLimitExceeded"]);
    await clock.advance(499);
    expect(await codes([associate()])).toEqual(["RequestLimitExceeded"]);
    // 1000 ms after the first ten, they leave the window; the two rejected ones are still in it.
    await clock.advance(1);
    const out = await codes(Array.from({ length: 9 }, associate));
    expect(out.filter((c) => c === "RequestLimitExceeded")).toHaveLength(1);
  });

  it("DescribeInstances has its own bucket of 40", async () => {
    await codes(Array.from({ length: 10 }, associate));
    const out = await codes(
      Array.from({ length: 41 }, () => up.describeInstances("ap-guangzhou", ["ins-gz000001"], opts())),
    );
    expect(out.filter((c) => c === "RequestLimitExceeded")).toHaveLength(1);
    expect(out.filter((c) => c === "OK")).toHaveLength(40);
  });

  it("counts per SecretId", async () => {
    const other = await createEmulator({
      clock,
      credentials: { [EMULATOR_SECRET_ID]: EMULATOR_SECRET_KEY, AKIDSECOND: "second-key" },
    });
    const second = createTencentUpstream({
      upstreamUrl: other.url,
      credential: { secretId: "AKIDSECOND", secretKey: "second-key" },
    });
    const first = createTencentUpstream({
      upstreamUrl: other.url,
      credential: { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY },
    });
    try {
      const input = {
        region: "ap-guangzhou",
        instanceIds: ["ins-zzzzzzzz"],
        keyIds: ["skey-aaaaaaaa"],
        forceStop: false,
      };
      const out = await codes([
        ...Array.from({ length: 10 }, () => first.associateInstancesKeyPairs(input, opts())),
        ...Array.from({ length: 10 }, () => second.associateInstancesKeyPairs(input, opts())),
      ]);
      expect(out).not.toContain("RequestLimitExceeded");
    } finally {
      first.close();
      second.close();
      await other.close();
    }
  });
});
