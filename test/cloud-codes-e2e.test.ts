/**
 * One case per code of the API page's error table (test/fixtures/api-page-codes.txt): the emulator
 * produces it (from the instance's state or the input where it follows from them, by injection
 * otherwise) → a running gateway (real Redis, real SDK, real HTTP) answers the documented gRPC code
 * with the cloud's code as `reason` → the audit line and the metrics name it → the idempotency
 * record keeps final outcomes only: a final one is replayed without calling the cloud, any other
 * runs again once the cloud is fixed. Then ForceStop under both readings of the emulator.
 */
import { readFileSync } from "node:fs";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OPERATOR_PROBLEM_MESSAGE } from "../src/core/cloud-errors.js";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import {
  createEmulator,
  type Emulator,
  type ForceStopReading,
  type InventorySpec,
} from "../src/upstream/emulator/index.js";
import { startGateway, type TestGateway } from "./support/app.js";
import { opsPolicy } from "./support/policies.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";
import { withoutWarmUp } from "./support/fleet.js";

const TOKEN = "token-cloud-codes-0123456789";
const REGION = "ap-guangzhou";
const ASSOCIATE = "AssociateInstancesKeyPairs";
// Long enough that the answer beats the client's own timer on a busy machine (keygate answers 5% early, at most 250 ms).
const DEADLINE_MS = 4_000;
const headers = { authorization: `Bearer ${TOKEN}` };
const detailOf = (e: unknown) => ConnectError.from(e).findDetails(ErrorDetailSchema)[0];

/** How the emulator is made to say the code. */
type Produce =
  | { state: string; osName?: string }
  /** The request names an instance or a key the account does not have. */
  | { absent: "instance" | "key" }
  | { inject: true };

/**
 * Written by hand from the README's tables: each page code, how it is produced, the gRPC code.
 * Final = kept under an idempotency key (docs/decisions/operation-lifecycle.md).
 */
const CASES: [code: string, produce: Produce, status: Code, final: boolean][] = [
  ["InternalServerError", { inject: true }, Code.Unavailable, false],
  ["InvalidInstance.NotSupported", { state: "LAUNCH_FAILED" }, Code.FailedPrecondition, true],
  ["InvalidInstanceId.Malformed", { inject: true }, Code.InvalidArgument, true],
  ["InvalidInstanceId.NotFound", { absent: "instance" }, Code.NotFound, true],
  ["InvalidKeyPairId.Malformed", { inject: true }, Code.InvalidArgument, true],
  ["InvalidKeyPairId.NotFound", { absent: "key" }, Code.NotFound, true],
  ["InvalidParameterValue", { inject: true }, Code.InvalidArgument, true],
  ["InvalidParameterValue.InstanceIdMalformed", { inject: true }, Code.InvalidArgument, true],
  ["InvalidParameterValue.KeyPairNotSupported", { inject: true }, Code.FailedPrecondition, true],
  ["InvalidParameterValue.LimitExceeded", { inject: true }, Code.InvalidArgument, true],
  ["MissingParameter", { inject: true }, Code.InvalidArgument, true],
  ["MutexOperation.TaskRunning", { inject: true }, Code.Aborted, false],
  ["OperationDenied.InstanceOperationInProgress", { inject: true }, Code.Aborted, false],
  ["UnauthorizedOperation.MFAExpired", { inject: true }, Code.FailedPrecondition, false],
  ["UnauthorizedOperation.MFANotFound", { inject: true }, Code.FailedPrecondition, false],
  [
    "UnsupportedOperation.InstanceOsWindows",
    { state: "STOPPED", osName: "Windows Server 2019 DataCenter 64bit" },
    Code.FailedPrecondition,
    true,
  ],
  [
    "UnsupportedOperation.InstanceStateEnterServiceLiveMigrate",
    { state: "ENTER_SERVICE_LIVE_MIGRATE" },
    Code.Aborted,
    false,
  ],
  ["UnsupportedOperation.InstanceStateExitRescueMode", { state: "EXIT_RESCUE_MODE" }, Code.Aborted, false],
  ["UnsupportedOperation.InstanceStateFreezing", { state: "FREEZING" }, Code.FailedPrecondition, true],
  ["UnsupportedOperation.InstanceStateIsolating", { state: "ISOLATING" }, Code.FailedPrecondition, true],
  ["UnsupportedOperation.InstanceStatePending", { state: "PENDING" }, Code.Aborted, false],
  ["UnsupportedOperation.InstanceStateRebooting", { state: "REBOOTING" }, Code.Aborted, false],
  ["UnsupportedOperation.InstanceStateRescueMode", { state: "RESCUE_MODE" }, Code.FailedPrecondition, true],
  ["UnsupportedOperation.InstanceStateRunning", { state: "RUNNING" }, Code.FailedPrecondition, true],
  ["UnsupportedOperation.InstanceStateShutdown", { state: "SHUTDOWN" }, Code.FailedPrecondition, true],
  ["UnsupportedOperation.InstanceStateStarting", { state: "STARTING" }, Code.Aborted, false],
  ["UnsupportedOperation.InstanceStateStopping", { state: "STOPPING" }, Code.Aborted, false],
  ["UnsupportedOperation.InstanceStateTerminating", { state: "TERMINATING" }, Code.FailedPrecondition, true],
  ["UnsupportedOperation.StoppedModeStopCharging", { inject: true }, Code.FailedPrecondition, true],
];

