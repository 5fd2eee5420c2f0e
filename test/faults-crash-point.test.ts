/**
 * KEYGATE_TEST_CRASH_AT: a real `keygate serve` child SIGKILLs itself at the named step of the
 * request path, so fault tests and bench:faults can leave an operation at each step of its life.
 * What the cloud saw tells which side of the send each point is on.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { loadSettings, SettingsError } from "../src/config/settings.js";
import { CRASH_POINTS } from "../src/core/crash-point.js";
import { KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { createEmulator, type Emulator } from "../src/upstream/emulator/index.js";
import { opsPolicy } from "./support/policies.js";
import { killStrays, serveEnv, spawnKeygate, waitListening } from "./support/process.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";

const TOKEN = "token-crash-point-0123456789";
const POLICY = opsPolicy(TOKEN);

let dir: string;
let redis: RedisProcess | undefined;
let emulator: Emulator;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "keygate-crash-"));
  writeFileSync(join(dir, "policy.yaml"), POLICY);
  emulator = await createEmulator({ taskMs: 500 });
});
afterEach(async () => {
  await killStrays();
  await redis?.stop();
  emulator.reset();
});
afterAll(async () => {
  await emulator.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("KEYGATE_TEST_CRASH_AT", () => {
  it.each([
    ["after-claim", 0],
    ["after-lease", 0],
    ["before-send", 0],
    ["after-send", 1],
    ["after-record", 1],
  ] as const)(
    "%s: the process dies by SIGKILL, the caller gets no answer, the cloud applied %i times",
    async (point, applies) => {
      // A Redis of its own: the crash leaves the claim and leases behind on purpose.
      redis = await startRedis();
      const gw = spawnKeygate(
        ["serve"],
        serveEnv(join(dir, "policy.yaml"), emulator.url, {
          KEYGATE_REDIS_URL: redis.url,
          KEYGATE_TEST_CRASH_AT: point,
          KEYGATE_LOG_LEVEL: "info",
        }),
      );
      const { api } = await waitListening(gw);
      const client = createClient(
        KeyPairService,
        createConnectTransport({ baseUrl: `http://127.0.0.1:${api}`, httpVersion: "1.1" }),
      );
      const call = client
        .associateKeyPairs(
          { region: "ap-guangzhou", instanceIds: ["ins-gz000001"], keyIds: ["skey-aaaaaaaa"] },
          { headers: { authorization: `Bearer ${TOKEN}` }, timeoutMs: 30_000 },
        )
        .then(
          () => "answered",
          (e: unknown) => (e instanceof ConnectError ? e.code : "other"),
        );
      expect(await gw.exited).toEqual({ code: null, signal: "SIGKILL" });
      expect(await call).not.toBe("answered");
      expect(emulator.stats.applies).toHaveLength(applies);
      // No audit line: the process died before it could write one.
      expect(gw.logs().filter((l) => l.audit === true)).toEqual([]);
    },
  );

  it("is off by default and refuses an unknown point, naming the valid ones", () => {
    const base = {
      KEYGATE_POLICY_FILE: "/p.yaml",
      TENCENTCLOUD_SECRET_ID: "AKIDx",
      TENCENTCLOUD_SECRET_KEY: "k",
    };
    expect(loadSettings(base).testCrashAt).toBeUndefined();
    expect(loadSettings({ ...base, KEYGATE_TEST_CRASH_AT: "after-send" }).testCrashAt).toBe("after-send");
    let problems: string[] = [];
    try {
      loadSettings({ ...base, KEYGATE_TEST_CRASH_AT: "somewhere" });
    } catch (e) {
      if (e instanceof SettingsError) problems = e.problems;
    }
    expect(problems).toEqual([`KEYGATE_TEST_CRASH_AT="somewhere" must be one of ${CRASH_POINTS.join(", ")}`]);
  });
});
