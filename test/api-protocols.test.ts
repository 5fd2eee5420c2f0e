import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus } from "../src/gen/health/v1/health_pb.js";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { startEmulator, startGateway, type TestGateway } from "./support/app.js";
import { TOKEN_A, TWO_TENANTS } from "./support/policies.js";

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
// The emulator is never reset mid-file: keygate may still be watching a task it started.
let mark = 0;
beforeEach(() => {
  mark = emulator.stats.arrivals.length;
});
/** Associate calls that reached the cloud during this test (task polling may still be running). */
const arrivals = () =>
  emulator.stats.arrivals.slice(mark).filter((a) => a.action === "AssociateInstancesKeyPairs");

const auth = { authorization: `Bearer ${TOKEN_A}` };
let n = 0;
/** A fresh valid request each time, so coalescing and leases never join tests together. */
function validRequest() {
  n += 1;
  const ids = ["ins-gz000001", "ins-gz000002", "ins-sh000001"];
  return {
    region: ids[n % 3]?.startsWith("ins-sh") ? "ap-shanghai" : "ap-guangzhou",
    instanceIds: [ids[n % 3] ?? "ins-gz000001"],
    keyIds: n % 2 === 0 ? ["skey-aaaaaaaa"] : ["skey-bbbbbbbb"],
  };
}

function detailOf(err: unknown) {
  const e = ConnectError.from(err);
  return e.findDetails(ErrorDetailSchema)[0];
}

