import { createRedis, type RedisClient } from "../../src/store/redis.js";

/**
 * Resolves once `client` is connected: production clients have no offline queue, so commands
 * fail until then. Its error events are ignored because tests provoke outages on purpose.
 */
export async function whenReady(client: RedisClient): Promise<RedisClient> {
  client.on("error", () => undefined);
  if (client.status !== "ready") await new Promise<void>((resolve) => client.once("ready", () => resolve()));
  return client;
}

/** The production-made Redis clients of one test file, each connected before use, all closed at the end. */
export function redisClients(): {
  connect: (url: string, connectionName?: string) => Promise<RedisClient>;
  closeAll: () => void;
} {
  const open: RedisClient[] = [];
  return {
    connect: (url, connectionName = "keygate-test") => {
      const client = createRedis(url, { connectionName });
      open.push(client);
      return whenReady(client);
    },
    closeAll: () => {
      for (const c of open.splice(0)) c.disconnect();
    },
  };
}