const idOf = (n: number) => `ins-cc${String(n).padStart(6, "0")}`;
const ABSENT = "ins-ccabsent";
const ABSENT_KEY = "skey-zzzzzzzz";
/** For the transitional state that ends in time. */
const WAITED = "ins-ccwait01";

function inventory(): InventorySpec {
  return {
    instances: [...CASES, ["", { state: "STOPPED" }] as const].map(([, produce], i) => ({
      instanceId: i < CASES.length ? idOf(i + 1) : WAITED,
      region: REGION,
      zone: "ap-guangzhou-3",
      projectId: 0,
      osName: "osName" in produce && produce.osName ? produce.osName : "TencentOS Server 3.1 (TK4)",
      instanceState: "state" in produce ? produce.state : "STOPPED",
    })),
    keyPairs: [{ keyId: "skey-aaaaaaaa" }],
  };
}

describe("every code on the API page, end to end through a running gateway", () => {
  let redis: RedisProcess;
  let emulator: Emulator;
  let gw: TestGateway;
  beforeAll(async () => {
    redis = await startRedis();
    emulator = await createEmulator({ host: "127.0.0.1", port: 0, taskMs: 200, inventory: inventory() });
    gw = await startGateway({
      emulator,
      policyText: opsPolicy(TOKEN),
      env: {
        KEYGATE_REDIS_URL: redis.url,
        KEYGATE_DEFAULT_DEADLINE_MS: "10000",
        KEYGATE_TASK_POLL_MS: "50",
        // A rerun of a key whose last send failed first waits out 2 × this (the resend horizon).
        KEYGATE_UPSTREAM_TIMEOUT_MS: "500",
      },
    });
  }, 30_000);
  afterAll(async () => {
    await gw?.stop();
    await emulator?.close();
    await redis?.stop();
  });

  it("covers the fixture's codes, each once", () => {
    const fixture = readFileSync(new URL("./fixtures/api-page-codes.txt", import.meta.url), "utf8")
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "" && !l.startsWith("#"));
    expect(CASES.map(([code]) => code).sort()).toEqual([...fixture].sort());
  });

  it.each(CASES.map((c, i) => [c[0], c, i] as const))(
    "%s",
    async (code, [, produce, status, final], i) => {
      const instanceId = "absent" in produce && produce.absent === "instance" ? ABSENT : idOf(i + 1);
      const keyId = "absent" in produce && produce.absent === "key" ? ABSENT_KEY : "skey-aaaaaaaa";
      const client = createClient(
        KeyPairService,
        createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }),
      );
      const request = {
        region: REGION,
        instanceIds: [instanceId],
        keyIds: [keyId],
        idempotencyKey: `e2e-${i}`,
        waitForCompletion: true,
      };
      if ("inject" in produce) {
        emulator.faults.set({
          rules: [{ kind: "code", code, action: ASSOCIATE, instanceIds: [instanceId] }],
        });
      }
      const callsOn = () =>
        emulator.stats.arrivals.filter((a) => a.action === ASSOCIATE && a.outcome !== "PENDING").length;

      // 1. The gateway answers the documented gRPC code, with the cloud's code as reason.
      const err = await client
        // A transient code is retried 3 times with backoff (2.8 s): room for all of them, so the
        // answer is the cloud's code after the retries, not a deadline cutting a resend short.
        .associateKeyPairs(request, { headers, timeoutMs: status === Code.Unavailable ? 6_000 : DEADLINE_MS })
        .catch((e: unknown) => e);
      expect(ConnectError.from(err).code, code).toBe(status);
      const detail = detailOf(err);
      expect(detail?.reason).toBe(code);
      expect(detail?.upstreamCode).toBe(code);
      const answered = emulator.stats.arrivals.filter((a) => a.outcome === code).map((a) => a.requestId);
      expect(answered).toContain(detail?.upstreamRequestId);
      // retry_after_ms only where the same request may succeed later by itself.
      const retryable = status === Code.Aborted || status === Code.Unavailable;
      expect(detail?.retryAfterMs ?? 0n).toBe(retryable ? 1_000n : 0n);
      if (code.startsWith("UnauthorizedOperation.")) {
        expect(ConnectError.from(err).rawMessage).toContain(OPERATOR_PROBLEM_MESSAGE);
      }

      // 2. The audit line names it.
      const audit = gw.logs
        .audits()
        .find((l) => l.reason === code && Array.isArray(l.instances) && l.instances.includes(instanceId));
      expect(audit, code).toMatchObject({ decision: "failed", upstreamCode: code, tenant: "ops" });

      // 3. The metrics name it.
      const metrics = await (await fetch(gw.metricsUrl)).text();
      expect(metrics).toContain(`keygate_upstream_calls_total{action="${ASSOCIATE}",code="${code}"}`);
      expect(metrics).toContain(`keygate_requests_total{tenant="ops",outcome="error",code="${code}"}`);
      const operatorLine = `keygate_operator_problems_total{code="${code}"}`;
      if (code.startsWith("UnauthorizedOperation.")) expect(metrics).toContain(operatorLine);
      else expect(metrics).not.toContain(operatorLine);

      // 4. The cloud is fixed; the same idempotency key replays a final outcome without calling
      // the cloud, and runs anything else again.
      emulator.faults.reset();
      if ("state" in produce && instanceId !== ABSENT) emulator.setState(instanceId, "STOPPED");
      const before = callsOn();
      const again = await client
        .associateKeyPairs(request, { headers, timeoutMs: 8_000 })
        .catch((e: unknown) => e);
      if (final) {
        expect(ConnectError.from(again).code).toBe(status);
        expect(detailOf(again)?.reason).toBe(code);
        expect(callsOn()).toBe(before);
      } else {
        expect(again, code).not.toBeInstanceOf(Error);
        expect(callsOn()).toBe(before + 1);
      }
    },
    20_000,
  );

  it("a transitional state that ends within the deadline is waited out, then the call succeeds", async () => {
    const instanceId = WAITED;
    emulator.setState(instanceId, "STOPPING", { forMs: 600 });
    const from = emulator.stats.arrivals.length;
    const client = createClient(
      KeyPairService,
      createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }),
    );
    const res = await client.associateKeyPairs(
      { region: REGION, instanceIds: [instanceId], keyIds: ["skey-aaaaaaaa"], waitForCompletion: true },
      { headers, timeoutMs: 8_000 },
    );
    expect(res.instances.map((x) => x.state)).toEqual(["SUCCESS"]);
    const outcomes = emulator.stats.arrivals
      .slice(from)
      .filter((a) => a.action === ASSOCIATE)
      .map((a) => a.outcome);
    expect(outcomes).toContain("UnsupportedOperation.InstanceStateStopping");
    expect(outcomes.at(-1)).toBe("OK");
  }, 20_000);
});