describe("one port serves every protocol", () => {
  it("Connect JSON over HTTP/1.1", async () => {
    const client = createClient(
      KeyPairService,
      createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }),
    );
    const res = await client.associateKeyPairs(validRequest(), { headers: auth });
    expect(res.requestId).toMatch(/[0-9a-f-]{36}/);
    expect(arrivals()).toHaveLength(1);
  });

  it("Connect binary over HTTP/2 (h2c)", async () => {
    const client = createClient(
      KeyPairService,
      createConnectTransport({ baseUrl: gw.url, httpVersion: "2", useBinaryFormat: true }),
    );
    const res = await client.associateKeyPairs(validRequest(), { headers: auth });
    expect(res.requestId).not.toBe("");
  });

  it("gRPC over h2c (Connect's gRPC transport)", async () => {
    const client = createClient(KeyPairService, createGrpcTransport({ baseUrl: gw.url }));
    const res = await client.associateKeyPairs(validRequest(), { headers: auth });
    expect(res.requestId).not.toBe("");
  });

  it("gRPC-Web over HTTP/1.1", async () => {
    const client = createClient(
      KeyPairService,
      createGrpcWebTransport({ baseUrl: gw.url, httpVersion: "1.1" }),
    );
    const res = await client.associateKeyPairs(validRequest(), { headers: auth });
    expect(res.requestId).not.toBe("");
  });

  it("plain JSON over HTTP/1.1 exactly as curl sends it", async () => {
    const res = await fetch(`${gw.url}/keygate.v1.KeyPairService/AssociateKeyPairs`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${TOKEN_A}` },
      body: JSON.stringify({
        region: "ap-guangzhou",
        instance_ids: ["ins-gz000001"],
        key_ids: ["skey-aaaaaaaa"],
      }),
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { requestId: string };
    expect(body.requestId).toMatch(/[0-9a-f-]{36}/);
  });

  it("plain JSON errors carry the code and ErrorDetail", async () => {
    const res = await fetch(`${gw.url}/keygate.v1.KeyPairService/AssociateKeyPairs`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        region: "ap-guangzhou",
        instanceIds: ["ins-gz000001"],
        keyIds: ["skey-aaaaaaaa"],
      }),
    });
    expect(res.status).toBe(401);
    const body = (await res.json()) as { code: string; details: { type: string; value: string }[] };
    expect(body.code).toBe("unauthenticated");
    const d = body.details.find((x) => x.type === "keygate.v1.ErrorDetail");
    expect(d).toBeDefined();
    const detail = fromBinary(ErrorDetailSchema, Buffer.from(d?.value ?? "", "base64"));
    expect(detail.reason).toBe("UNAUTHENTICATED");
  });

  it("the reference @grpc/grpc-js client, with the health service", async () => {
    const protoPath = fileURLToPath(new URL("../proto/keygate/v1/keygate.proto", import.meta.url));
    const def = protoLoader.loadSync(protoPath, { keepCase: true, defaults: true });
    const pkg = grpc.loadPackageDefinition(def) as unknown as {
      keygate: { v1: { KeyPairService: grpc.ServiceClientConstructor } };
    };
    const client = new pkg.keygate.v1.KeyPairService(
      `127.0.0.1:${gw.port}`,
      grpc.credentials.createInsecure(),
    );
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${TOKEN_A}`);
    const call = (req: object, meta: grpc.Metadata) =>
      new Promise<{ request_id: string }>((resolve, reject) => {
        (client as unknown as Record<string, (...a: unknown[]) => void>).AssociateKeyPairs?.(
          req,
          meta,
          { deadline: Date.now() + 10_000 },
          (err: grpc.ServiceError | null, res: { request_id: string }) => (err ? reject(err) : resolve(res)),
        );
      });
    const ok = await call(
      { region: "ap-guangzhou", instance_ids: ["ins-gz000002"], key_ids: ["skey-aaaaaaaa"] },
      md,
    );
    expect(ok.request_id).not.toBe("");
    const err = await call(
      { region: "ap-guangzhou", instance_ids: ["ins-GZ000002"], key_ids: ["skey-aaaaaaaa"] },
      md,
    ).catch((e: grpc.ServiceError) => e);
    expect((err as grpc.ServiceError).code).toBe(grpc.status.INVALID_ARGUMENT);
    expect((err as grpc.ServiceError).metadata.get("grpc-status-details-bin")).toHaveLength(1);
    // grpc-js decodes grpc-message with decodeURI: the message must arrive as the spec encodes
    // it (only non-printable bytes and '%'), or a caller reads "credentials%3A send ...".
    const unauth = await call(
      { region: "ap-guangzhou", instance_ids: ["ins-gz000002"], key_ids: ["skey-aaaaaaaa"] },
      new grpc.Metadata(),
    ).catch((e: grpc.ServiceError) => e);
    expect((unauth as grpc.ServiceError).code).toBe(grpc.status.UNAUTHENTICATED);
    expect((unauth as grpc.ServiceError).details).toBe(
      "missing or unknown credentials: send `authorization: Bearer <token>`",
    );
    client.close();

    const health = createClient(Health, createGrpcTransport({ baseUrl: gw.url }));
    const h = await health.check({ service: "" });
    expect(h.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    const live = await health.check({ service: "liveness" });
    expect(live.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
  });

  it("buf curl (an independent gRPC client) over h2c", async () => {
    // Asynchronous on purpose: the gateway runs in this very process.
    const r = await promisify(execFile)(
      "npx",
      [
        "buf",
        "curl",
        "--schema",
        "proto",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "-H",
        `Authorization: Bearer ${TOKEN_A}`,
        "-d",
        JSON.stringify({
          region: "ap-shanghai",
          instance_ids: ["ins-sh000001"],
          key_ids: ["skey-bbbbbbbb"],
        }),
        `${gw.url}/keygate.v1.KeyPairService/AssociateKeyPairs`,
      ],
      { encoding: "utf8", cwd: fileURLToPath(new URL("..", import.meta.url)), timeout: 60_000 },
    ).catch((e: { stdout: string; stderr: string }) => e);
    expect(r.stderr).toBe("");
    expect((JSON.parse(r.stdout) as { requestId: string }).requestId).toMatch(/[0-9a-f-]{36}/);
  });
});

