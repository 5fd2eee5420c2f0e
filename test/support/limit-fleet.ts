import { createEmulator, type Emulator } from "../../src/upstream/emulator/index.js";
import { startGateway, type TestGateway } from "./app.js";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { KeyPairService } from "../../src/gen/keygate/v1/keygate_pb.js";
import { FLEET_POLICY, fleetIds, fleetInventory, LOAD_KEY, LOAD_TOKEN } from "./fleet.js";
import { startRedis, type RedisProcess } from "./redis-server.js";

/** The set-up of the end-to-end limit tests: one private Redis, one emulator, replicas sharing both. */
export interface LimitFleet {
  redis: RedisProcess;
  emulator: Emulator;
  gateways: TestGateway[];
  stop(): Promise<void>;
}

/** `replicas` gateways under FLEET_POLICY over `fleetInventory(instances)`, emulator tasks of 50 ms. */
export async function startLimitFleet(opts: {
  replicas: number;
  instances: number;
  env?: Record<string, string>;
  /** Default FLEET_POLICY. */
  policyText?: string;
  /** Default 50 ms. */
  taskMs?: number;
}): Promise<LimitFleet> {
  const redis = await startRedis();
  const emulator = await createEmulator({
    host: "127.0.0.1",
    port: 0,
    taskMs: opts.taskMs ?? 50,
    inventory: fleetInventory(opts.instances),
  });
  const gateways: TestGateway[] = [];
  const stop = async () => {
    await Promise.all(gateways.splice(0).map((g) => g.stop()));
    await emulator.close();
    await redis.stop();
  };
  try {
    for (let i = 0; i < opts.replicas; i++) {
      gateways.push(
        await startGateway({
          emulator,
          policyText: opts.policyText ?? FLEET_POLICY,
          env: { KEYGATE_REDIS_URL: redis.url, ...opts.env },
        }),
      );
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return { redis, emulator, gateways, stop };
}

/**
 * One associate call by the fleet's load tenant (Connect over HTTP/1.1), each on the next of
 * `instances` fleet instances in turn.
 */
export function fleetCaller(instances: number) {
  const ids = fleetIds(instances);
  let next = 0;
  return (g: TestGateway, timeoutMs = 10_000) =>
    createClient(
      KeyPairService,
      createConnectTransport({ baseUrl: g.url, httpVersion: "1.1" }),
    ).associateKeyPairs(
      { region: "ap-guangzhou", instanceIds: [ids[next++ % ids.length]!], keyIds: [LOAD_KEY] },
      { headers: { authorization: `Bearer ${LOAD_TOKEN}` }, timeoutMs },
    );
}
