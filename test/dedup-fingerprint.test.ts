import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { fingerprintOf } from "../src/core/fingerprint.js";
import { decodeOutcome, encodeOutcome, failureOutcome, isFinal, settle } from "../src/dedup/outcome.js";
import { KeygateError, keygateError, reasonCatalogue, type ErrorKind } from "../src/core/errors.js";

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
    expect(isFinal(o)).toBe(false);
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

  // The table of docs/decisions/operation-lifecycle.md, "Idempotency stores final outcomes only".
  const finalByKind: [ErrorKind, boolean][] = [
    ["invalid_argument", true],
    ["not_found", true],
    ["failed_precondition", true],
    ["permission_denied", true],
    ["unavailable", false],
    ["aborted", false],
    ["resource_exhausted", false],
    ["deadline_exceeded", false],
    ["cancelled", false],
    ["internal", false],
    ["unauthenticated", false],
  ];

  it("the table names every error kind once", () => {
    const kinds = Object.values(reasonCatalogue).map((r) => r.kind);
    for (const k of kinds) expect(finalByKind.map(([kind]) => kind)).toContain(k);
    expect(new Set(finalByKind.map(([k]) => k)).size).toBe(finalByKind.length);
  });

  it("a result is final", () => {
    expect(isFinal({ ok: true, result: { requestId: "r", deduplicated: false, instances: [] } })).toBe(true);
  });

  it.each(finalByKind)(
    "an error of kind %s is final: %s (with or without an upstream code)",
    (kind, final) => {
      const own = new KeygateError({ kind, reason: "X", message: "x" });
      const upstream = new KeygateError({ kind, reason: "Up.Code", message: "x", upstreamCode: "Up.Code" });
      expect(isFinal(failureOutcome(own))).toBe(final);
      expect(isFinal(failureOutcome(upstream))).toBe(final);
    },
  );

  it("retryable cloud errors are not final (InternalError, MutexOperation.TaskRunning)", () => {
    for (const [kind, code] of [
      ["unavailable", "InternalError"],
      ["aborted", "MutexOperation.TaskRunning"],
    ] as const) {
      const e = new KeygateError({
        kind,
        reason: code,
        message: "x",
        upstreamCode: code,
        upstreamRequestId: "u",
      });
      expect(isFinal(failureOutcome(e))).toBe(false);
    }
    for (const reason of ["RATE_LIMITED", "STORE_UNAVAILABLE", "INSTANCE_BUSY", "CANCELLED"] as const) {
      expect(isFinal(failureOutcome(keygateError(reason, "x")))).toBe(false);
    }
  });

  it("a corrupt stored outcome becomes INTERNAL instead of being trusted", () => {
    expect(decodeOutcome("{not json")).toMatchObject({ ok: false, error: { reason: "INTERNAL" } });
    expect(decodeOutcome('{"ok":true}')).toMatchObject({ ok: false, error: { reason: "INTERNAL" } });
  });
});