describe("errors reach every client with a code and an ErrorDetail", () => {
  const client = () =>
    createClient(KeyPairService, createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }));

  it("no token → UNAUTHENTICATED, nothing upstream", async () => {
    const err = await client()
      .associateKeyPairs(validRequest())
      .catch((e: unknown) => e);
    expect(ConnectError.from(err).code).toBe(Code.Unauthenticated);
    expect(detailOf(err)?.reason).toBe("UNAUTHENTICATED");
    expect(arrivals()).toHaveLength(0);
  });

  it.each([
    [{ region: "", instanceIds: ["ins-gz000001"], keyIds: ["skey-aaaaaaaa"] }, "MissingParameter"],
    [{ region: "mars-1", instanceIds: ["ins-gz000001"], keyIds: ["skey-aaaaaaaa"] }, "UnsupportedRegion"],
    [{ region: "ap-guangzhou", instanceIds: [], keyIds: ["skey-aaaaaaaa"] }, "MissingParameter"],
    [
      { region: "ap-guangzhou", instanceIds: ["ins-gz00001"], keyIds: ["skey-aaaaaaaa"] },
      "InvalidInstanceId.Malformed",
    ],
    [
      { region: "ap-guangzhou", instanceIds: [" ins-gz000001"], keyIds: ["skey-aaaaaaaa"] },
      "InvalidInstanceId.Malformed",
    ],
    [
      { region: "ap-guangzhou", instanceIds: ["ins-gz000001"], keyIds: ["skey-AAAAAAAA"] },
      "InvalidKeyPairId.Malformed",
    ],
    [{ region: "ap-guangzhou", instanceIds: ["ins-gz000001"], keyIds: [] }, "MissingParameter"],
    [
      {
        region: "ap-guangzhou",
        instanceIds: Array.from({ length: 101 }, (_, i) => `ins-${String(i).padStart(8, "0")}`),
        keyIds: ["skey-aaaaaaaa"],
      },
      "InvalidParameterValue.LimitExceeded",
    ],
    [
      { region: "ap-guangzhou", instanceIds: ["ins-gz000001", "ins-gz000001"], keyIds: ["skey-aaaaaaaa"] },
      "InvalidParameterValue",
    ],
  ])("malformed %j → INVALID_ARGUMENT %s, nothing upstream", async (req, reason) => {
    const err = await client()
      .associateKeyPairs(req, { headers: auth })
      .catch((e: unknown) => e);
    expect(ConnectError.from(err).code).toBe(Code.InvalidArgument);
    expect(detailOf(err)?.reason).toBe(reason);
    expect(arrivals()).toHaveLength(0);
  });

  it("outside the policy → PERMISSION_DENIED POLICY_DENIED naming the rule", async () => {
    const err = await client()
      .associateKeyPairs(
        { region: "ap-guangzhou", instanceIds: ["ins-gz000001"], keyIds: ["skey-cccccccc"] },
        { headers: auth },
      )
      .catch((e: unknown) => e);
    expect(ConnectError.from(err).code).toBe(Code.PermissionDenied);
    expect(detailOf(err)?.reason).toBe("POLICY_DENIED");
    expect(ConnectError.from(err).rawMessage).toContain("skey-cccccccc");
    expect(arrivals()).toHaveLength(0);
  });

  it("an upstream refusal keeps the upstream code and RequestId", async () => {
    // ins-gz000004 is RUNNING and team-a may not force-stop.
    const err = await client()
      .associateKeyPairs(
        { region: "ap-guangzhou", instanceIds: ["ins-gz000004"], keyIds: ["skey-aaaaaaaa"] },
        { headers: auth },
      )
      .catch((e: unknown) => e);
    expect(ConnectError.from(err).code).toBe(Code.FailedPrecondition);
    expect(detailOf(err)?.reason).toBe("UnsupportedOperation.InstanceStateRunning");
    expect(detailOf(err)?.upstreamCode).toBe("UnsupportedOperation.InstanceStateRunning");
    expect(detailOf(err)?.upstreamRequestId).not.toBe("");
  });

  it("wait_for_completion answers with every instance's final state", async () => {
    const res = await client().associateKeyPairs(
      {
        region: "ap-guangzhou",
        instanceIds: ["ins-gz000001", "ins-gz000002"],
        keyIds: ["skey-aaaaaaaa"],
        waitForCompletion: true,
      },
      { headers: auth },
    );
    expect(res.instances.map((i) => [i.instanceId, i.state]).sort()).toEqual([
      ["ins-gz000001", "SUCCESS"],
      ["ins-gz000002", "SUCCESS"],
    ]);
  });
});
