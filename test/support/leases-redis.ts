import { createRedis, type RedisClient } from "../../src/store/redis.js";

/**
 * A client made the way production makes it (no offline queue), returned once connected:
 * commands sent before "ready" would fail fast by design.
 */
export async function connectedClient(url: string): Promise<RedisClient> {
  const client = createRedis(url, { connectionName: "keygate-test" });
  if (client.status !== "ready") await new Promise<void>((resolve) => client.once("ready", () => resolve()));
  return client;
}
