import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { fingerprintOf } from "../src/core/fingerprint.js";
import { decodeOutcome, encodeOutcome, failureOutcome, isDefinitive, settle } from "../src/dedup/outcome.js";
import { KeygateError, keygateError } from "../src/core/errors.js";

const id = (prefix: string) => fc.stringMatching(/^[a-z0-9]{8}$/).map((s) => prefix + s);
const input = fc.record({
  region: fc.constantFrom("ap-guangzhou", "ap-shanghai"),
  instanceIds: fc.array(id("ins-"), { minLength: 1, maxLength: 20 }),
  keyIds: fc.array(id("skey-"), { minLength: 1, maxLength: 5 }),
  forceStop: fc.boolean(),
});

describe("fingerprintOf", () => {
  it("ignores order and repetition of ids", () => {
    fc.assert(
      fc.property(input, fc.integer(), (i, seed) => {
        const shuffle = <T>(xs: T[]) =>
          xs
            .map((x, n) => ({ x, k: Math.sin(seed + n) }))
            .sort((a, b) => a.k - b.k)
            .map((e) => e.x);
        const same = {
          ...i,
          instanceIds: shuffle([...i.instanceIds, ...i.instanceIds.slice(0, 2)]),
          keyIds: shuffle([...i.keyIds, ...i.keyIds.slice(0, 1)]),
        };
        expect(fingerprintOf("scope", same, false)).toBe(fingerprintOf("scope", i, false));
      }),
    );
  });

  it("tells apart anything that changes the request", () => {
    fc.assert(
      fc.property(input, input, (a, b) => {
        const setOf = (xs: string[]) => [...new Set(xs)].sort().join();
        const same =
          a.region === b.region &&
          a.forceStop === b.forceStop &&
          setOf(a.instanceIds) === setOf(b.instanceIds) &&
          setOf(a.keyIds) === setOf(b.keyIds);
        expect(fingerprintOf("s", a, false) === fingerprintOf("s", b, false)).toBe(same);
      }),
    );
  });

  it("depends on the credential scope and is a sha256 hex", () => {
    const i = {
      region: "ap-guangzhou",
      instanceIds: ["ins-aaaaaaaa"],
      keyIds: ["skey-aaaaaaaa"],
      forceStop: false,
    };
    expect(fingerprintOf("one", i, false)).not.toBe(fingerprintOf("two", i, false));
    expect(fingerprintOf("one", i, false)).toMatch(/^[0-9a-f]{64}$/);
    expect(fingerprintOf("s", { ...i, forceStop: true }, false)).not.toBe(fingerprintOf("s", i, false));
  });
});

describe("outcomes", () => {
  it("round-trip an upstream error as a KeygateError with every field", () => {
    const e = new KeygateError({
      kind: "aborted",
      reason: "MutexOperation.TaskRunning",
      message: "busy",
      upstreamCode: "MutexOperation.TaskRunning",
      upstreamRequestId: "up-9",
      retryAfterMs: 250,
    });
    const o = decodeOutcome(encodeOutcome(failureOutcome(e)));
    expect(isDefinitive(o)).toBe(true);
    const thrown = (() => {
      try {
        settle(o, true);
      } catch (x) {
        return x as KeygateError;
      }
    })();
    expect(thrown).toBeInstanceOf(KeygateError);
    expect({ ...thrown, message: thrown?.message }).toMatchObject({
      kind: "aborted",
      reason: "MutexOperation.TaskRunning",
      message: "busy",
      upstreamCode: "MutexOperation.TaskRunning",
      upstreamRequestId: "up-9",
      retryAfterMs: 250,
    });
  });

  it("only results and upstream answers are definitive", () => {
    expect(isDefinitive({ ok: true, result: { requestId: "r", deduplicated: false, instances: [] } })).toBe(
      true,
    );
    for (const reason of [
      "RATE_LIMITED",
      "STORE_UNAVAILABLE",
      "INSTANCE_BUSY",
      "CANCELLED",
      "UPSTREAM_UNAVAILABLE",
    ] as const) {
      expect(isDefinitive(failureOutcome(keygateError(reason, "x")))).toBe(false);
    }
  });

  it("a corrupt stored outcome becomes INTERNAL instead of being trusted", () => {
    expect(decodeOutcome("{not json")).toMatchObject({ ok: false, error: { reason: "INTERNAL" } });
    expect(decodeOutcome('{"ok":true}')).toMatchObject({ ok: false, error: { reason: "INTERNAL" } });
  });
});
