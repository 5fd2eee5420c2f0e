/**
 * What a browser and a log-correlating caller see: CORS preflights (refused with a reason while
 * KEYGATE_CORS_ORIGINS is empty, answered with Connect's header lists when the origin is listed),
 * and x-request-id (a sane caller value accepted, echoed on every answer and in the audit line;
 * anything else replaced by a fresh id).
 */
import { ConnectError, createClient } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { startEmulator, startGateway, type TestGateway } from "./support/app.js";
import { opsPolicy } from "./support/policies.js";
import { pollUntil } from "./support/wait.js";

const TOKEN = "cors-request-id-token-0123456789";
const ORIGIN = "https://console.example.com";
const PATH = "/keygate.v1.KeyPairService/AssociateKeyPairs";
const call = { region: "ap-guangzhou", instanceIds: ["ins-gz000001"], keyIds: ["skey-aaaaaaaa"] };

let emulator: Emulator;
let off: TestGateway;
let on: TestGateway;

beforeAll(async () => {
  emulator = await startEmulator(50);
  off = await startGateway({ emulator, policyText: opsPolicy(TOKEN) });
  on = await startGateway({
    emulator,
    policyText: opsPolicy(TOKEN),
    env: { KEYGATE_CORS_ORIGINS: `${ORIGIN},http://localhost:5173` },
  });
});
afterAll(async () => {
  await off?.stop();
  await on?.stop();
  await emulator?.close();
});

/** A browser's preflight for a Connect (or gRPC-Web) POST with the bearer token. */
function preflight(
  gw: TestGateway,
  origin: string | undefined,
  headers = "authorization,content-type,connect-protocol-version",
) {
  return fetch(gw.url + PATH, {
    method: "OPTIONS",
    headers: {
      ...(origin ? { origin } : {}),
      "access-control-request-method": "POST",
      "access-control-request-headers": headers,
    },
  });
}

describe("CORS", () => {
  it("is off by default: a preflight is refused with a reason, not an empty 405", async () => {
    const res = await preflight(off, ORIGIN);
    expect(res.status).toBe(403);
    expect(await res.text()).toContain("CORS is off on this keygate: set KEYGATE_CORS_ORIGINS");
    expect(res.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("answers a listed origin's preflight with Connect's and keygate's header lists", async () => {
    const res = await preflight(on, ORIGIN);
    expect(res.status).toBe(204);
    expect(res.headers.get("access-control-allow-origin")).toBe(ORIGIN);
    expect(res.headers.get("vary")).toBe("Origin");
    expect(res.headers.get("access-control-allow-methods")).toBe("POST, GET");
    const allowed = (res.headers.get("access-control-allow-headers") ?? "").split(", ");
    for (const h of [
      "authorization",
      "content-type",
      "connect-protocol-version",
      "connect-timeout-ms",
      "x-grpc-web",
      "x-request-id",
      "traceparent",
    ])
      expect(allowed, h).toContain(h);
    expect(Number(res.headers.get("access-control-max-age"))).toBeGreaterThan(0);
  });

  it("refuses an origin that is not listed, and a method Connect does not use", async () => {
    const other = await preflight(on, "https://evil.example.net");
    expect(other.status).toBe(403);
    expect(await other.text()).toBe("origin https://evil.example.net is not in KEYGATE_CORS_ORIGINS\n");
    const put = await fetch(on.url + PATH, {
      method: "OPTIONS",
      headers: { origin: ORIGIN, "access-control-request-method": "PUT" },
    });
    expect(put.status).toBe(403);
    expect(await put.text()).toContain("method PUT is not allowed");
  });

  it("lets the listed origin read the answer of the actual call (Connect JSON, as fetch in a page sends it)", async () => {
    const res = await fetch(on.url + PATH, {
      method: "POST",
      headers: { origin: ORIGIN, "content-type": "application/json", authorization: `Bearer ${TOKEN}` },
      body: JSON.stringify(call),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("access-control-allow-origin")).toBe(ORIGIN);
    expect(res.headers.get("access-control-expose-headers")).toContain("x-request-id");
    expect(res.headers.get("access-control-expose-headers")).toContain("grpc-status");
    // Another origin's page gets no CORS headers, so its browser withholds the answer.
    const foreign = await fetch(on.url + PATH, {
      method: "POST",
      headers: { origin: "https://evil.example.net", "content-type": "application/json" },
      body: JSON.stringify(call),
    });
    expect(foreign.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("leaves callers without an Origin (servers, CLIs) exactly as before", async () => {
    const res = await fetch(on.url + PATH, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${TOKEN}` },
      body: JSON.stringify(call),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("access-control-allow-origin")).toBeNull();
  });
});

describe("x-request-id", () => {
  const audited = (gw: TestGateway, id: string) => gw.logs.audits().filter((l) => l.requestId === id);

  it("accepts the caller's id, echoes it in the headers, and logs it on the audit line", async () => {
    const client = createClient(KeyPairService, createGrpcTransport({ baseUrl: off.url }));
    let echoed: string | null = null;
    const res = await client.associateKeyPairs(call, {
      headers: { authorization: `Bearer ${TOKEN}`, "x-request-id": "deploy-42.step:7" },
      onHeader: (h) => (echoed = h.get("x-request-id")),
    });
    expect(echoed).toBe("deploy-42.step:7");
    await pollUntil(() => audited(off, "deploy-42.step:7").length === 1, "the audit line");
    // The answer's own request_id is the cloud's; the audit line joins the two.
    expect(audited(off, "deploy-42.step:7")[0]?.upstreamRequestId).toBe(res.requestId);
  });

  it.each([
    ["too long", "x".repeat(65)],
    ["with spaces", "id with spaces"],
    ["with a quote", 'a"b'],
  ])("replaces an id %s by a fresh one, and never logs the caller's", async (_what, given) => {
    const res = await fetch(off.url + PATH, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        authorization: `Bearer ${TOKEN}`,
        "x-request-id": given,
      },
      body: JSON.stringify(call),
    });
    expect(res.status).toBe(200);
    const id = res.headers.get("x-request-id") ?? "";
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    await pollUntil(() => audited(off, id).length === 1, "the audit line");
    expect(off.logs.lines.join("\n")).not.toContain(given);
  });

  it("echoes the id on refusals too, over gRPC-Web and Connect, matching the audit line", async () => {
    const web = createClient(
      KeyPairService,
      createGrpcWebTransport({ baseUrl: off.url, httpVersion: "1.1" }),
    );
    const err = await web.associateKeyPairs(call, { headers: { "x-request-id": "refused-web-1" } }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(err?.rawMessage).toContain("credentials");
    expect(err?.metadata.get("x-request-id")).toBe("refused-web-1");
    await pollUntil(() => audited(off, "refused-web-1").length === 1, "the audit line of the refusal");

    // Refused before keygate's handler (malformed JSON): the transport's audit line has the same id.
    const res = await fetch(off.url + PATH, {
      method: "POST",
      headers: { "content-type": "application/json", "x-request-id": "refused-json-1" },
      body: "{not json",
    });
    expect(res.status).toBe(400);
    expect(res.headers.get("x-request-id")).toBe("refused-json-1");
    await pollUntil(() => audited(off, "refused-json-1").length === 1, "the transport's audit line");
    const connect = createClient(
      KeyPairService,
      createConnectTransport({ baseUrl: off.url, httpVersion: "1.1" }),
    );
    const connectErr = await connect.associateKeyPairs(call).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(connectErr?.metadata.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
  });
});
