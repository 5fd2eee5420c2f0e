/**
 * Issue 15: the example clients in examples/ (Python grpcio, Go grpc-go) run against a real
 * gateway and emulator, each with a deadline, the bearer token, an idempotency key, and the
 * keygate.v1.ErrorDetail decoded from a failed call. The toolchains are Debian packages that
 * .ci/run installs; a missing toolchain fails here rather than skipping (examples/README.md).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { startEmulator, startGateway, type TestGateway } from "./support/app.js";
import { TOKEN_A, TWO_TENANTS } from "./support/policies.js";
import { cleanEnv, runToEnd } from "./support/process.js";

/** Debian's interpreter, which has python3-grpcio (the `python3` on PATH may be another one). */
const PYTHON = "/usr/bin/python3";

let emulator: Emulator;
let gw: TestGateway;

beforeAll(async () => {
  emulator = await startEmulator(50);
  gw = await startGateway({ emulator, policyText: TWO_TENANTS });
});
afterAll(async () => {
  await gw?.stop();
  await emulator?.close();
});

interface Answer {
  ok: boolean;
  request_id?: string;
  deduplicated?: boolean;
  idempotency_key?: string;
  instances?: { instance_id: string; state: string }[];
  code?: string;
  message?: string;
  reason?: string | null;
  upstream_code?: string | null;
  upstream_request_id?: string | null;
}

/** Runs one example invocation and parses its JSON line. */
async function run(
  command: string,
  args: string[],
  env: Record<string, string>,
  token = TOKEN_A,
): Promise<{ code: number | null; answer: Answer }> {
  const r = await runToEnd(command, args, cleanEnv({ ...env, KEYGATE_TOKEN: token }), 120_000);
  const line = r.stdout.trim().split("\n").pop() ?? "";
  let answer: Answer;
  try {
    answer = JSON.parse(line) as Answer;
  } catch {
    throw new Error(
      `${command} ${args.join(" ")} printed no JSON (exit ${r.code}):\n${r.stdout}\n${r.stderr}`,
    );
  }
  return { code: r.code, answer };
}

/** The scenarios every example must pass, whatever its language. */
function scenarios(
  deadline: string,
  client: () => { command: string; args: string[]; env?: Record<string, string> },
) {
  const call = (extra: string[], token?: string) => {
    const c = client();
    return run(c.command, [...c.args, "--target", `127.0.0.1:${gw.port}`, ...extra], c.env ?? {}, token);
  };
  const key = () => `example-${Math.random().toString(36).slice(2)}`;

  it("binds a key and a retry with the same idempotency key replays the first answer", async () => {
    const k = key();
    const args = ["--region", "ap-guangzhou", "--instance", "ins-gz000002", "--key", "skey-aaaaaaaa"];
    const first = await call([...args, "--idempotency-key", k, "--wait"]);
    expect(first.code).toBe(0);
    expect(first.answer).toMatchObject({ ok: true, deduplicated: false, idempotency_key: k });
    expect(first.answer.request_id).not.toBe("");
    expect(first.answer.instances).toEqual([expect.objectContaining({ instance_id: "ins-gz000002" })]);
    const again = await call([...args, "--idempotency-key", k, "--wait"]);
    expect(again.answer).toMatchObject({ ok: true, deduplicated: true, request_id: first.answer.request_id });
  });

  it("a refusal arrives with its code, a clean message and the ErrorDetail", async () => {
    const denied = await call([
      "--region",
      "ap-guangzhou",
      "--instance",
      "ins-gz000001",
      "--key",
      "skey-cccccccc",
      "--idempotency-key",
      key(),
    ]);
    expect(denied.code).toBe(1);
    expect(denied.answer).toMatchObject({ ok: false, code: "PERMISSION_DENIED", reason: "POLICY_DENIED" });
    expect(denied.answer.message).toContain("skey-cccccccc");

    const unauth = await call(
      ["--region", "ap-guangzhou", "--instance", "ins-gz000002", "--key", "skey-aaaaaaaa"],
      "not-a-known-token-0123456789",
    );
    expect(unauth.answer).toMatchObject({ ok: false, code: "UNAUTHENTICATED", reason: "UNAUTHENTICATED" });
    expect(unauth.answer.message).toBe(
      "missing or unknown credentials: send `authorization: Bearer <token>`",
    );
  });

  it("an upstream refusal carries the cloud's code and RequestId", async () => {
    // ins-gz000004 is RUNNING and team-a may not force-stop.
    const r = await call([
      "--region",
      "ap-guangzhou",
      "--instance",
      "ins-gz000004",
      "--key",
      "skey-aaaaaaaa",
    ]);
    expect(r.answer).toMatchObject({
      ok: false,
      code: "FAILED_PRECONDITION",
      reason: "UnsupportedOperation.InstanceStateRunning",
      upstream_code: "UnsupportedOperation.InstanceStateRunning",
    });
    expect(r.answer.upstream_request_id).not.toBe("");
  });

  it("the deadline is sent: a tiny one ends the call with DEADLINE_EXCEEDED", async () => {
    const r = await call([
      "--region",
      "ap-guangzhou",
      "--instance",
      "ins-gz000002",
      "--key",
      "skey-bbbbbbbb",
      "--deadline",
      deadline,
    ]);
    expect(r.answer).toMatchObject({ ok: false, code: "DEADLINE_EXCEEDED" });
  });
}

describe("examples/python (grpcio)", () => {
  beforeAll(async () => {
    const gen = await runToEnd("bash", ["examples/python/generate.sh"], cleanEnv(), 120_000);
    if (gen.code !== 0) throw new Error(`examples/python/generate.sh failed:\n${gen.stdout}\n${gen.stderr}`);
  }, 130_000);
  scenarios("0.001", () => ({ command: PYTHON, args: ["examples/python/client.py"] }));
});

describe("examples/go (grpc-go)", () => {
  let build: string;
  beforeAll(async () => {
    build = mkdtempSync(join(tmpdir(), "keygate-go-example-"));
    // Builds once (protoc-gen-go, protoc-gen-go-grpc, go build in GOPATH mode); -h then exits 0.
    const r = await runToEnd(
      "bash",
      ["examples/go/run.sh", "-h"],
      cleanEnv({ GO_EXAMPLE_BUILD: build }),
      300_000,
    );
    if (r.code !== 0) throw new Error(`examples/go/run.sh failed:\n${r.stdout}\n${r.stderr}`);
  }, 310_000);
  afterAll(() => rmSync(build, { recursive: true, force: true }));
  scenarios("1ms", () => ({
    command: "bash",
    args: ["examples/go/run.sh"],
    env: { GO_EXAMPLE_BUILD: build },
  }));
});
