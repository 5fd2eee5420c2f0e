/** vitest globalSetup: once per run, before any test file. */
import { ensureBuilt } from "./build.js";

export default function setup(): void {
  // Tests start `npx keygate` and the compiled server (bin/keygate.js runs dist/).
  ensureBuilt();
}
