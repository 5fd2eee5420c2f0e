/**
 * Issue 13 end to end: real replicas on one private Redis, the emulator behind the real SDK.
 * Waiting callers' single-instance requests travel in shared cloud calls (seen at the emulator
 * with exactly their instances and key), a bad instance fails only its caller, a member leaving
 * does not cancel the others' call, idempotency stays per caller. Figures: `npm run bench:batch`.
 */
import { afterEach, describe, expect, it } from "vitest";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { splitBound } from "../src/core/batcher.js";
import { ASSOCIATE, BATCH_POLICY, fleetIds, LOAD_KEY, LOAD_TOKEN } from "./support/fleet.js";
import { startLimitFleet, type LimitFleet } from "./support/limit-fleet.js";
import type { TestGateway } from "./support/app.js";

let fleet: LimitFleet | undefined;
afterEach(async () => {
  await fleet?.stop();
  fleet = undefined;
});

function client(g: TestGateway) {
  return createClient(KeyPairService, createConnectTransport({ baseUrl: g.url, httpVersion: "1.1" }));
}

function associate(
  g: TestGateway,
  instanceIds: string[],
  opts: { timeoutMs?: number; idempotencyKey?: string } = {},
) {
  return client(g).associateKeyPairs(
    {
      region: "ap-guangzhou",
      instanceIds,
      keyIds: [LOAD_KEY],
      idempotencyKey: opts.idempotencyKey ?? "",
    },
    { headers: { authorization: `Bearer ${LOAD_TOKEN}` }, timeoutMs: opts.timeoutMs ?? 20_000 },
  );
}

const reasonOf = (e: unknown) => ConnectError.from(e).findDetails(ErrorDetailSchema)[0]?.reason ?? String(e);
const settled = <T>(p: Promise<T>) =>
  p.then(
    (v) => ({ ok: true as const, v }),
    (e: unknown) => ({ ok: false as const, e }),
  );

