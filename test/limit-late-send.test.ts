/**
 * Nothing leaves late (issue 14), with real parts: a real redis-server shared by two limiters
 * (replicas), the real SDK through keygate's adapter against the emulator, and the real send path.
 * - a late departure reported by one replica moves the shared window for the other;
 * - a grant whose request would be written after `sendBy` (the event loop stalls between the
 *   grant and the socket, here inside the credential provider the SDK calls) is not sent, does
 *   not count as an attempt, and the call goes out on a new grant.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { limiterOn, memoryBackend, redisBackend } from "../src/backends.js";
import { createAssociateService } from "../src/core/associate-service.js";
import { systemClock } from "../src/core/clock.js";
import { isKeygateError } from "../src/core/errors.js";
import { unrecordedExecution, type AuditEntry, type BucketSpec } from "../src/core/ports.js";
import { createLeases } from "../src/leases/leases.js";
import { createMemoryLeaseStore } from "../src/leases/memory-lease-store.js";
import { createTaskWatcher } from "../src/leases/task-watcher.js";
import type { LimiterHooks } from "../src/limiter/limiter.js";
import { createRedis } from "../src/store/redis.js";
import { createMeteredDescribe } from "../src/upstream/metered-describe.js";
import {
  createEmulator,
  EMULATOR_SECRET_ID,
  EMULATOR_SECRET_KEY,
  type Emulator,
} from "../src/upstream/emulator/index.js";
import { createTencentUpstream } from "../src/upstream/tencent-upstream.js";
import { whenReady } from "./support/redis-client.js";
import { startRedis, type RedisProcess } from "./support/redis-server.js";
import { sleep } from "./support/wait.js";

const never = new AbortController().signal;
const SPAN = 1040;

/** Holds the event loop: nothing else runs meanwhile (a CPU-throttled pod, a long GC pause). */
function stallLoop(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    /* busy */
  }
}

/** The emulator's credential; with `stallNext` set, the next hand-out first stalls the loop 150 ms. */
function stallingCredential() {
  const c = {
    stallNext: false,
    getCredential: () => {
      if (c.stallNext) stallLoop(150);
      c.stallNext = false;
      return Promise.resolve({ secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY });
    },
  };
  return c;
}

let redis: RedisProcess;
let emu: Emulator;
beforeAll(async () => {
  redis = await startRedis();
  emu = await createEmulator({ host: "127.0.0.1", port: 0, taskMs: 100 });
});
afterAll(async () => {
  await emu.close();
  await redis.stop();
});

describe("a late departure moves the shared window (real Redis, two replicas)", () => {
  it("replica A left 200 ms after its slot: replica B's 10th grant after it keeps a full span from the departure", async () => {
    const bucket: BucketSpec = { key: "cred/cvm/Associate-shift", limit: 10, windowMs: 1000 };
    const [ca, cb] = await Promise.all([
      whenReady(createRedis(redis.url, { connectionName: "a" })),
      whenReady(createRedis(redis.url, { connectionName: "b" })),
    ]);
    const shifted: number[] = [];
    const opts = { keyPrefix: "late", marginMs: 40, coldHoldOff: false };
    const a = limiterOn(redisBackend(ca), {
      ...opts,
      hooks: { onLateSend: (_b, outcome, ms) => outcome === "shifted" && shifted.push(ms) },
    });
    const b = limiterOn(redisBackend(cb), opts);
    try {
      const first = await a.acquire({ bucket, tenant: "t", weight: 1, signal: never });
      const departed = first.plannedAt + 200;
      first.sent(departed);
      expect(shifted).toHaveLength(1);
      expect(shifted[0]).toBeGreaterThanOrEqual(200);
      await sleep(50); // the shift is a fire-and-forget script: let it land before B books
      const at: number[] = [];
      await Promise.all(
        Array.from({ length: 10 }, () =>
          b.acquire({ bucket, tenant: "t", weight: 1, signal: never }).then(() => at.push(Date.now())),
        ),
      );
      at.sort((x, y) => x - y);
      // Without the shift the 10th would come one span after the slot, 200 ms inside the departure's window.
      expect(at[9]! - departed).toBeGreaterThanOrEqual(SPAN - 2);
      expect(at[9]! - first.plannedAt).toBeGreaterThanOrEqual(SPAN + 200 - 2);
    } finally {
      await Promise.all([a.close(), b.close()]);
      ca.disconnect();
      cb.disconnect();
    }
  });
});

