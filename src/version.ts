import { readFileSync } from "node:fs";

/** keygate's version: the one in package.json, which the image and `npm ci` always carry. */
export const VERSION: string = (
  JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }
).version;

/** What `keygate --version` prints and keygate_build_info carries. */
export function buildInfo(revision: string | undefined) {
  return { version: VERSION, revision: revision ?? "unknown", node: process.versions.node };
}