describe("cloud tasks that fail, and a busy answer lagging behind DescribeInstances", () => {
  const ID = "ins-cctask01";
  let emulator: Emulator;
  let gw: TestGateway;
  beforeAll(async () => {
    emulator = await createEmulator({
      host: "127.0.0.1",
      port: 0,
      taskMs: 200,
      // After a task ended, the action says busy for 700 ms more while DescribeInstances shows idle.
      busyLagMs: 700,
      inventory: {
        instances: [
          {
            instanceId: ID,
            region: REGION,
            zone: "ap-guangzhou-3",
            projectId: 0,
            osName: "TencentOS Server 3.1 (TK4)",
            instanceState: "STOPPED",
          },
        ],
        keyPairs: [
          { keyId: "skey-aaaaaaaa", region: REGION },
          { keyId: "skey-bbbbbbbb", region: REGION },
        ],
      },
    });
    gw = await startGateway({ emulator, policyText: opsPolicy(TOKEN), env: { KEYGATE_TASK_POLL_MS: "50" } });
  }, 30_000);
  afterAll(async () => {
    await gw?.stop();
    await emulator?.close();
  });
  const call = (keyId: string) =>
    createClient(
      KeyPairService,
      createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }),
    ).associateKeyPairs(
      { region: REGION, instanceIds: [ID], keyIds: [keyId], waitForCompletion: true },
      { headers, timeoutMs: 8_000 },
    );

  it("a task that ends FAILED is reported FAILED with the cloud's message; then the lag is waited out", async () => {
    emulator.faults.set({ rules: [{ kind: "taskFailed", message: "guest agent did not answer", next: 1 }] });
    const failed = await call("skey-aaaaaaaa");
    expect(failed.instances.map((i) => [i.state, i.message])).toEqual([
      ["FAILED", "guest agent did not answer"],
    ]);
    expect(emulator.inventory.all()[0]?.keyIds).toEqual([]);
    // Right after: DescribeInstances shows the instance idle, the action still says busy (the lag).
    // keygate backs off, resends, and succeeds within the deadline. (Another key: the same request
    // would join the first one's outcome within the join window.)
    const from = emulator.stats.arrivals.length;
    const ok = await call("skey-bbbbbbbb");
    expect(ok.instances.map((i) => i.state)).toEqual(["SUCCESS"]);
    const outcomes = emulator.stats.arrivals
      .slice(from)
      .filter((a) => a.action === ASSOCIATE)
      .map((a) => a.outcome);
    expect(outcomes[0]).toBe("MutexOperation.TaskRunning");
    expect(outcomes.at(-1)).toBe("OK");
    expect(emulator.inventory.all()[0]?.keyIds).toEqual(["skey-bbbbbbbb"]);
    // The lag's busy answers were a real task's, not injected ones.
    expect(emulator.stats.perInstance()[ID]?.mutexAnswers).toBeGreaterThan(0);
  }, 20_000);
});

