import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Builds dist/ when it is missing or stale: the bin and the compiled-start tests run it.
    globalSetup: ["test/support/global-setup.ts"],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    pool: "forks",
    // Two cores on CI: real servers and redis-server processes per file; keep parallelism modest.
    maxWorkers: 2,
  },
});
