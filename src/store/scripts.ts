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
