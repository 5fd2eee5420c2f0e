import { readFileSync } from "node:fs";
import { Code } from "@connectrpc/connect";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { codeOfKind } from "../src/api/error-mapping.js";
import {
  actionFor,
  classify,
  cloudCodeError,
  cloudErrorTable,
  type CloudAction,
  type CloudErrorKind,
  type CloudErrorRow,
  type Failure,
  nextStep,
  type NextStep,
  retryPolicy,
  treatmentOfKind,
  UNKNOWN_CODE_ROW,
  OPERATOR_PROBLEM_MESSAGE,
  TRANSITIONAL_INSTANCE_STATES,
} from "../src/core/cloud-errors.js";
import type { ErrorKind } from "../src/core/errors.js";
import { failureOutcome, isFinal } from "../src/dedup/outcome.js";

/** A code a row matches: itself, or an invented sub-code for `Name.*` and `*.Suffix` rows. */
const sampleOf = (row: string) =>
  row === "*" ? "NobodyDocumentedThis" : row.replace(/\.\*$/, ".SomeSubCode").replace(/^\*\./, "Some.");

/**
 * Written out by hand, not derived from the table: each row of the table, what it must mean.
 * The API page's codes and the common codes every action can return.
 */
const expected: [row: string, kind: CloudErrorKind, status: ErrorKind, action: CloudAction][] = [
  ["MissingParameter", "caller_mistake", "invalid_argument", "answer"],
  ["MissingParameter.*", "caller_mistake", "invalid_argument", "answer"],
  ["UnsupportedRegion", "caller_mistake", "invalid_argument", "answer"],
  ["InvalidParameter", "caller_mistake", "invalid_argument", "answer"],
  ["InvalidParameter.*", "caller_mistake", "invalid_argument", "answer"],
  ["InvalidParameterValue", "caller_mistake", "invalid_argument", "answer"],
  ["InvalidParameterValue.*", "caller_mistake", "invalid_argument", "answer"],
  ["InvalidParameterValue.InstanceIdMalformed", "caller_mistake", "invalid_argument", "answer"],
  ["InvalidParameterValue.LimitExceeded", "caller_mistake", "invalid_argument", "answer"],
  ["InvalidInstanceId.Malformed", "caller_mistake", "invalid_argument", "answer"],
  ["InvalidKeyPairId.Malformed", "caller_mistake", "invalid_argument", "answer"],
  ["UnknownParameter", "caller_mistake", "invalid_argument", "answer"],
  ["RequestSizeLimitExceeded", "caller_mistake", "invalid_argument", "answer"],
  ["InvalidInstanceId.NotFound", "not_found", "not_found", "answer"],
  ["InvalidKeyPairId.NotFound", "not_found", "not_found", "answer"],
  ["ResourceNotFound", "not_found", "not_found", "answer"],
  ["*.NotFound", "not_found", "not_found", "answer"],
  ["InvalidInstance.NotSupported", "precondition", "failed_precondition", "answer"],
  ["InvalidParameterValue.KeyPairNotSupported", "precondition", "failed_precondition", "answer"],
  ["UnsupportedOperation", "precondition", "failed_precondition", "answer"],
  ["UnsupportedOperation.*", "precondition", "failed_precondition", "answer"],
  ["UnsupportedOperation.InstanceOsWindows", "precondition", "failed_precondition", "answer"],
  ["UnsupportedOperation.InstanceStateRunning", "precondition", "failed_precondition", "answer"],
  ["UnsupportedOperation.InstanceStateShutdown", "precondition", "failed_precondition", "answer"],
  ["UnsupportedOperation.InstanceStateIsolating", "precondition", "failed_precondition", "answer"],
  ["UnsupportedOperation.InstanceStateFreezing", "precondition", "failed_precondition", "answer"],
  ["UnsupportedOperation.InstanceStateRescueMode", "precondition", "failed_precondition", "answer"],
  ["UnsupportedOperation.InstanceStateTerminating", "precondition", "failed_precondition", "answer"],
  ["UnsupportedOperation.StoppedModeStopCharging", "precondition", "failed_precondition", "answer"],
  ["OperationDenied.*", "precondition", "failed_precondition", "answer"],
  ["LimitExceeded", "precondition", "failed_precondition", "answer"],
  ["FailedOperation", "precondition", "failed_precondition", "answer"],
  // Transitional states end by themselves: waited out like a busy instance (never "don't retry").
  ["UnsupportedOperation.InstanceStatePending", "transitional", "aborted", "wait"],
  ["UnsupportedOperation.InstanceStateStarting", "transitional", "aborted", "wait"],
  ["UnsupportedOperation.InstanceStateStopping", "transitional", "aborted", "wait"],
  ["UnsupportedOperation.InstanceStateRebooting", "transitional", "aborted", "wait"],
  ["UnsupportedOperation.InstanceStateExitRescueMode", "transitional", "aborted", "wait"],
  ["UnsupportedOperation.InstanceStateEnterServiceLiveMigrate", "transitional", "aborted", "wait"],
  ["MutexOperation.*", "busy", "aborted", "wait"],
  ["MutexOperation.TaskRunning", "busy", "aborted", "wait"],
  ["OperationDenied.InstanceOperationInProgress", "busy", "aborted", "wait"],
  ["ResourceInUse", "busy", "aborted", "answer"],
  ["RequestLimitExceeded", "rate_limited", "resource_exhausted", "penalize"],
  ["RequestLimitExceeded.*", "rate_limited", "resource_exhausted", "penalize"],
  ["InternalError", "transient", "unavailable", "retry"],
  ["InternalError.*", "transient", "unavailable", "retry"],
  ["InternalServerError", "transient", "unavailable", "retry"],
  ["InternalServerError.*", "transient", "unavailable", "retry"],
  ["ServiceUnavailable", "transient", "unavailable", "retry"],
  ["ServiceUnavailable.*", "transient", "unavailable", "retry"],
  ["ResourceUnavailable", "transient", "unavailable", "retry"],
  ["ResourceUnavailable.*", "transient", "unavailable", "retry"],
  ["AuthFailure", "operator_problem", "failed_precondition", "answer"],
  ["AuthFailure.*", "operator_problem", "failed_precondition", "answer"],
  ["UnauthorizedOperation", "operator_problem", "failed_precondition", "answer"],
  ["UnauthorizedOperation.*", "operator_problem", "failed_precondition", "answer"],
  ["UnauthorizedOperation.MFAExpired", "operator_problem", "failed_precondition", "answer"],
  ["UnauthorizedOperation.MFANotFound", "operator_problem", "failed_precondition", "answer"],
  ["InvalidAction", "unexpected", "internal", "answer"],
  ["ActionOffline", "unexpected", "internal", "answer"],
  ["NoSuchVersion", "unexpected", "internal", "answer"],
  ["InvalidRequest", "unexpected", "internal", "answer"],
  ["*", "unexpected", "internal", "answer"],
];

