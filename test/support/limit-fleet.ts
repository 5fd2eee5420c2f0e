import { createEmulator, type Emulator } from "../../src/upstream/emulator/index.js";
import { startGateway, type TestGateway } from "./app.js";
import { FLEET_POLICY, fleetInventory } from "./fleet.js";
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
}): Promise<LimitFleet> {
  const redis = await startRedis();
  const emulator = await createEmulator({
    host: "127.0.0.1",
    port: 0,
    taskMs: 50,
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
          policyText: FLEET_POLICY,
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
