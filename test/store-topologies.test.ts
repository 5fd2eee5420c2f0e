import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { startEmulator, startGateway, type TestGateway } from "./support/app.js";
import { TOKEN_A, TWO_TENANTS } from "./support/policies.js";
import { startCluster, startSentinel, type RedisTopology } from "./support/redis-topologies.js";

/**
 * The whole request path (limiter, leases, coalescing, idempotency scripts) against Redis Cluster
 * and Sentinel: a missing hash tag would fail here with CROSSSLOT, a wrong Sentinel setup with
 * STORE_UNAVAILABLE.
 */
describe.each([
  ["Cluster", startCluster],
  ["Sentinel", startSentinel],
] as const)("Redis %s", (_name, start) => {
  let topology: RedisTopology;
  let emulator: Emulator;
  let gw: TestGateway;

  beforeAll(async () => {
    topology = await start();
    emulator = await startEmulator(50);
    gw = await startGateway({ emulator, policyText: TWO_TENANTS, env: { KEYGATE_REDIS_URL: topology.url } });
  }, 60_000);
  afterAll(async () => {
    await gw?.stop();
    await emulator?.close();
    await topology?.stop();
  });

  it("serves calls, coalesces and replays idempotency keys through the store", async () => {
    const client = createClient(
      KeyPairService,
      createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }),
    );
    const headers = { authorization: `Bearer ${TOKEN_A}` };
    const req = {
      region: "ap-guangzhou",
      instanceIds: ["ins-gz000001", "ins-gz000002"],
      keyIds: ["skey-aaaaaaaa"],
      idempotencyKey: "topology-1",
      waitForCompletion: true,
    };
    const first = await client.associateKeyPairs(req, { headers });
    expect(first.instances.map((i) => i.state)).toEqual(["SUCCESS", "SUCCESS"]);
    const again = await client.associateKeyPairs(req, { headers });
    expect(again.requestId).toBe(first.requestId);
    expect(again.deduplicated).toBe(true);
    const associates = emulator.stats.arrivals.filter((a) => a.action === "AssociateInstancesKeyPairs");
    expect(associates).toHaveLength(1);
  });
});
