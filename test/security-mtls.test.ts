/**
 * keygate terminating TLS (KEYGATE_TLS_CERT/KEY/CLIENT_CA) with client certificates mapped to
 * tenants through `identities` in the policy. The certificates are made by `openssl` at test
 * time: a CA, a server certificate for 127.0.0.1/localhost, client certificates with a SPIFFE URI
 * SAN, a DNS SAN, both (two tenants: ambiguous), an identity no tenant has, and one with a known
 * SPIFFE id but issued by another CA.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http2 from "node:http2";
import https from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus } from "../src/gen/health/v1/health_pb.js";
import { ErrorDetailSchema, KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { startEmulator, startGateway, type TestGateway } from "./support/app.js";
import { sha256 } from "./support/policies.js";

const SPIFFE_A = "spiffe://example.org/ns/team-a/sa/deployer";
const DNS_B = "deployer.team-b.internal";
const TOKEN_B = "mtls-token-team-b-4e2a91";

const POLICY = `
tenants:
  team-a:
    identities:
      spiffe: ["${SPIFFE_A}"]
    regions: [ap-guangzhou, ap-shanghai]
    instances:
      tags: { owner: team-a }
    keys: [skey-aaaaaaaa, skey-bbbbbbbb]
  team-b:
    tokens_sha256: ["${sha256(TOKEN_B)}"]
    identities:
      dns: ["${DNS_B}"]
    regions: [ap-guangzhou]
    instances:
      projects: [1002]
    keys: "*"
`;

interface Pem {
  cert: Buffer;
  key: Buffer;
}

let dir: string;
let caCert: Buffer;
const clients: Record<"spiffeA" | "dnsB" | "both" | "stranger" | "rogue" | "injected" | "serverOnly", Pem> =
  {} as never;
let emulator: Emulator;
let gw: TestGateway;

function openssl(args: string[]): void {
  execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
}

/** A self-signed CA (P-256). */
function makeCa(name: string): void {
  openssl([
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.crt`,
    "-days",
    "2",
    "-subj",
    `/CN=${name}`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
}

/** A leaf certificate signed by `ca`, with the given extensions (SANs, key usage). */
function makeLeaf(name: string, ca: string, extensions: string[]): Pem {
  openssl([
    "req",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.csr`,
    "-subj",
    `/CN=${name}`,
  ]);
  writeFileSync(join(dir, `${name}.ext`), `${["basicConstraints=CA:FALSE", ...extensions].join("\n")}\n`);
  openssl([
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    `${ca}.crt`,
    "-CAkey",
    `${ca}.key`,
    "-CAcreateserial",
    "-out",
    `${name}.crt`,
    "-days",
    "2",
    "-extfile",
    `${name}.ext`,
  ]);
  return { cert: readFileSync(join(dir, `${name}.crt`)), key: readFileSync(join(dir, `${name}.key`)) };
}

const clientExt = (san: string) => [`subjectAltName=${san}`, "extendedKeyUsage=clientAuth"];

