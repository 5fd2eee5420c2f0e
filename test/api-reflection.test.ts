/**
 * Server reflection, tried the way a caller would: `buf curl` (an independent gRPC client inside
 * @bufbuild/buf) lists keygate's services and calls AssociateKeyPairs with no .proto at hand,
 * over both reflection versions; a grpc-js-free Connect client checks the answers in detail.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { create, createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { createAsyncIterable } from "@connectrpc/connect/protocol";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ServerReflection,
  type ServerReflectionRequest,
  ServerReflectionRequestSchema,
} from "../src/gen/grpc/reflection/v1/reflection_pb.js";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { startEmulator, startGateway, type TestGateway } from "./support/app.js";
import { opsPolicy } from "./support/policies.js";

const run = promisify(execFile);
const TOKEN = "reflection-token-0123456789";
const BUF = "node_modules/.bin/buf";

let emulator: Emulator;
let gw: TestGateway;

beforeAll(async () => {
  emulator = await startEmulator(50);
  gw = await startGateway({ emulator, policyText: opsPolicy(TOKEN) });
});
afterAll(async () => {
  await gw?.stop();
  await emulator?.close();
});

/** `buf curl` over gRPC with prior-knowledge h2c, as against a plain-text keygate. */
function bufCurl(args: string[]) {
  return run(BUF, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", ...args], {
    timeout: 30_000,
  });
}

const SERVICES = [
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
  "keygate.v1.KeyPairService",
];

describe("buf curl with server reflection", () => {
  it.each(["grpc-v1", "grpc-v1alpha"])("lists services and methods (%s)", async (version) => {
    const services = await bufCurl(["--reflect-protocol", version, "--list-services", gw.url]);
    expect(services.stdout.trim().split("\n").sort()).toEqual(SERVICES);
    const methods = await bufCurl(["--reflect-protocol", version, "--list-methods", gw.url]);
    expect(methods.stdout).toContain("keygate.v1.KeyPairService/AssociateKeyPairs");
  });

  it("calls AssociateKeyPairs without --schema and gets the answer as JSON", async () => {
    const { stdout } = await bufCurl([
      "-H",
      `authorization: Bearer ${TOKEN}`,
      "-d",
      JSON.stringify({
        region: "ap-guangzhou",
        instanceIds: ["ins-gz000001"],
        keyIds: ["skey-aaaaaaaa"],
        waitForCompletion: true,
      }),
      `${gw.url}/keygate.v1.KeyPairService/AssociateKeyPairs`,
    ]);
    const body = JSON.parse(stdout) as {
      requestId?: string;
      instances?: { instanceId: string; state: string }[];
    };
    expect(body.requestId).toMatch(/\S/);
    expect(body.instances).toEqual([{ instanceId: "ins-gz000001", state: "SUCCESS" }]);
  });

  it("reports a refused call with its code and keygate's ErrorDetail", async () => {
    const failed = await bufCurl([
      "-d",
      JSON.stringify({ region: "ap-guangzhou", instanceIds: ["ins-gz000001"], keyIds: ["skey-aaaaaaaa"] }),
      `${gw.url}/keygate.v1.KeyPairService/AssociateKeyPairs`,
    ]).then(
      () => undefined,
      (err: { stderr: string }) => err.stderr,
    );
    expect(failed).toContain('"code": "unauthenticated"');
    expect(failed).toContain("keygate.v1.ErrorDetail");
  });
});

describe("reflection answers", () => {
  async function ask(...requests: ServerReflectionRequest["messageRequest"][]) {
    const client = createClient(ServerReflection, createGrpcTransport({ baseUrl: gw.url }));
    const input = createAsyncIterable(
      requests.map((r) => create(ServerReflectionRequestSchema, { messageRequest: r })),
    );
    const out = [];
    for await (const res of client.serverReflectionInfo(input)) out.push(res.messageResponse);
    return out;
  }

  it("gives a file with its imports, enough to build a registry that knows keygate's types", async () => {
    const [res] = await ask({ case: "fileContainingSymbol", value: "keygate.v1.KeyPairService" });
    expect(res?.case).toBe("fileDescriptorResponse");
    const protos =
      res?.case === "fileDescriptorResponse"
        ? res.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b))
        : [];
    expect(protos[0]?.name).toBe("keygate/v1/keygate.proto");
    const registry = createFileRegistry(create(FileDescriptorSetSchema, { file: protos }));
    expect(registry.getMessage("keygate.v1.ErrorDetail")).toBeDefined();
    expect(registry.getService("keygate.v1.KeyPairService")?.methods.map((m) => m.name)).toEqual([
      "AssociateKeyPairs",
    ]);
  });

  it("finds methods and fields as symbols, files by name, and says NOT_FOUND for the rest", async () => {
    const answers = await ask(
      { case: "fileContainingSymbol", value: "keygate.v1.KeyPairService.AssociateKeyPairs" },
      { case: "fileContainingSymbol", value: "keygate.v1.AssociateKeyPairsRequest.region" },
      { case: "fileByFilename", value: "health/v1/health.proto" },
      { case: "fileContainingSymbol", value: "keygate.v1.Nope" },
      { case: "fileByFilename", value: "nope.proto" },
      { case: "allExtensionNumbersOfType", value: "keygate.v1.AssociateKeyPairsRequest" },
    );
    expect(answers.map((a) => a.case)).toEqual([
      "fileDescriptorResponse",
      "fileDescriptorResponse",
      "fileDescriptorResponse",
      "errorResponse",
      "errorResponse",
      "allExtensionNumbersResponse",
    ]);
    const notFound = answers[3];
    expect(notFound?.case === "errorResponse" && notFound.value.errorCode).toBe(5);
    expect(notFound?.case === "errorResponse" && notFound.value.errorMessage).toContain("keygate.v1.Nope");
  });
});