describe("batching (issue 13)", () => {
  it("waiting callers on 2 replicas share calls: the emulator sees their instances once, with their key", async () => {
    fleet = await startLimitFleet({ replicas: 2, instances: 70, policyText: BATCH_POLICY });
    const { emulator, gateways } = fleet;
    const ids = fleetIds(60);
    // Ten calls take the window's ten tokens, so the sixty that follow at once have to wait (no
    // linger: merging only what waits anyway).
    const opening = fleetIds(70).slice(60);
    await Promise.all(opening.map((id, i) => associate(gateways[i % 2]!, [id])));
    const answers = await Promise.all(ids.map((id, i) => associate(gateways[i % 2]!, [id])));
    const ours = new Set(answers.map((r) => r.requestId));
    const applies = emulator.stats.applies.filter((a) => ours.has(a.requestId));
    // 60 callers under 10 calls/s: without merging 60 calls; with it, far fewer.
    expect(applies.length).toBeLessThan(30);
    expect(Math.max(...applies.map((a) => a.instanceIds.length))).toBeGreaterThan(1);
    expect(applies.flatMap((a) => a.instanceIds).sort()).toEqual([...ids].sort());
    for (const a of applies) expect(a.keyIds).toEqual([LOAD_KEY]);
    expect(emulator.stats.maxInWindow({ action: ASSOCIATE })).toBeLessThanOrEqual(10);
    // Each caller hears the RequestId and size of the call that carried its instance.
    const byRequest = new Map(applies.map((a) => [a.requestId, a]));
    for (const [i, r] of answers.entries()) {
      const a = byRequest.get(r.requestId);
      expect(a?.instanceIds).toContain(ids[i]);
      expect(r.batchInstances).toBe(a?.instanceIds.length);
      expect(r.batchId).not.toBe("");
    }
    // One audit line per caller, with the batch id and size.
    const audits = gateways
      .flatMap((g) => g.logs.audits())
      .filter((l) => ours.has(String(l.upstreamRequestId)));
    expect(audits).toHaveLength(60);
    for (const line of audits) {
      expect(line.decision).toBe("allowed");
      expect(typeof line.batchId).toBe("string");
      const a = byRequest.get(line.upstreamRequestId as string);
      expect(line.batchSize).toBe(a?.instanceIds.length);
    }
    const metrics = await (await fetch(gateways[0]!.metricsUrl)).text();
    expect(metrics).toMatch(/keygate_batch_instances_count \d+/);
  }, 60_000);

  it("a bad instance among good ones: NOT_FOUND for its caller only, within the split bound", async () => {
    fleet = await startLimitFleet({
      replicas: 1,
      instances: 20,
      policyText: BATCH_POLICY,
      env: { KEYGATE_BATCH_LINGER_MS: "300" },
    });
    const { emulator, gateways } = fleet;
    const good = fleetIds(19);
    const bad = "ins-zz000001"; // well-formed, allowed by policy, unknown to the cloud
    const all = [...good.slice(0, 7), bad, ...good.slice(7)];
    const results = await Promise.all(all.map((id) => settled(associate(gateways[0]!, [id]))));
    for (const [i, r] of results.entries()) {
      if (all[i] === bad) {
        expect(r.ok).toBe(false);
        if (!r.ok) expect(reasonOf(r.e)).toBe("InvalidInstanceId.NotFound");
      } else {
        expect(r.ok, `caller ${all[i]}`).toBe(true);
      }
    }
    expect(emulator.stats.applies.flatMap((a) => a.instanceIds).sort()).toEqual([...good].sort());
    const calls = emulator.stats.times({ action: ASSOCIATE }).length;
    const merged = Math.max(...emulator.stats.applies.map((a) => a.instanceIds.length));
    expect(merged).toBeGreaterThan(1);
    // One DescribeInstances sorts the refused call out: the missing instance's caller hears
    // NOT_FOUND from it, the others go again together. No bisection, so one refused call per
    // linger group and one resend each (the split bound stays the ceiling).
    expect(emulator.stats.outcomes({ action: ASSOCIATE })["InvalidInstanceId.NotFound"]).toBe(1);
    expect(calls).toBeLessThanOrEqual(3);
    expect(calls).toBeLessThanOrEqual(2 + splitBound(20, 1));
    const metrics = await (await fetch(gateways[0]!.metricsUrl)).text();
    expect(metrics).toMatch(/keygate_batch_sorted_out_total 1\b/);
    expect(metrics).toMatch(/keygate_batch_splits_total 0\b/);
    expect(emulator.stats.maxInWindow({ action: ASSOCIATE })).toBeLessThanOrEqual(10);
  }, 60_000);

  it("a member that leaves after the send does not cancel the call the others ride", async () => {
    fleet = await startLimitFleet({
      replicas: 1,
      instances: 7,
      policyText: BATCH_POLICY,
      env: { KEYGATE_BATCH_LINGER_MS: "200" },
    });
    const { emulator, gateways } = fleet;
    // A first call warms the replica up (connections, scripts), so the leaver's short deadline
    // measures the merged call only.
    await associate(gateways[0]!, [fleetIds(7)[6]!]);
    emulator.stats.reset();
    emulator.faults.set({ rules: [{ kind: "lateReply", action: ASSOCIATE, delayMs: 1_500, next: 1 }] });
    const ids = fleetIds(6);
    const leaver = settled(associate(gateways[0]!, [ids[0]!], { timeoutMs: 1_000 }));
    const stayers = ids.slice(1).map((id) => settled(associate(gateways[0]!, [id])));
    const left = await leaver;
    expect(left.ok).toBe(false);
    const rest = await Promise.all(stayers);
    expect(rest.every((r) => r.ok)).toBe(true);
    // One call carried all six, the leaver's instance included: it went on after the leaver left.
    expect(emulator.stats.applies).toHaveLength(1);
    expect(emulator.stats.applies[0]!.instanceIds.sort()).toEqual([...ids].sort());
    const ok = rest.flatMap((r) => (r.ok ? [r.v] : []));
    expect(new Set(ok.map((r) => r.requestId)).size).toBe(1);
    expect(ok[0]!.batchInstances).toBe(6);
  }, 60_000);

  it("idempotency stays per caller: replays answer from each caller's own record, no new call", async () => {
    fleet = await startLimitFleet({
      replicas: 2,
      instances: 10,
      policyText: BATCH_POLICY,
      env: { KEYGATE_BATCH_LINGER_MS: "200" },
    });
    const { emulator, gateways } = fleet;
    const ids = fleetIds(10);
    const first = await Promise.all(
      ids.map((id, i) => associate(gateways[i % 2]!, [id], { idempotencyKey: `rollout-${i}` })),
    );
    expect(first.every((r) => !r.deduplicated)).toBe(true);
    const calls = emulator.stats.times({ action: ASSOCIATE }).length;
    expect(calls).toBeLessThan(10);
    // Replayed on the other replica: the same answer, the same carrying call, flagged.
    const again = await Promise.all(
      ids.map((id, i) => associate(gateways[(i + 1) % 2]!, [id], { idempotencyKey: `rollout-${i}` })),
    );
    for (const [i, r] of again.entries()) {
      expect(r.deduplicated).toBe(true);
      expect(r.requestId).toBe(first[i]!.requestId);
      expect(r.batchInstances).toBe(first[i]!.batchInstances);
    }
    expect(emulator.stats.times({ action: ASSOCIATE })).toHaveLength(calls);
    // A key reused for other instances is still refused for its caller alone.
    const misuse = await settled(associate(gateways[0]!, [ids[1]!], { idempotencyKey: "rollout-0" }));
    expect(misuse.ok).toBe(false);
  }, 60_000);
});
