/**
 * A replica that dies (SIGKILL, no drain) while its instances are leased for a running cloud task:
 * the lease stays in Redis, bounded by its TTL, and the surviving replica neither collides with
 * the task nor waits forever. The dying replica is a real `keygate serve` child process.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Redis } from "ioredis";
import { afterAll, beforeAll, expect, it } from "vitest";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import {
  createEmulator,
  EMULATOR_SECRET_ID,
  EMULATOR_SECRET_KEY,
  type Emulator,
} from "../src/upstream/emulator/index.js";
import { startGateway, type TestGateway } from "./support/app.js";
import { opsPolicy } from "./support/policies.js";
import { freePort, startRedis, type RedisProcess } from "./support/redis-server.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const TOKEN = "token-contention-crash-0123456789";
const REGION = "ap-guangzhou";
const INSTANCE = "ins-crash001";
/** The documented lease TTL (docs/decisions/leases.md): the longest a crashed replica blocks an instance. */
const LEASE_TTL_MS = 5_000;

const POLICY = opsPolicy(TOKEN);

let redis: RedisProcess;
let emulator: Emulator;
let survivor: TestGateway;
let child: ChildProcess | undefined;
let childUrl = "";
let dir: string;
let probe: Redis;

/** Starts `keygate serve` as a child process and resolves with its API URL once it listens. */
async function startChildGateway(): Promise<{ proc: ChildProcess; url: string }> {
  const port = await freePort();
  const policyFile = join(dir, "policy.yaml");
  writeFileSync(policyFile, POLICY);
  const proc = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", "serve"], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    env: {
      PATH: process.env.PATH ?? "",
      KEYGATE_HOST: "127.0.0.1",
      KEYGATE_PORT: String(port),
      KEYGATE_METRICS_PORT: String(await freePort()),
      KEYGATE_POLICY_FILE: policyFile,
      KEYGATE_REDIS_URL: redis.url,
      KEYGATE_UPSTREAM_URL: emulator.url,
      KEYGATE_TASK_POLL_MS: "100",
      KEYGATE_LOG_LEVEL: "info",
      TENCENTCLOUD_SECRET_ID: EMULATOR_SECRET_ID,
      TENCENTCLOUD_SECRET_KEY: EMULATOR_SECRET_KEY,
    },
  });
  let out = "";
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`keygate serve did not start:\n${out}`)), 20_000);
    const onData = (b: Buffer) => {
      out += b.toString("utf8");
      if (out.includes("keygate listening")) {
        clearTimeout(timer);
        resolve();
      }
    };
    proc.stdout?.on("data", onData);
    proc.stderr?.on("data", onData);
    proc.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`keygate serve exited with ${String(code)}:\n${out}`));
    });
  });
  proc.removeAllListeners("exit");
  return { proc, url: `http://127.0.0.1:${port}` };
}

async function killChild(): Promise<void> {
  const proc = child;
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once("exit", r));
  proc.kill("SIGKILL");
  await exited;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "keygate-crash-"));
  redis = await startRedis();
  probe = new Redis(redis.port, "127.0.0.1", { maxRetriesPerRequest: 1 });
  emulator = await createEmulator({
    host: "127.0.0.1",
    port: 0,
    // A long cloud task: it is still running when the replica that started it dies.
    taskMs: 8_000,
    inventory: {
      instances: [
        {
          instanceId: INSTANCE,
          region: REGION,
          zone: "ap-guangzhou-3",
          projectId: 0,
          osName: "TencentOS Server 3.1 (TK4)",
          instanceState: "STOPPED",
        },
      ],
      keyPairs: [{ keyId: "skey-aaaaaaaa" }, { keyId: "skey-bbbbbbbb" }],
    },
  });
  survivor = await startGateway({
    emulator,
    policyText: POLICY,
    // The server's own deadline (no client timer): its answer is what the client sees.
    env: { KEYGATE_REDIS_URL: redis.url, KEYGATE_LOG_LEVEL: "warn", KEYGATE_DEFAULT_DEADLINE_MS: "2000" },
  });
  ({ proc: child, url: childUrl } = await startChildGateway());
}, 30_000);

afterAll(async () => {
  await killChild();
  await survivor?.stop();
  probe?.disconnect();
  await emulator?.close();
  await redis?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function detailOf(err: unknown) {
  return ConnectError.from(err).findDetails(ErrorDetailSchema)[0];
}
const associates = () => emulator.stats.arrivals.filter((a) => a.action === "AssociateInstancesKeyPairs");

it("a replica killed mid-task leaves a TTL-bounded lease; the survivor does not collide with the task", async () => {
  const auth = { authorization: `Bearer ${TOKEN}` };
  const dying = createClient(
    KeyPairService,
    createConnectTransport({ baseUrl: childUrl, httpVersion: "1.1" }),
  );
  const res = await dying.associateKeyPairs(
    { region: REGION, instanceIds: [INSTANCE], keyIds: ["skey-aaaaaaaa"] },
    { headers: auth, timeoutMs: 20_000 },
  );
  expect(res.requestId).not.toBe("");
  // The child answered before the task ended and holds the lease in the background; now it dies.
  await killChild();
  expect(emulator.inventory.get(REGION, INSTANCE)?.latestOperationState).toBe("OPERATING");

  const leaseKeys = (await probe.keys("keygate:*:lease:*")).filter((k) => k.endsWith(`:lease:${INSTANCE}`));
  expect(leaseKeys).toHaveLength(1);
  const key = leaseKeys[0] ?? "";
  // Value "<expiresAt by Redis TIME>/<fence>:<owner>": still held (nobody released it), and
  // bounded: the instance is free again within the TTL.
  const value = (await probe.get(key)) ?? "";
  const [sec = "0", micro = "0"] = await probe.time();
  const ttl = Number(value.split("/")[0]) - (Number(sec) * 1000 + Math.floor(Number(micro) / 1000));
  expect(ttl).toBeGreaterThan(0);
  expect(ttl).toBeLessThanOrEqual(LEASE_TTL_MS);
  expect(value).toContain(`:${child?.pid ?? "?"}`);

  // The survivor respects the dead replica's lease: no call reaches the cloud while its task runs.
  const survivorClient = createClient(
    KeyPairService,
    createConnectTransport({ baseUrl: survivor.url, httpVersion: "1.1" }),
  );
  const err = await survivorClient
    .associateKeyPairs(
      { region: REGION, instanceIds: [INSTANCE], keyIds: ["skey-bbbbbbbb"] },
      { headers: auth },
    )
    .catch((e: unknown) => e);
  expect(ConnectError.from(err).code).toBe(Code.Aborted);
  expect(detailOf(err)?.reason).toBe("INSTANCE_BUSY");
  const retryAfter = Number(detailOf(err)?.retryAfterMs ?? 0n);
  expect(retryAfter).toBeGreaterThan(0);
  expect(retryAfter).toBeLessThanOrEqual(LEASE_TTL_MS);
  expect(associates().map((a) => a.outcome)).toEqual(["OK"]);
});