describe("the cloud error table", () => {
  it("has exactly the rows this test expects, each once", () => {
    const rows = [...cloudErrorTable, UNKNOWN_CODE_ROW].map((r) => r.code);
    expect(new Set(rows).size).toBe(rows.length);
    expect([...rows].sort()).toEqual(expected.map(([row]) => row).sort());
  });

  it.each(expected)("%s → %s, %s, %s", (row, kind, status, action) => {
    const code = sampleOf(row);
    const meaning = classify(code);
    expect(meaning).toMatchObject({ kind, status, action, reason: code });
    expect(meaning.row.code).toBe(row);
    const err = cloudCodeError(code, "m", { upstreamCode: code, upstreamRequestId: "r-1" });
    expect(err).toMatchObject({ kind: status, reason: code, upstreamCode: code, upstreamRequestId: "r-1" });
  });

  it.each<[code: string, row: string]>([
    // An exact row beats its family.
    ["InvalidParameterValue.KeyPairNotSupported", "InvalidParameterValue.KeyPairNotSupported"],
    ["OperationDenied.InstanceOperationInProgress", "OperationDenied.InstanceOperationInProgress"],
    ["OperationDenied.SomethingElse", "OperationDenied.*"],
    ["UnsupportedOperation.InstanceStatePending", "UnsupportedOperation.InstanceStatePending"],
    // A family beats a suffix.
    ["InvalidParameterValue.Zone.NotFound", "InvalidParameterValue.*"],
    ["UnsupportedOperation.Thing.NotFound", "UnsupportedOperation.*"],
    ["InvalidZone.NotFound", "*.NotFound"],
    // `Name.*` covers sub-codes, not the bare name or a longer word.
    ["MutexOperation", "*"],
    ["OperationDenied", "*"],
    ["ResourceNotFound.NoDefaultCbs", "*"],
    ["LimitExceeded.Quota", "*"],
    ["AuthFailureX", "*"],
    ["", "*"],
  ])("%s is decided by row %s", (code, row) => {
    expect(classify(code).row.code).toBe(row);
  });

  it("changing a kind's treatment is one line: every row without its own action follows its kind", () => {
    for (const row of cloudErrorTable) {
      const meaning = classify(sampleOf(row.code));
      expect(meaning.status).toBe(treatmentOfKind[row.kind].status);
      if (row.action === undefined) expect(meaning.action).toBe(treatmentOfKind[row.kind].action);
    }
  });

  it("the API layer only converts: each status becomes the gRPC code of the same name", () => {
    for (const kind of Object.keys(codeOfKind) as ErrorKind[]) {
      const name = Code[codeOfKind[kind]].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
      expect(name.replace("CANCELED", "CANCELLED")).toBe(kind.toUpperCase());
    }
  });
});

