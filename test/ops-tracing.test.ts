/**
 * OpenTelemetry tracing: off (the SDK not even loaded) without OTEL_* variables; with
 * OTEL_TRACES_EXPORTER=otlp a real `keygate serve` exports a span per call to an OTLP/HTTP
 * collector (here a plain HTTP server in the test). Both through tsx and through the bundle the bin runs
 * (dist/bundle/, which leaves the SDK in node_modules and bundles the API: the two meet through the API's
 * global registration).
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { startTracing } from "../src/observability/tracing.js";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { startEmulator } from "./support/app.js";
import { sha256 } from "./support/policies.js";
import { killStrays, serveEnv, spawnChild, waitListening } from "./support/process.js";
import { pollUntil } from "./support/wait.js";

const TOKEN = "ops-tracing-token-0123456789";
const CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN = "00f067aa0ba902b7";

let emulator: Emulator;
let dir: string;
let policyFile: string;
let hookRegister: string;
let collector: http.Server;
let collectorUrl: string;
const exports: { path: string; contentType: string; body: string }[] = [];

beforeAll(async () => {
  emulator = await startEmulator(100);
  dir = mkdtempSync(join(tmpdir(), "keygate-ops-tracing-"));
  policyFile = join(dir, "policy.yaml");
  writeFileSync(
    policyFile,
    `tenants:\n  ops:\n    tokens_sha256: ["${sha256(TOKEN)}"]\n    regions: [ap-guangzhou]\n    instances: "*"\n    keys: "*"\n`,
  );
  // A module resolve hook that notes every OpenTelemetry SDK module the process loads.
  writeFileSync(
    join(dir, "hooks.mjs"),
    `import { appendFileSync } from "node:fs";
export async function resolve(specifier, context, next) {
  const r = await next(specifier, context);
  if (/@opentelemetry\\/(sdk-|exporter-)/.test(r.url)) appendFileSync(process.env.KEYGATE_TEST_SDK_LOG, r.url + "\\n");
  return r;
}
`,
  );
  hookRegister = join(dir, "register.mjs");
  writeFileSync(
    hookRegister,
    `import { register } from "node:module";\nregister("./hooks.mjs", import.meta.url);\n`,
  );

  collector = http.createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (d: string) => (body += d));
    req.on("end", () => {
      exports.push({ path: req.url ?? "", contentType: req.headers["content-type"] ?? "", body });
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  await new Promise<void>((resolve) => collector.listen(0, "127.0.0.1", resolve));
  collectorUrl = `http://127.0.0.1:${(collector.address() as AddressInfo).port}`;
});
afterEach(async () => {
  await killStrays();
});
afterAll(async () => {
  await emulator?.close();
  await new Promise<void>((resolve) => collector?.close(() => resolve()));
  rmSync(dir, { recursive: true, force: true });
});

/** How `keygate` is started: node's arguments before `serve`. */
const ENTRIES: [string, string[]][] = [
  ["tsx", ["--import", "tsx", "src/cli/main.ts"]],
  ["the bundle", ["bin/keygate.js"]],
];