beforeAll(async () => {
  expect(execFileSync("openssl", ["version"], { encoding: "utf8" })).toMatch(/^OpenSSL [1-9]/);
  dir = mkdtempSync(join(tmpdir(), "keygate-mtls-"));
  makeCa("ca");
  makeCa("rogue-ca");
  caCert = readFileSync(join(dir, "ca.crt"));
  makeLeaf("server", "ca", ["subjectAltName=IP:127.0.0.1,DNS:localhost", "extendedKeyUsage=serverAuth"]);
  clients.spiffeA = makeLeaf("client-spiffe-a", "ca", clientExt(`URI:${SPIFFE_A}`));
  clients.dnsB = makeLeaf("client-dns-b", "ca", clientExt(`DNS:${DNS_B}`));
  clients.both = makeLeaf("client-both", "ca", clientExt(`URI:${SPIFFE_A},DNS:${DNS_B}`));
  clients.stranger = makeLeaf("client-stranger", "ca", clientExt("URI:spiffe://example.org/ns/team-z/sa/x"));
  clients.rogue = makeLeaf("client-rogue", "rogue-ca", clientExt(`URI:${SPIFFE_A}`));
  // One URI SAN whose value tries to smuggle a second SAN into Node's "URI:…, DNS:…" rendering.
  clients.injected = makeLeaf("client-injected", "ca", [
    "subjectAltName=@alt",
    "extendedKeyUsage=clientAuth",
    "[alt]",
    `URI.1=spiffe://example.org/ns/team-z/sa/x, DNS:${DNS_B}, URI:${SPIFFE_A}`,
  ]);
  // Issued by the trusted CA, but for servers only: not valid as a client certificate.
  clients.serverOnly = makeLeaf("client-server-only", "ca", [
    `subjectAltName=URI:${SPIFFE_A}`,
    "extendedKeyUsage=serverAuth",
  ]);

  emulator = await startEmulator(100);
  gw = await startGateway({
    emulator,
    policyText: POLICY,
    env: {
      KEYGATE_TLS_CERT: join(dir, "server.crt"),
      KEYGATE_TLS_KEY: join(dir, "server.key"),
      KEYGATE_TLS_CLIENT_CA: join(dir, "ca.crt"),
    },
  });
});
afterAll(async () => {
  await gw?.stop();
  await emulator?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

let mark = 0;
beforeEach(() => {
  mark = emulator.stats.arrivals.length;
});
const associateArrivals = () =>
  emulator.stats.arrivals.slice(mark).filter((a) => a.action === "AssociateInstancesKeyPairs");

type Protocol = "grpc" | "connect-h1" | "connect-h2";
const PROTOCOLS: Protocol[] = ["grpc", "connect-h1", "connect-h2"];

function transport(protocol: Protocol, pem?: Pem): Transport {
  const nodeOptions = { ca: caCert, ...(pem ? { cert: pem.cert, key: pem.key } : {}) };
  switch (protocol) {
    case "grpc":
      return createGrpcTransport({ baseUrl: gw.url, nodeOptions });
    case "connect-h1":
      return createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1", nodeOptions });
    case "connect-h2":
      return createConnectTransport({ baseUrl: gw.url, httpVersion: "2", nodeOptions });
  }
}

let n = 0;
/** A fresh allowed-for-team-a request each time, so calls never coalesce or wait for leases. */
function teamARequest() {
  n += 1;
  const ids = ["ins-gz000001", "ins-gz000002", "ins-sh000001"];
  const id = ids[n % ids.length] ?? "ins-gz000001";
  return {
    region: id.startsWith("ins-sh") ? "ap-shanghai" : "ap-guangzhou",
    instanceIds: [id],
    keyIds: [n % 2 === 0 ? "skey-aaaaaaaa" : "skey-bbbbbbbb"],
    waitForCompletion: true,
  };
}
const teamBRequest = { region: "ap-guangzhou", instanceIds: ["ins-gz000003"], keyIds: ["skey-cccccccc"] };

async function attempt(
  protocol: Protocol,
  pem: Pem | undefined,
  req: object,
  headers: Record<string, string> = {},
): Promise<{ ok: true; requestId: string } | { ok: false; code: Code; reason: string | undefined }> {
  const client = createClient(KeyPairService, transport(protocol, pem));
  try {
    const res = await client.associateKeyPairs(req, { headers, timeoutMs: 15_000 });
    return { ok: true, requestId: res.requestId };
  } catch (e) {
    const err = ConnectError.from(e);
    return { ok: false, code: err.code, reason: err.findDetails(ErrorDetailSchema)[0]?.reason };
  }
}

const lastAudit = () => gw.logs.audits().at(-1);

describe.each(PROTOCOLS)("over TLS with %s", (protocol) => {
  it("a client certificate whose SPIFFE id maps to a tenant is authenticated without a token", async () => {
    const r = await attempt(protocol, clients.spiffeA, teamARequest());
    expect(r).toMatchObject({ ok: true });
    expect(lastAudit()).toMatchObject({ tenant: "team-a", decision: "allowed" });
    expect(associateArrivals()).toHaveLength(1);
  });

  it("a client certificate whose DNS SAN maps to a tenant is authenticated without a token", async () => {
    const r = await attempt(protocol, clients.dnsB, { ...teamBRequest, instanceIds: ["ins-zz000001"] });
    // Allowed by nothing: team-b selects project 1002; the point is WHO it was refused as.
    expect(r).toMatchObject({ ok: false, code: Code.PermissionDenied, reason: "POLICY_DENIED" });
    expect(lastAudit()).toMatchObject({ tenant: "team-b", rule: "instances" });
  });

  it("a certificate identity is still bound by its tenant's policy", async () => {
    const r = await attempt(protocol, clients.spiffeA, { ...teamBRequest, keyIds: ["skey-aaaaaaaa"] });
    expect(r).toMatchObject({ ok: false, code: Code.PermissionDenied, reason: "POLICY_DENIED" });
    expect(lastAudit()).toMatchObject({ tenant: "team-a", rule: "instances" });
    expect(associateArrivals()).toHaveLength(0);
  });

  it("a certificate from an unknown CA, with a known SPIFFE id, is not authenticated", async () => {
    const r = await attempt(protocol, clients.rogue, teamARequest());
    expect(r).toMatchObject({ ok: false, code: Code.Unauthenticated, reason: "UNAUTHENTICATED" });
    expect(lastAudit()).toMatchObject({ tenant: null, rule: "authentication" });
    expect(associateArrivals()).toHaveLength(0);
  });

  it("a trusted certificate with an identity no tenant has is not authenticated", async () => {
    const r = await attempt(protocol, clients.stranger, teamARequest());
    expect(r).toMatchObject({ ok: false, code: Code.Unauthenticated, reason: "UNAUTHENTICATED" });
    expect(associateArrivals()).toHaveLength(0);
  });

  it("a certificate naming two tenants authenticates as nobody", async () => {
    const r = await attempt(protocol, clients.both, teamARequest());
    expect(r).toMatchObject({ ok: false, code: Code.Unauthenticated, reason: "UNAUTHENTICATED" });
    expect(associateArrivals()).toHaveLength(0);
  });

  it("a SAN value cannot smuggle in another tenant's identity", async () => {
    const r = await attempt(protocol, clients.injected, teamARequest());
    expect(r).toMatchObject({ ok: false, code: Code.Unauthenticated, reason: "UNAUTHENTICATED" });
    expect(associateArrivals()).toHaveLength(0);
  });

  it("a trusted CA's certificate that is not for client authentication is refused", async () => {
    const r = await attempt(protocol, clients.serverOnly, teamARequest());
    expect(r).toMatchObject({ ok: false, code: Code.Unauthenticated, reason: "UNAUTHENTICATED" });
    expect(associateArrivals()).toHaveLength(0);
  });

  it("no certificate and no token is not authenticated", async () => {
    const r = await attempt(protocol, undefined, teamARequest());
    expect(r).toMatchObject({ ok: false, code: Code.Unauthenticated, reason: "UNAUTHENTICATED" });
    expect(associateArrivals()).toHaveLength(0);
  });

  it("an unknown bearer token is refused even with a valid client certificate (no fallback)", async () => {
    const r = await attempt(protocol, clients.spiffeA, teamARequest(), {
      authorization: "Bearer not-a-known-token-0123456789",
    });
    expect(r).toMatchObject({ ok: false, code: Code.Unauthenticated, reason: "UNAUTHENTICATED" });
    expect(associateArrivals()).toHaveLength(0);
  });

  it("a bearer token still works over TLS, with or without a certificate", async () => {
    const auth = { authorization: `Bearer ${TOKEN_B}` };
    const noCert = await attempt(
      protocol,
      undefined,
      { ...teamBRequest, instanceIds: ["ins-zz000002"] },
      auth,
    );
    expect(noCert).toMatchObject({ ok: false, code: Code.PermissionDenied });
    expect(lastAudit()).toMatchObject({ tenant: "team-b" });
    const rogueCert = await attempt(
      protocol,
      clients.rogue,
      { ...teamBRequest, instanceIds: ["ins-zz000003"] },
      auth,
    );
    expect(rogueCert).toMatchObject({ ok: false, code: Code.PermissionDenied });
    expect(lastAudit()).toMatchObject({ tenant: "team-b" });
    expect(associateArrivals()).toHaveLength(0);
  });

  it("health answers over TLS without a client certificate", async () => {
    const health = createClient(Health, transport(protocol));
    expect((await health.check({ service: "" })).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
  });
});

describe("the TLS port negotiates the protocol with ALPN", () => {
  it("an h2 client gets h2, and the server certificate is valid for 127.0.0.1", async () => {
    const session = http2.connect(gw.url, { ca: caCert, ...clients.spiffeA });
    try {
      await new Promise<void>((resolve, reject) => {
        session.once("connect", () => resolve());
        session.once("error", reject);
      });
      expect(session.alpnProtocol).toBe("h2");
      expect(session.encrypted).toBe(true);
    } finally {
      session.close();
    }
  });

  it("an HTTP/1.1 client (curl-style JSON) gets HTTP/1.1 and is authenticated by its certificate", async () => {
    const body = JSON.stringify(teamARequest());
    const res = await new Promise<{ status: number; version: string; alpn: string | false; text: string }>(
      (resolve, reject) => {
        const req = https.request(
          `${gw.url}/keygate.v1.KeyPairService/AssociateKeyPairs`,
          {
            method: "POST",
            headers: { "content-type": "application/json" },
            ca: caCert,
            cert: clients.spiffeA.cert,
            key: clients.spiffeA.key,
            agent: false,
          },
          (r) => {
            let text = "";
            r.setEncoding("utf8");
            r.on("data", (c: string) => (text += c));
            r.on("end", () =>
              resolve({
                status: r.statusCode ?? 0,
                version: r.httpVersion,
                alpn: (r.socket as unknown as { alpnProtocol: string | false }).alpnProtocol,
                text,
              }),
            );
          },
        );
        req.on("error", reject);
        req.end(body);
      },
    );
    expect(res.version).toBe("1.1");
    expect(res.alpn).not.toBe("h2");
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toMatchObject({
      requestId: expect.stringMatching(/[0-9a-f-]{36}/) as unknown,
    });
    expect(lastAudit()).toMatchObject({ tenant: "team-a", decision: "allowed" });
  });

  it("the reference @grpc/grpc-js client with a client certificate", async () => {
    const protoPath = fileURLToPath(new URL("../proto/keygate/v1/keygate.proto", import.meta.url));
    const def = protoLoader.loadSync(protoPath, { keepCase: true, defaults: true });
    const pkg = grpc.loadPackageDefinition(def) as unknown as {
      keygate: { v1: { KeyPairService: grpc.ServiceClientConstructor } };
    };
    const client = new pkg.keygate.v1.KeyPairService(
      `127.0.0.1:${gw.port}`,
      grpc.credentials.createSsl(caCert, clients.spiffeA.key, clients.spiffeA.cert),
    );
    try {
      const req = teamARequest();
      const res = await new Promise<{ request_id: string }>((resolve, reject) => {
        (client as unknown as Record<string, (...a: unknown[]) => void>).AssociateKeyPairs?.(
          { region: req.region, instance_ids: req.instanceIds, key_ids: req.keyIds },
          new grpc.Metadata(),
          { deadline: Date.now() + 15_000 },
          (err: grpc.ServiceError | null, r: { request_id: string }) => (err ? reject(err) : resolve(r)),
        );
      });
      expect(res.request_id).toMatch(/[0-9a-f-]{36}/);
      expect(lastAudit()).toMatchObject({ tenant: "team-a", decision: "allowed" });
    } finally {
      client.close();
    }
  });
});
