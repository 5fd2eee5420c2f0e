/**
 * Logs of a real `keygate serve` process: every request's audit line carries its request id, and
 * a caller's own `x-request-id` is the one used (when it is safe to log), so logs join across systems.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { startEmulator } from "./support/app.js";
import { startRedis } from "./support/redis-server.js";
import { sha256 } from "./support/policies.js";
import { type Child, killStrays, serveEnv, spawnKeygate, waitListening } from "./support/process.js";
import { pollUntil } from "./support/wait.js";

const TOKEN = "ops-logs-token-0123456789";
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

let emulator: Emulator;
let dir: string;
let child: Child;
let url: string;

beforeAll(async () => {
  emulator = await startEmulator(100);
  dir = mkdtempSync(join(tmpdir(), "keygate-ops-logs-"));
  const policyFile = join(dir, "policy.yaml");
  writeFileSync(
    policyFile,
    `tenants:\n  ops:\n    tokens_sha256: ["${sha256(TOKEN)}"]\n    regions: [ap-guangzhou]\n    instances: "*"\n    keys: "*"\n`,
  );
  child = spawnKeygate(["serve"], serveEnv(policyFile, emulator.url));
  const { api } = await waitListening(child);
  url = `http://127.0.0.1:${api}/keygate.v1.KeyPairService/AssociateKeyPairs`;
});
afterAll(async () => {
  await killStrays();
  await emulator?.close();
  rmSync(dir, { recursive: true, force: true });
});

let n = 0;
/** A curl-style Connect JSON call; returns the audit line written for it. */
async function call(headers: Record<string, string>, instance = "ins-gz000001") {
  n += 1;
  const key = `logs-${n}`;
  const res = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: JSON.stringify({
      region: "ap-guangzhou",
      instanceIds: [instance],
      keyIds: ["skey-aaaaaaaa"],
      idempotencyKey: key,
    }),
  });
  await res.arrayBuffer();
  // One audit line per call, written before the answer left; poll only for stdout to arrive.
  await pollUntil(() => child.logs().filter((l) => l.audit === true).length >= n, `audit line ${n}`);
  return { status: res.status, audit: child.logs().filter((l) => l.audit === true)[n - 1] ?? {} };
}

describe("request ids in the logs", () => {
  it("uses the caller's x-request-id on the audit line", async () => {
    const { status, audit } = await call({
      Authorization: `Bearer ${TOKEN}`,
      "x-request-id": "checkout-7f3a:retry.2_b",
    });
    expect(status).toBe(200);
    expect(audit).toMatchObject({ requestId: "checkout-7f3a:retry.2_b", decision: "allowed" });
  });

  it("makes one up when the caller sends none, also for refusals", async () => {
    const ok = await call({ Authorization: `Bearer ${TOKEN}` }, "ins-gz000002");
    expect(ok.audit.requestId).toMatch(UUID);
    const denied = await call({});
    expect(denied.status).toBe(401);
    expect(denied.audit).toMatchObject({ decision: "denied", reason: "UNAUTHENTICATED" });
    expect(denied.audit.requestId).toMatch(UUID);
    expect(denied.audit.requestId).not.toBe(ok.audit.requestId);
  });

  it("replaces an x-request-id that is unsafe to log (too long, spaces, tabs, quotes)", async () => {
    for (const bad of ["x".repeat(65), "two words", "a\tb", 'quote"d']) {
      const { audit } = await call({ Authorization: `Bearer ${TOKEN}`, "x-request-id": bad }, "ins-gz000003");
      expect(audit.requestId).toMatch(UUID);
    }
    expect(child.stdout()).not.toContain("x".repeat(65));
  });

  it("every log line that concerns one request carries its request id", () => {
    // Per-request lines are the audit lines and the background task-watch warnings; start-up,
    // policy and shutdown lines concern no request.
    const perRequest = child
      .logs()
      .filter((l) => l.audit === true || String(l.msg).startsWith("background task watch"));
    expect(perRequest.length).toBeGreaterThanOrEqual(n);
    for (const l of perRequest) expect(typeof l.requestId === "string" && l.requestId !== "").toBe(true);
    // Nothing in the logs is a bearer token.
    expect(child.stdout()).not.toContain(TOKEN);
  });
});

describe("a background task-watch warning", () => {
  it("carries the request id of the call whose lease it held", { timeout: 60_000 }, async () => {
    // A cloud task that outlives the call, on a Redis store whose lease we then take away:
    // the lease renewal (every 10 s) finds it gone and the background watch gives up, logging.
    const redis = await startRedis();
    const slowCloud = await startEmulator(30_000);
    let bg: Child | undefined;
    try {
      const policyFile = join(dir, "policy.yaml");
      bg = spawnKeygate(
        ["serve"],
        serveEnv(policyFile, slowCloud.url, {
          KEYGATE_REDIS_URL: redis.url,
          KEYGATE_TASK_POLL_MS: "200",
          KEYGATE_DRAIN_MS: "1000",
        }),
      );
      const { api } = await waitListening(bg);
      const res = await fetch(`http://127.0.0.1:${api}/keygate.v1.KeyPairService/AssociateKeyPairs`, {
        method: "POST",
        headers: {
          "Content-Type": "application/json",
          Authorization: `Bearer ${TOKEN}`,
          "x-request-id": "bg-watch-1",
        },
        body: JSON.stringify({
          region: "ap-guangzhou",
          instanceIds: ["ins-gz000001"],
          keyIds: ["skey-aaaaaaaa"],
        }),
      });
      expect(res.status).toBe(200);

      const client = new Redis(redis.url, { maxRetriesPerRequest: 1 });
      try {
        const leases = await client.keys("keygate:*:lease:ins-gz000001");
        expect(leases).toHaveLength(1);
        await client.del(...leases);
      } finally {
        client.disconnect();
      }
      const server = bg;
      await server.waitFor(
        (c) => c.logs().some((l) => String(l.msg).startsWith("background task watch")),
        "the background task-watch warning",
        40_000,
      );
      const warning = server.logs().find((l) => String(l.msg).startsWith("background task watch"));
      expect(warning).toMatchObject({ level: "warn", requestId: "bg-watch-1" });
      expect(server.logs().find((l) => l.audit === true)).toMatchObject({ requestId: "bg-watch-1" });
      server.signal("SIGTERM");
      expect((await server.exited).code).toBe(0);
    } finally {
      await bg?.kill();
      await slowCloud.close();
      await redis.stop();
    }
  });
});
