import { readFileSync } from "node:fs";
import type { RedisClient } from "./redis.js";

/**
 * Loads a Lua script that sits beside the calling module and registers it as a custom
 * command on the client (EVALSHA with automatic EVAL fallback, works on Cluster too).
 * File names follow BullMQ's habit: `<what-it-does>-<number of keys>.lua`.
 */
export function defineScript(client: RedisClient, name: string, fileUrl: URL): void {
  const m = /-(\d+)\.lua$/.exec(fileUrl.pathname);
  if (!m) throw new Error(`script file ${fileUrl.pathname} must end in -<numberOfKeys>.lua`);
  const lua = readFileSync(fileUrl, "utf8");
  client.defineCommand(name, { numberOfKeys: Number(m[1]), lua });
}

/** A registered Lua command whose key count varies per call (one key per instance). */
export type VariadicScript = (keys: string[], args: (string | number)[]) => Promise<unknown>;

/**
 * Registers a Lua file that takes a variable number of keys (its name has no key count). ioredis
 * receives numkeys with each call, so every key is still declared to Redis (Cluster routing and
 * slot checks work) and EVALSHA caching still applies.
 */
export function defineVariadicScript(client: RedisClient, name: string, fileUrl: URL): VariadicScript {
  client.defineCommand(name, { lua: readFileSync(fileUrl, "utf8") });
  const command = (client as unknown as Record<string, (...a: (string | number)[]) => Promise<unknown>>)[
    name
  ];
  if (typeof command !== "function") throw new Error(`Redis command ${name} was not registered`);
  return (keys, args) => command.call(client, keys.length, ...keys, ...args);
}
