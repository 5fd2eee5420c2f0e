#!/usr/bin/env node
// The `keygate` command: runs the compiled, bundled CLI in dist/bundle/ (written by `npm run build`, which
// `npm start`, the test suite and the image build run). Plain JavaScript, no tsx: production runs compiled code
// (docs/decisions/deploy.md).
const entry = new URL("../dist/bundle/main.js", import.meta.url);

import(entry.href).catch((err) => {
  if (err?.code === "ERR_MODULE_NOT_FOUND" && String(err.message).includes(entry.pathname)) {
    process.stderr.write(
      "keygate: dist/ is missing: run `npm run build` first (npm ci and npm start do it)\n",
    );
  } else {
    process.stderr.write(`keygate: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  }
  process.exit(1);
});
