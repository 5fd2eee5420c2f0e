/**
 * Issue 9 rows 8, 9 and 15 against real `keygate serve` processes, the real SDK and the emulator:
 * DescribeInstances never exceeds its bucket and the cloud's refusals never reach a caller raw;
 * one tenant's flood of refused requests costs lookups only within its own budget; waiters on a
 * busy instance are capped, cost Redis almost nothing, and are woken by the release notice.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { createEmulator, type Emulator, type InventorySpec } from "../src/upstream/emulator/index.js";
import { withoutWarmUp } from "./support/fleet.js";
import { sha256 } from "./support/policies.js";
import { killStrays, serveEnv, spawnKeygate, waitListening } from "./support/process.js";
import { freePort, startRedis, type RedisProcess } from "./support/redis-server.js";

const REGION = "ap-guangzhou";
const TOKEN_A = "lookups-tenant-a-token-0123456789";
const TOKEN_B = "lookups-tenant-b-token-0123456789";
const TOKEN_OPS = "lookups-ops-token-0123456789";
const DESCRIBE = "DescribeInstances";
/** DescribeInstances arrivals a test caused (the replicas' warm-up calls left out). */
const describeTimes = (emulator: Emulator) =>
  withoutWarmUp(emulator.stats.arrivals)
    .filter((a) => a.action === DESCRIBE)
    .map((a) => a.at);
const ASSOCIATE = "AssociateInstancesKeyPairs";

const id = (prefix: string, n: number) => `ins-${prefix}${String(n).padStart(6, "0")}`;
const ownA = (n: number) => id("la", n);
const ownB = (n: number) => id("lb", n);
const busy = "ins-lbusy001";
const callerKey = (n: number) => `skey-w${String(n).padStart(7, "0")}`;

function inventory(): InventorySpec {
  const inst = (instanceId: string, owner: string) => ({
    instanceId,
    region: REGION,
    zone: "ap-guangzhou-3",
    projectId: 1001,
    osName: "TencentOS Server 3.1 (TK4)",
    instanceState: "STOPPED",
    tags: { owner },
    keyIds: [],
  });
  return {
    instances: [
      ...Array.from({ length: 50 }, (_, i) => inst(ownA(i + 1), "team-a")),
      ...Array.from({ length: 400 }, (_, i) => inst(ownB(i + 1), "team-b")),
      inst(busy, "ops"),
    ],
    keyPairs: [
      { keyId: "skey-aaaaaaaa" },
      { keyId: "skey-bbbbbbbb" },
      ...Array.from({ length: 200 }, (_, i) => ({ keyId: callerKey(i) })),
    ],
  };
}

/** Tags select the instances of a and b, so every call of theirs needs a lookup; ops needs none. */
const POLICY = `
tenants:
  team-a:
    tokens_sha256: ["${sha256(TOKEN_A)}"]
    regions: [${REGION}]
    instances:
      tags: { owner: team-a }
    keys: [skey-aaaaaaaa]
  team-b:
    tokens_sha256: ["${sha256(TOKEN_B)}"]
    regions: [${REGION}]
    instances:
      tags: { owner: team-b }
    keys: "*"
  ops:
    tokens_sha256: ["${sha256(TOKEN_OPS)}"]
    regions: [${REGION}]
    instances: "*"
    keys: "*"
`;

