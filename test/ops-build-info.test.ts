/**
 * Which build runs: `keygate --version` (the package version, plus the source revision the image
 * build recorded in KEYGATE_BUILD_REVISION) and the keygate_build_info metric a dashboard joins on.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { startEmulator, startGateway, type TestGateway } from "./support/app.js";
import { opsPolicy } from "./support/policies.js";
import { cleanEnv, killStrays, ROOT, runToEnd } from "./support/process.js";

const pkgVersion = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string })
  .version;
const keygate = (args: string[], env: Record<string, string> = {}) =>
  runToEnd(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], cleanEnv(env));

afterAll(async () => {
  await killStrays();
});

describe("keygate --version", () => {
  it("prints the package version, the revision when the build recorded one, and Node's version", async () => {
    const plain = await keygate(["--version"]);
    expect(plain).toMatchObject({ code: 0, stderr: "" });
    expect(plain.stdout).toBe(`keygate ${pkgVersion} (revision unknown, node ${process.versions.node})\n`);
    const built = await keygate(["version"], { KEYGATE_BUILD_REVISION: "3f2c1ab" });
    expect(built.stdout).toBe(`keygate ${pkgVersion} (revision 3f2c1ab, node ${process.versions.node})\n`);
  });

  it("needs no configuration at all, and is listed in --help", async () => {
    const r = await keygate(["-V"], { KEYGATE_PORT: "not-a-port" });
    expect(r.code).toBe(0);
    expect((await keygate(["--help"])).stdout).toContain("  version, --version");
  });

  it("refuses a revision that is not one when serving", async () => {
    const r = await keygate(["serve"], { KEYGATE_BUILD_REVISION: "x y;z", KEYGATE_POLICY_FILE: "/nope" });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("KEYGATE_BUILD_REVISION must be 1..64 characters");
  });
});

describe("LICENSE", () => {
  it("is the Apache License 2.0 text that package.json names", () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { license: string };
    expect(pkg.license).toBe("Apache-2.0");
    const text = readFileSync(join(ROOT, "LICENSE"), "utf8");
    expect(text).toContain("Apache License");
    expect(text).toContain("Version 2.0, January 2004");
    expect(text).toContain("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION");
  });
});

describe("keygate_build_info", () => {
  let emulator: Emulator;
  let gw: TestGateway;
  beforeAll(async () => {
    emulator = await startEmulator(50);
    gw = await startGateway({
      emulator,
      policyText: opsPolicy("build-info-token-0123456789"),
      env: { KEYGATE_BUILD_REVISION: "v0.1.0-7-gabcdef0" },
    });
  });
  afterAll(async () => {
    await gw?.stop();
    await emulator?.close();
  });

  it("is 1 with the version, revision and Node labels", async () => {
    const text = await (await fetch(gw.metricsUrl)).text();
    const lines = text.split("\n").filter((l) => l.startsWith("keygate_build_info"));
    expect(lines).toEqual([
      `keygate_build_info{version="${pkgVersion}",revision="v0.1.0-7-gabcdef0",node="${process.versions.node}"} 1`,
    ]);
    expect(text).toContain("# TYPE keygate_build_info gauge");
  });
});
