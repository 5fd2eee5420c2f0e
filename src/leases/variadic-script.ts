import { readFileSync } from "node:fs";
import type { RedisClient } from "../store/redis.js";

/** A registered Lua command whose key count varies per call (one key per instance). */
export type VariadicScript = (keys: string[], args: (string | number)[]) => Promise<unknown>;

/**
 * Registers a Lua file that takes a variable number of keys. `defineScript` in the store needs a
 * fixed count in the file name; here ioredis receives numkeys with each call, so every key is
 * still declared to Redis (Cluster routing and slot checks work) and EVALSHA caching still applies.
 */
export function defineVariadicScript(client: RedisClient, name: string, fileUrl: URL): VariadicScript {
  client.defineCommand(name, { lua: readFileSync(fileUrl, "utf8") });
  const command = (client as unknown as Record<string, (...a: (string | number)[]) => Promise<unknown>>)[
    name
  ];
  if (typeof command !== "function") throw new Error(`Redis command ${name} was not registered`);
  return (keys, args) => command.call(client, keys.length, ...keys, ...args);
}