let dir: string;
let policyFile: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "keygate-lookups-"));
  policyFile = join(dir, "policy.yaml");
  writeFileSync(policyFile, POLICY);
});
afterEach(async () => {
  await killStrays();
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

async function serve(emulator: Emulator, extra: Record<string, string>) {
  const port = await freePort();
  const child = spawnKeygate(
    ["serve"],
    serveEnv(policyFile, emulator.url, {
      KEYGATE_PORT: String(port),
      KEYGATE_METRICS_PORT: String(await freePort()),
      ...extra,
    }),
  );
  await waitListening(child);
  return createClient(KeyPairService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
}

interface Answer {
  code: Code | "OK";
  reason: string;
  at: number;
}

async function call(
  client: Client<typeof KeyPairService>,
  token: string,
  instanceIds: string[],
  keyIds: string[],
  opts: { timeoutMs?: number; wait?: boolean } = {},
): Promise<Answer> {
  try {
    await client.associateKeyPairs(
      { region: REGION, instanceIds, keyIds, waitForCompletion: opts.wait ?? false },
      { headers: { authorization: `Bearer ${token}` }, timeoutMs: opts.timeoutMs ?? 60_000 },
    );
    return { code: "OK", reason: "", at: Date.now() };
  } catch (e) {
    const err = ConnectError.from(e);
    return { code: err.code, reason: err.findDetails(ErrorDetailSchema)[0]?.reason ?? "", at: Date.now() };
  }
}

const count = (answers: Answer[], pred: (a: Answer) => boolean) => answers.filter(pred).length;

describe("lookups are budgeted (issue 9, rows 8 and 9)", () => {
  let emulator: Emulator;
  beforeAll(async () => {
    emulator = await createEmulator({ host: "127.0.0.1", port: 0, taskMs: 200, inventory: inventory() });
  });
  afterAll(async () => {
    await emulator?.close();
  });
  afterEach(() => {
    emulator.faults.reset();
    emulator.stats.reset();
  });

  it("row 8: 200 concurrent calls needing lookups never exceed 40 DescribeInstances per sliding second, and no caller hears RequestLimitExceeded", async () => {
    // No per-tenant budget here: all 200 lookups compete for the shared 40/s bucket at once.
    const client = await serve(emulator, {
      KEYGATE_LOOKUP_RATE_PER_TENANT: "0",
      KEYGATE_TASK_POLL_MS: "1000",
    });
    // Someone outside keygate spends the quota too: the cloud refuses a few describes.
    emulator.faults.set({ rules: [{ kind: "requestLimitExceeded", action: DESCRIBE, next: 3 }] });
    const calls = [
      // Allowed: team-a's own instances (one lookup each, then an associate).
      ...Array.from({ length: 20 }, (_, i) => call(client, TOKEN_A, [ownA(i + 1)], ["skey-aaaaaaaa"])),
      // Refused after the lookup: team-b's instances.
      ...Array.from({ length: 180 }, (_, i) => call(client, TOKEN_A, [ownB(i + 1)], ["skey-aaaaaaaa"])),
    ];
    const answers = await Promise.all(calls);

    expect(emulator.stats.maxInWindow({ action: DESCRIBE }, 1000)).toBeLessThanOrEqual(40);
    expect(emulator.stats.outcomes({ action: DESCRIBE }).RequestLimitExceeded).toBe(3);
    expect(answers.filter((a) => a.reason.startsWith("RequestLimitExceeded"))).toEqual([]);
    expect(answers.slice(0, 20).filter((a) => a.code !== "OK")).toEqual([]);
    expect(count(answers.slice(20), (a) => a.reason === "POLICY_DENIED")).toBe(180);
    // One lookup per call (distinct instances) plus the three refused by the cloud and retried.
    expect(describeTimes(emulator).length).toBeGreaterThanOrEqual(203);
  }, 120_000);

  it("row 9: a flood of refused requests from one tenant costs lookups only within its budget, and another tenant is not starved", async () => {
    const client = await serve(emulator, { KEYGATE_LOOKUP_RATE_PER_TENANT: "10" });

    // Refused by a rule that needs no instance data (a key team-a may not use): no lookup at all.
    const keyDenied = await Promise.all(
      Array.from({ length: 100 }, (_, i) => call(client, TOKEN_A, [ownB(i + 1)], ["skey-bbbbbbbb"])),
    );
    expect(count(keyDenied, (a) => a.reason === "POLICY_DENIED")).toBe(100);
    expect(describeTimes(emulator)).toEqual([]);

    // Refused only after a lookup: 350 distinct instances, so the cache cannot help.
    const started = Date.now();
    const flood = Array.from({ length: 350 }, (_, i) =>
      call(client, TOKEN_A, [ownB(i + 1)], ["skey-aaaaaaaa"], { timeoutMs: 4_000 }),
    );
    await new Promise((r) => setTimeout(r, 500));
    const bStart = Date.now();
    const b = await call(client, TOKEN_B, [ownB(400)], ["skey-bbbbbbbb"], { wait: true, timeoutMs: 30_000 });
    const bMs = Date.now() - bStart;
    const answers = await Promise.all(flood);
    const elapsedS = (Date.now() - started) / 1000;

    expect(b.code).toBe("OK");
    // Generous: a starved call would wait behind the whole flood (350 lookups at 10/s = 35 s).
    expect(bMs).toBeLessThan(10_000);
    // The flood ends in documented refusals only: POLICY_DENIED after a lookup, RATE_LIMITED
    // beyond the budget, DEADLINE_EXCEEDED for a lookup the caller's deadline cut short.
    const documented = new Set(["POLICY_DENIED", "RATE_LIMITED", "DEADLINE_EXCEEDED"]);
    const undocumented = answers.filter((a) => !documented.has(a.reason) && a.code !== Code.DeadlineExceeded);
    expect(undocumented).toEqual([]);
    expect(count(answers, (a) => a.reason === "RATE_LIMITED")).toBeGreaterThan(200);
    // A's lookups stay within its 10 per second; B's lookup and its task polling come on top.
    const describes = describeTimes(emulator).length;
    const budget = 10 * (Math.ceil(elapsedS) + 1);
    expect(count(answers, (a) => a.reason !== "RATE_LIMITED")).toBeLessThanOrEqual(budget);
    expect(describes).toBeLessThanOrEqual(budget + 1 + Math.ceil((bMs + 1000) / 100));
  }, 120_000);
});

describe("waiters on one instance are bounded and notified (issue 9, row 15)", () => {
  const TASK_MS = 4_000;
  let emulator: Emulator;
  let redis: RedisProcess;
  let admin: Redis;
  beforeAll(async () => {
    redis = await startRedis();
    admin = new Redis({ port: redis.port, host: "127.0.0.1" });
    emulator = await createEmulator({ host: "127.0.0.1", port: 0, taskMs: TASK_MS, inventory: inventory() });
  });
  afterAll(async () => {
    admin?.disconnect();
    await emulator?.close();
    await redis?.stop();
  });

  const commandsProcessed = async () =>
    Number(/total_commands_processed:(\d+)/.exec(await admin.info("stats"))?.[1] ?? NaN);

  it("row 15: 200 callers on one busy instance: 16 wait, the rest get ABORTED INSTANCE_BUSY, Redis stays quiet, and the release wakes a waiter at once", async () => {
    // The re-check is far longer than the bound asserted below, so only the notice can wake them.
    const client = await serve(emulator, {
      KEYGATE_REDIS_URL: redis.url,
      // Slow task polling, so its DescribeInstances grants (Redis scripts too) hardly count below.
      KEYGATE_TASK_POLL_MS: "1000",
      KEYGATE_MAX_INSTANCE_WAITERS: "16",
      KEYGATE_LEASE_RECHECK_MS: "20000",
    });
    const first = await call(client, TOKEN_OPS, [busy], [callerKey(0)]);
    expect(first.code).toBe("OK");
    const firstAt = emulator.stats.times({ action: ASSOCIATE })[0] ?? NaN;

    // Distinct key sets: no two calls coalesce, each one needs the instance's lease.
    const waiters = Array.from({ length: 199 }, (_, i) =>
      call(client, TOKEN_OPS, [busy], [callerKey(i + 1)]),
    );
    const refused: Answer[] = [];
    for (const w of waiters) void w.then((a) => a.reason === "INSTANCE_BUSY" && refused.push(a));
    const until = Date.now() + 20_000;
    while (refused.length < 199 - 16 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    expect(refused.length).toBe(199 - 16);
    expect(refused.every((a) => a.code === Code.Aborted)).toBe(true);

    // While the 16 wait for the lease: each keeps its own operation's claim alive (about one
    // renewal a second), plus the store watchdog's probe and the task watch's limiter script —
    // some dozens of commands a second, not the thousands that polling cost.
    const before = await commandsProcessed();
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, 1_000));
    const rate = ((await commandsProcessed()) - before) / ((Date.now() - t0) / 1000);
    expect(rate).toBeLessThan(150);

    // The first task ends, its lease is released, and a waiter's associate follows within seconds.
    const until2 = Date.now() + 30_000;
    while (emulator.stats.times({ action: ASSOCIATE }).length < 2 && Date.now() < until2)
      await new Promise((r) => setTimeout(r, 20));
    const secondAt = emulator.stats.times({ action: ASSOCIATE })[1] ?? NaN;
    expect(secondAt - (firstAt + TASK_MS)).toBeLessThan(5_000);
    // No one collided with the task (G3).
    const outcomes = emulator.stats.outcomes({ action: ASSOCIATE });
    expect(Object.keys(outcomes).filter((o) => o !== "OK" && o !== "PENDING")).toEqual([]);
  }, 120_000);
});
