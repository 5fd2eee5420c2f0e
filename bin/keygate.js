#!/usr/bin/env node
// Runs the TypeScript CLI through tsx, so `npx keygate …` works right after `npm ci` with no build step.
import { register } from "tsx/esm/api";

register();
import("../src/cli/main.ts").catch((err) => {
  console.error(err);
  process.exit(1);
});