describe.each<ForceStopReading>(["stopped-only", "shutdown-first"])(
  "ForceStop read as %s: a tenant without force_stop never forces a shutdown",
  (reading) => {
    const RUNNING = "ins-ccrun001";
    const HUNG = "ins-cchung01";
    let emulator: Emulator;
    let strict: TestGateway;
    let trusted: TestGateway;
    const STRICT = "token-no-force-0123456789";
    const TRUSTED = "token-force-ok-0123456789";
    beforeAll(async () => {
      const at = (instanceId: string, extra: object = {}) => ({
        instanceId,
        region: REGION,
        zone: "ap-guangzhou-3",
        projectId: 0,
        osName: "TencentOS Server 3.1 (TK4)",
        instanceState: "RUNNING",
        ...extra,
      });
      emulator = await createEmulator({
        host: "127.0.0.1",
        port: 0,
        taskMs: 200,
        forceStopReading: reading,
        inventory: {
          instances: [at(RUNNING), at(HUNG, { normalShutdownFails: true })],
          keyPairs: [{ keyId: "skey-aaaaaaaa" }],
        },
      });
      const env = {
        KEYGATE_DEFAULT_DEADLINE_MS: "5000",
        KEYGATE_TASK_POLL_MS: "50",
      };
      strict = await startGateway({ emulator, policyText: opsPolicy(STRICT, false), env });
      trusted = await startGateway({ emulator, policyText: opsPolicy(TRUSTED, true), env });
    }, 30_000);
    afterAll(async () => {
      await strict?.stop();
      await trusted?.stop();
      await emulator?.close();
    });
    const call = (gw: TestGateway, token: string, instanceId: string, forceStop: boolean) =>
      createClient(KeyPairService, createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }))
        .associateKeyPairs(
          {
            region: REGION,
            instanceIds: [instanceId],
            keyIds: ["skey-aaaaaaaa"],
            forceStop,
            waitForCompletion: true,
          },
          { headers: { authorization: `Bearer ${token}` } },
        )
        .then(
          (r) => r.instances.map((x) => x.state).join(","),
          (e: unknown) => `${Code[ConnectError.from(e).code]} ${detailOf(e)?.reason ?? ""}`,
        );
    const forced = () => emulator.stats.applies.flatMap((a) => a.forcedStops ?? []);

    it("force_stop requested: refused by policy, nothing sent", async () => {
      // Not counted: a replica's warm-up calls, which may still be arriving just after it is SERVING.
      const before = withoutWarmUp(emulator.stats.arrivals).length;
      expect(await call(strict, STRICT, RUNNING, true)).toBe("PermissionDenied POLICY_DENIED");
      expect(withoutWarmUp(emulator.stats.arrivals).length).toBe(before);
    });

    it("force_stop not requested: refused by the cloud, or shut down normally; never forced", async () => {
      const expected =
        reading === "stopped-only"
          ? [
              "FailedPrecondition UnsupportedOperation.InstanceStateRunning",
              "FailedPrecondition UnsupportedOperation.InstanceStateRunning",
            ]
          : ["SUCCESS", "FAILED"];
      expect([await call(strict, STRICT, RUNNING, false), await call(strict, STRICT, HUNG, false)]).toEqual(
        expected,
      );
      expect(forced()).toEqual([]);
    });

    it("a tenant with force_stop may force one down (the control)", async () => {
      expect(await call(trusted, TRUSTED, HUNG, true)).toBe("SUCCESS");
      expect(forced()).toEqual([HUNG]);
    });
  },
);