/** `keygate serve` with the resolve hook; `sdkLog` lists the SDK modules it loaded. */
async function serve(entry: string[], otel: Record<string, string>) {
  const sdkLog = join(dir, `sdk-${Date.now()}.log`);
  const child = spawnChild(
    process.execPath,
    ["--import", hookRegister, ...entry, "serve"],
    serveEnv(policyFile, emulator.url, {
      KEYGATE_DRAIN_MS: "2000",
      KEYGATE_TEST_SDK_LOG: sdkLog,
      ...otel,
    }),
  );
  const { api } = await waitListening(child);
  const client = createClient(KeyPairService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${api}` }));
  const sdkModules = () =>
    existsSync(sdkLog) ? readFileSync(sdkLog, "utf8").split("\n").filter(Boolean) : [];
  return { child, client, sdkModules };
}

const call = {
  region: "ap-guangzhou",
  instanceIds: ["ins-gz000001"],
  keyIds: ["skey-aaaaaaaa"],
};

describe("startTracing", () => {
  it("is off without OTEL_* variables, with OTEL_TRACES_EXPORTER=none and with OTEL_SDK_DISABLED", async () => {
    expect(await startTracing({})).toBeUndefined();
    expect(await startTracing({ KEYGATE_PORT: "8080" })).toBeUndefined();
    expect(
      await startTracing({ OTEL_TRACES_EXPORTER: "none", OTEL_EXPORTER_OTLP_ENDPOINT: collectorUrl }),
    ).toBeUndefined();
    expect(await startTracing({ OTEL_SDK_DISABLED: "true", OTEL_TRACES_EXPORTER: "otlp" })).toBeUndefined();
  });
});

describe.each(ENTRIES)("keygate serve (%s) and OpenTelemetry", (_name, entry) => {
  it("loads no SDK module and exports nothing when tracing is off", async () => {
    const before = exports.length;
    const { child, client, sdkModules } = await serve(entry, {});
    const res = await client.associateKeyPairs(call, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(res.requestId).not.toBe("");
    child.signal("SIGTERM");
    expect((await child.exited).code).toBe(0);
    expect(sdkModules()).toEqual([]);
    expect(exports.length).toBe(before);
  });

  it("exports the call's span over OTLP/HTTP when OTEL_TRACES_EXPORTER=otlp", async () => {
    const before = exports.length;
    const { child, client, sdkModules } = await serve(entry, {
      OTEL_TRACES_EXPORTER: "otlp",
      OTEL_EXPORTER_OTLP_ENDPOINT: collectorUrl,
      OTEL_SERVICE_NAME: "keygate-under-test",
      OTEL_BSP_SCHEDULE_DELAY: "100",
    });
    expect(sdkModules().some((u) => u.includes("@opentelemetry/sdk-trace-node"))).toBe(true);
    const res = await client.associateKeyPairs(call, {
      headers: {
        authorization: `Bearer ${TOKEN}`,
        "x-request-id": "trace-me-1",
        // The caller's own trace (W3C trace context): keygate's span continues it.
        traceparent: `00-${CALLER_TRACE}-${CALLER_SPAN}-01`,
      },
    });
    // A refused call is a span too, with an error status.
    const refused = await client.associateKeyPairs(call, { headers: {} }).then(
      () => false,
      () => true,
    );
    expect(refused).toBe(true);

    const spans = () =>
      exports
        .slice(before)
        .filter((e) => e.path === "/v1/traces")
        .flatMap((e) => {
          const doc = JSON.parse(e.body) as {
            resourceSpans: {
              resource: { attributes: { key: string; value: { stringValue?: string } }[] };
              scopeSpans: {
                spans: {
                  name: string;
                  kind?: number;
                  traceId: string;
                  parentSpanId?: string;
                  status?: { code?: number };
                  attributes: { key: string; value: { stringValue?: string; intValue?: number | string } }[];
                }[];
              }[];
            }[];
          };
          return doc.resourceSpans.flatMap((rs) =>
            rs.scopeSpans.flatMap((ss) =>
              ss.spans.map((s) => ({
                ...s,
                service: rs.resource.attributes.find((a) => a.key === "service.name")?.value.stringValue,
                attr: Object.fromEntries(
                  s.attributes.map((a): [string, unknown] => [
                    a.key,
                    a.value.stringValue ?? a.value.intValue,
                  ]),
                ),
              })),
            ),
          );
        });
    await pollUntil(() => spans().length >= 2, "two spans exported to the collector");
    expect(exports.slice(before).every((e) => e.contentType.startsWith("application/json"))).toBe(true);

    const ok = spans().find((s) => s.attr["keygate.request_id"] === "trace-me-1");
    expect(ok).toMatchObject({
      name: "keygate.v1.KeyPairService/AssociateKeyPairs",
      service: "keygate-under-test",
    });
    expect(ok?.attr).toMatchObject({
      "rpc.method": "AssociateKeyPairs",
      "rpc.service": "keygate.v1.KeyPairService",
      "cloud.region": "ap-guangzhou",
    });
    expect(ok?.status?.code ?? 0).not.toBe(2);
    expect(ok).toMatchObject({ traceId: CALLER_TRACE, parentSpanId: CALLER_SPAN, kind: 2 }); // SPAN_KIND_SERVER
    const failed = spans().find((s) => s.attr["keygate.request_id"] !== "trace-me-1");
    expect(failed?.status?.code).toBe(2); // STATUS_CODE_ERROR
    // Without a traceparent, keygate starts a trace of its own.
    expect(failed?.traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(failed?.traceId).not.toBe(CALLER_TRACE);
    expect(failed?.parentSpanId ?? "").toBe("");
    expect(res.requestId).not.toBe("");
    // No bearer token travels to the collector.
    for (const e of exports.slice(before)) expect(e.body).not.toContain(TOKEN);

    child.signal("SIGTERM");
    expect((await child.exited).code).toBe(0);
  });
});