describe("the last check is at the socket", () => {
  it("a grant that would leave after sendBy is not written: SEND_TOO_LATE, nothing reaches the cloud", async () => {
    const limiter = limiterOn(memoryBackend, { coldHoldOff: false });
    const late: string[] = [];
    const credential = stallingCredential();
    const up = createTencentUpstream({ upstreamUrl: emu.url, credential });
    // Warm, as a ready replica is: the SDK's first call in a process is slow by itself.
    await up.describeInstances("ap-guangzhou", ["ins-gz000001"], { signal: never });
    credential.stallNext = true;
    const mark = emu.stats.arrivals.length;
    try {
      const bucket: BucketSpec = { key: "adapter", limit: 10, windowMs: 1000 };
      const grant = await limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never });
      const g = { ...grant, notSent: (at: number) => late.push(`not_sent@${at > grant.sendBy}`) };
      const err = await up
        .describeInstances("ap-guangzhou", ["ins-gz000001"], { signal: never, grant: g })
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(isKeygateError(err) && err.reason).toBe("SEND_TOO_LATE");
      expect(late).toEqual(["not_sent@true"]);
      expect(emu.stats.arrivals.length).toBe(mark);
      // Later calls (no stall) go out on the same adapter; on a busy machine one may still miss
      // its 15 ms, and then it too never reaches the cloud.
      let sent = 0;
      for (let i = 0; i < 5 && sent === 0; i++) {
        const next = await limiter.acquire({ bucket, tenant: "t", weight: 1, signal: never });
        const r = await up
          .describeInstances("ap-guangzhou", ["ins-gz000001"], { signal: never, grant: next })
          .catch((e: unknown) => {
            if (isKeygateError(e) && e.reason === "SEND_TOO_LATE") return undefined;
            throw e;
          });
        if (r) {
          expect(r.instances).toHaveLength(1);
          sent += 1;
        }
      }
      expect(sent).toBe(1);
      expect(emu.stats.arrivals.length).toBe(mark + 1);
    } finally {
      up.close();
      await limiter.close();
    }
  });

  it("the orchestration takes a new grant and does not count the unsent one as an attempt", async () => {
    const events: string[] = [];
    const hooks: LimiterHooks = {
      onGrant: (b) => b === "associate" && events.push("grant"),
      onLateSend: (b, outcome) => b === "associate" && events.push(outcome),
    };
    const limiter = limiterOn(memoryBackend, { coldHoldOff: false, hooks });
    const credential = stallingCredential();
    const up = createTencentUpstream({ upstreamUrl: emu.url, credential });
    await up.describeInstances("ap-guangzhou", ["ins-gz000001"], { signal: never });
    credential.stallNext = true;
    const clock = systemClock;
    const describe = createMeteredDescribe({
      upstream: up,
      limiter,
      clock,
      bucket: { key: "describe", limit: 40, windowMs: 1000 },
      tenantBudget: 0,
    });
    const audits: AuditEntry[] = [];
    const calls: string[] = [];
    const service = createAssociateService({
      clock,
      upstream: up,
      limiter,
      leases: createLeases({ clock, store: createMemoryLeaseStore({ clock }) }),
      operations: { run: (op) => op.execute(unrecordedExecution), close: () => Promise.resolve() },
      policy: {
        authenticate: () => ({ name: "t", weight: 1 }),
        needsLookup: () => [],
        decide: () => ({ allowed: true }),
      },
      lookup: { get: () => Promise.resolve(new Map()) },
      tasks: createTaskWatcher({ clock, pollMs: 50, describe }),
      bucket: { key: "associate", limit: 10, windowMs: 1000 },
      scope: "s",
      owner: "me",
      taskMaxWaitMs: 5_000,
      hooks: {
        audit: (e) => audits.push(e),
        upstreamCall: (action, code) => calls.push(`${action}:${code}`),
      },
    });
    const mark = emu.stats.arrivals.length;
    try {
      const result = await service.associate({
        requestId: "late-1",
        credential: { bearer: "x" },
        signal: never,
        deadline: Date.now() + 10_000,
        request: {
          region: "ap-guangzhou",
          instanceIds: ["ins-gz000002"],
          keyIds: ["skey-aaaaaaaa"],
          forceStop: false,
          idempotencyKey: "",
          waitForCompletion: false,
        },
      });
      expect(result.requestId).not.toBe("");
      const associates = emu.stats.arrivals
        .slice(mark)
        .filter((a) => a.action === "AssociateInstancesKeyPairs");
      expect(associates).toHaveLength(1);
      // The stalled grant was not sent; each unsent grant was replaced by a new one.
      expect(events[1]).toBe("not_sent");
      const count = (what: string) => events.filter((e) => e === what).length;
      expect(count("grant")).toBe(count("not_sent") + 1);
      expect(calls).toEqual(["AssociateInstancesKeyPairs:OK"]);
      expect(audits.at(-1)?.attempts).toBe(1);
    } finally {
      up.close();
      await limiter.close();
    }
  });
});