describe("the API page's codes", () => {
  const fixture = readFileSync(new URL("./fixtures/api-page-codes.txt", import.meta.url), "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));

  it("the fixture holds the page's 29 codes, each once", () => {
    expect(fixture).toHaveLength(29);
    expect(new Set(fixture).size).toBe(29);
  });

  it("keygate's table marks exactly the page's codes, each with a row of its own", () => {
    const marked = cloudErrorTable.filter((r) => r.page).map((r) => r.code);
    expect([...marked].sort()).toEqual([...fixture].sort());
    for (const code of fixture) expect(classify(code).row.code, code).toBe(code);
  });
});

describe("what a caller can act on", () => {
  /** Written by hand: the retry_after_ms of each kind (absent = a retry alone does not help). */
  const retryAfter: Record<CloudErrorKind, number | undefined> = {
    caller_mistake: undefined,
    not_found: undefined,
    precondition: undefined,
    busy: 1_000,
    transitional: 1_000,
    rate_limited: 1_000,
    transient: 1_000,
    operator_problem: undefined,
    unexpected: undefined,
  };

  it.each([...cloudErrorTable, UNKNOWN_CODE_ROW].map((r): [string, CloudErrorRow] => [r.code, r]))(
    "%s carries the retry_after_ms of its kind, in the table and in the error",
    (_code, row) => {
      const code = sampleOf(row.code);
      expect(classify(code).retryAfterMs).toBe(retryAfter[row.kind]);
      expect(cloudCodeError(code, "m").retryAfterMs).toBe(retryAfter[row.kind]);
    },
  );

  it("an explicit retry_after_ms wins over the table's", () => {
    expect(cloudCodeError("MutexOperation.TaskRunning", "m", { retryAfterMs: 5 }).retryAfterMs).toBe(5);
  });

  it("nothing that resolves by itself is FAILED_PRECONDITION, and no operator problem invites blind retries", () => {
    for (const row of [...cloudErrorTable, UNKNOWN_CODE_ROW]) {
      const m = classify(sampleOf(row.code));
      if (["busy", "transitional", "transient", "rate_limited"].includes(row.kind)) {
        expect(m.status, row.code).not.toBe("failed_precondition");
      }
      if (row.kind === "operator_problem") expect(m.status, row.code).toBe("failed_precondition");
    }
    for (const state of [
      "PENDING",
      "STARTING",
      "STOPPING",
      "REBOOTING",
      "EXIT_RESCUE_MODE",
      "ENTER_SERVICE_LIVE_MIGRATE",
    ]) {
      expect(TRANSITIONAL_INSTANCE_STATES.has(state), state).toBe(true);
    }
    for (const state of ["STOPPED", "RUNNING", "SHUTDOWN", "RESCUE_MODE", "LAUNCH_FAILED"]) {
      expect(TRANSITIONAL_INSTANCE_STATES.has(state), state).toBe(false);
    }
  });

  it("an operator problem tells the caller it is keygate's cloud identity, not them", () => {
    const e = cloudCodeError("UnauthorizedOperation.MFAExpired", "UnauthorizedOperation.MFAExpired: mfa", {
      upstreamCode: "UnauthorizedOperation.MFAExpired",
    });
    expect(e.message.startsWith(OPERATOR_PROBLEM_MESSAGE)).toBe(true);
    expect(e.message).toContain("mfa");
    expect(e).toMatchObject({ kind: "failed_precondition", reason: "UnauthorizedOperation.MFAExpired" });
    expect(cloudCodeError("InvalidInstanceId.NotFound", "nf").message).toBe("nf");
  });

  it("final outcomes only: an operator problem is not kept, a real precondition and a result are", () => {
    const err = (code: string) => cloudCodeError(code, code, { upstreamCode: code });
    expect(isFinal(failureOutcome(err("AuthFailure.SecretIdNotFound")))).toBe(false);
    expect(isFinal(failureOutcome(err("UnauthorizedOperation.MFANotFound")))).toBe(false);
    expect(isFinal(failureOutcome(err("UnsupportedOperation.InstanceStateRunning")))).toBe(true);
    expect(isFinal(failureOutcome(err("UnsupportedOperation.InstanceStateStopping")))).toBe(false);
    expect(isFinal({ ok: true, result: { requestId: "r", deduplicated: false, instances: [] } })).toBe(true);
  });
});

describe("actionFor", () => {
  it.each<[upstreamCode: string | undefined, reason: string, action: CloudAction]>([
    [undefined, "UPSTREAM_UNAVAILABLE", "retry"],
    [undefined, "UPSTREAM_TIMEOUT", "retry"],
    [undefined, "UPSTREAM_BAD_RESPONSE", "retry"],
    [undefined, "DEADLINE_EXCEEDED", "answer"],
    [undefined, "CANCELLED", "answer"],
    [undefined, "RATE_LIMITED", "answer"],
    [undefined, "STORE_UNAVAILABLE", "answer"],
    [undefined, "INTERNAL", "answer"],
    // A validation error carries a cloud code as reason but never reached the cloud.
    [undefined, "InternalError", "answer"],
    ["InternalError", "InternalError", "retry"],
    ["RequestLimitExceeded", "RequestLimitExceeded", "penalize"],
    ["MutexOperation.TaskRunning", "MutexOperation.TaskRunning", "wait"],
  ])("upstream code %s, reason %s → %s", (upstreamCode, reason, action) => {
    expect(actionFor({ upstreamCode, reason })).toBe(action);
  });
});

describe("nextStep, the retry decision", () => {
  const failure = (code: string) => ({ upstreamCode: code, reason: code });
  const noAnswer = (reason: string) => ({ upstreamCode: undefined, reason });
  const answer: NextStep = { step: "answer" };
  const backoff = (delayMs: number, reconcile = true): NextStep => ({ step: "backoff", delayMs, reconcile });
  /** random 1 → the largest jittered delay, i.e. the plain doubling. */
  const attempt = (f: Failure, retries: number, timeLeftMs: number, random = 1) => ({
    failure: f,
    retries,
    transientRetries: retries,
    cloudCalls: retries + 1,
    timeLeftMs,
    random,
  });

  it.each<[what: string, f: Failure, retries: number, left: number, step: NextStep]>([
    ["cloud rate limit", failure("RequestLimitExceeded"), 0, 5_000, { step: "penalize", penaltyMs: 1_000 }],
    // The limiter's wait for the next token is what the deadline bounds.
    [
      "cloud rate limit, no time left",
      failure("RequestLimitExceeded.UinLimitExceeded"),
      3,
      0,
      { step: "penalize", penaltyMs: 1_000 },
    ],
    ["busy instance", failure("MutexOperation.TaskRunning"), 0, 5_000, backoff(400, false)],
    [
      "busy instance, third retry",
      failure("OperationDenied.InstanceOperationInProgress"),
      2,
      60_000,
      backoff(1_600, false),
    ],
    ["busy instance, cloud calls spent", failure("MutexOperation.TaskRunning"), 4, Infinity, answer],
    ["busy instance at the deadline", failure("MutexOperation.TaskRunning"), 0, 0, answer],
    ["resource in use", failure("ResourceInUse"), 0, 5_000, answer],
    ["5xx code, first retry", failure("InternalError"), 0, 10_000, backoff(400)],
    ["5xx code, second retry", failure("ServiceUnavailable"), 1, 10_000, backoff(800)],
    ["5xx code, third retry", failure("InternalServerError"), 2, 10_000, backoff(1_600)],
    ["5xx code, retries spent", failure("InternalError"), 3, 10_000, answer],
    ["5xx code, backoff cut to the deadline", failure("InternalError"), 0, 250, backoff(250)],
    ["5xx code at the deadline", failure("InternalError"), 0, 0, answer],
    ["timeout", noAnswer("UPSTREAM_TIMEOUT"), 0, Infinity, backoff(400)],
    ["unreachable", noAnswer("UPSTREAM_UNAVAILABLE"), 1, Infinity, backoff(800)],
    ["garbled reply", noAnswer("UPSTREAM_BAD_RESPONSE"), 2, Infinity, backoff(1_600)],
    ["caller's deadline inside the adapter", noAnswer("DEADLINE_EXCEEDED"), 0, 5_000, answer],
    ["caller cancelled", noAnswer("CANCELLED"), 0, 5_000, answer],
    [
      "transitional state",
      failure("UnsupportedOperation.InstanceStateStopping"),
      0,
      5_000,
      backoff(400, false),
    ],
    [
      "transitional state at the deadline",
      failure("UnsupportedOperation.InstanceStatePending"),
      0,
      0,
      answer,
    ],
    ["operator problem", failure("AuthFailure.SignatureFailure"), 0, 5_000, answer],
    ["not found", failure("InvalidInstanceId.NotFound"), 0, 5_000, answer],
    ["unknown code", failure("SomethingNew"), 0, 5_000, answer],
  ])("%s", (_what, f, retries, timeLeftMs, step) => {
    expect(nextStep(attempt(f, retries, timeLeftMs))).toEqual(step);
  });

  it("jitter: the delay lies between half and all of the doubled base, and spreads with the draw", () => {
    const f = failure("MutexOperation.TaskRunning");
    const low = nextStep(attempt(f, 1, Infinity, 0));
    const high = nextStep(attempt(f, 1, Infinity, 0.999));
    expect(low).toEqual(backoff(400, false));
    expect(high.step === "backoff" && high.delayMs).toBe(800);
  });

  it.each([...cloudErrorTable, UNKNOWN_CODE_ROW].map((r): [string, CloudErrorRow] => [r.code, r]))(
    "over the table: row %s with time to spare takes its action's step",
    (_code, row) => {
      const code = sampleOf(row.code);
      const step = nextStep(attempt(failure(code), 0, 60_000)).step;
      const stepOf: Record<CloudAction, NextStep["step"]> = {
        answer: "answer",
        wait: "backoff",
        retry: "backoff",
        penalize: "penalize",
      };
      expect(step).toBe(stepOf[classify(code).action]);
    },
  );

  it("never sleeps past the deadline, never exceeds the cloud-call budget, bounded total backoff", () => {
    const codes = [...cloudErrorTable, UNKNOWN_CODE_ROW].map((r) => sampleOf(r.code));
    fc.assert(
      fc.property(
        fc.constantFrom(...codes),
        fc.nat(10),
        fc.oneof(fc.nat(100_000), fc.constant(Infinity)),
        fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        (code, retries, timeLeftMs, random) => {
          const step = nextStep(attempt(failure(code), retries, timeLeftMs, random));
          if (step.step === "backoff") {
            expect(step.delayMs).toBeGreaterThan(0);
            expect(step.delayMs).toBeLessThanOrEqual(timeLeftMs);
            expect(retries + 1).toBeLessThan(retryPolicy.maxCloudCalls);
          }
          if (timeLeftMs === 0) expect(["answer", "penalize"]).toContain(step.step);
        },
      ),
    );
    let total = 0;
    for (let n = 0; ; n += 1) {
      const step = nextStep(attempt(failure("MutexOperation.TaskRunning"), n, Infinity));
      if (step.step !== "backoff") break;
      total += step.delayMs;
    }
    expect(total).toBe(400 + 800 + 1_600 + 3_200);
  });
});

describe("the README's error tables agree with the table", () => {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
  const section = readme.slice(
    readme.indexOf("## Status codes and errors"),
    readme.indexOf("## Operating keygate"),
  );
  const split = section.indexOf("### Cloud error codes");
  const cells = (text: string) =>
    text
      .split("\n")
      .filter((l) => l.startsWith("| ") && !l.startsWith("| ---"))
      .map((l) =>
        l
          .slice(1, -1)
          .split(" | ")
          .map((c) => c.trim()),
      )
      .slice(1);
  const actionWords: Record<CloudAction, string> = {
    answer: "answers at once",
    wait: "waits until the instances are idle, then resends; answers after 5 cloud calls",
    retry: "retries up to 3 times with backoff (5 cloud calls at most), each after asking the cloud",
    penalize: "every replica holds off the bucket for 1 s",
  };

  it("the cloud codes table lists every row, and only those, with the same code and action", () => {
    const rows = cells(section.slice(split));
    const byCode = new Map(
      rows.map((r) => [r[0] === "any other code" ? "*" : (r[0] ?? "").replace(/`/g, ""), r]),
    );
    expect(byCode.size).toBe(rows.length);
    const table = [...cloudErrorTable, UNKNOWN_CODE_ROW];
    expect([...byCode.keys()].sort()).toEqual(table.map((r) => r.code).sort());
    for (const row of table) {
      const meaning = classify(sampleOf(row.code));
      const line = byCode.get(row.code) ?? [];
      expect(line[2], row.code).toBe(meaning.status.toUpperCase());
      expect(line[3], row.code).toContain(actionWords[meaning.action]);
      expect(line[4], row.code).toBe(meaning.retryAfterMs === undefined ? "—" : String(meaning.retryAfterMs));
    }
  });

  it("every cloud code the status table names has the status of its line there", () => {
    const rows = cells(section.slice(0, split));
    let seen = 0;
    for (const [situation = "", status = "", reason = ""] of rows) {
      for (const m of `${situation} ${reason}`.matchAll(
        /`([A-Z][a-z][A-Za-z]*(?:\.(?:[A-Z][A-Za-z]*|\*))*)`/g,
      )) {
        const code = m[1] ?? "";
        const row = cloudErrorTable.find((r) => r.code === code);
        const meaning = classify(row ? sampleOf(row.code) : code);
        expect(meaning.row, code).not.toBe(UNKNOWN_CODE_ROW);
        expect(status, code).toBe(meaning.status.toUpperCase());
        seen += 1;
      }
    }
    expect(seen).toBeGreaterThan(10);
  });
});
