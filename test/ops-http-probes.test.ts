/**
 * /livez and /readyz on the metrics port, probed as a kubelet's httpGet would: plain HTTP even
 * when the API port speaks only TLS, and the same readiness the gRPC health service reports
 * (a Redis outage makes both NOT ready, with the reason in /readyz's body).
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../src/gen/health/v1/health_pb.js";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { selfSignedCertificate } from "./support/tls.js";
import { startEmulator, startGateway, type TestGateway } from "./support/app.js";
import { opsPolicy } from "./support/policies.js";
import { type RedisProcess, startRedis } from "./support/redis-server.js";
import { pollValue } from "./support/wait.js";

let emulator: Emulator;
let redis: RedisProcess;
let dir: string;

beforeAll(async () => {
  emulator = await startEmulator(50);
  redis = await startRedis();
  dir = mkdtempSync(join(tmpdir(), "keygate-http-probes-"));
});
afterAll(async () => {
  await redis?.stop();
  await emulator?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const base = (gw: TestGateway) => gw.metricsUrl.replace(/\/metrics$/, "");
async function probe(gw: TestGateway, path: string, method = "GET") {
  const res = await fetch(base(gw) + path, { method });
  return { status: res.status, body: await res.text(), type: res.headers.get("content-type") };
}

describe("with Redis as the shared store", () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({
      emulator,
      policyText: opsPolicy("probe-token-0123456789"),
      env: { KEYGATE_REDIS_URL: redis.url },
    });
  });
  afterAll(async () => {
    await gw?.stop();
  });

  it("answers 200 on both while serving; HEAD works; other paths and methods are 404", async () => {
    expect(await probe(gw, "/livez")).toMatchObject({ status: 200, body: "ok\n" });
    expect(await probe(gw, "/readyz")).toMatchObject({ status: 200, body: "serving\n" });
    expect((await probe(gw, "/readyz", "HEAD")).status).toBe(200);
    expect((await probe(gw, "/readyz?verbose")).status).toBe(200);
    expect((await probe(gw, "/healthz")).status).toBe(404);
    expect((await probe(gw, "/livez", "POST")).status).toBe(404);
  });

  it("says 503 with the reason while Redis is down, exactly when gRPC health says NOT_SERVING", async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl: gw.url }));
    await redis.kill();
    try {
      const down = await pollValue(
        "/readyz to report the outage",
        () => probe(gw, "/readyz"),
        (r) => r.status === 503,
      );
      expect(down.body).toBe("not ready: redis down\n");
      expect(down.type).toMatch(/^text\/plain/);
      expect((await health.check({ service: "" })).status).toBe(Status.NOT_SERVING);
      // The process still runs: liveness stays up so Kubernetes does not restart it for an outage.
      expect((await probe(gw, "/livez")).status).toBe(200);
    } finally {
      await redis.restart();
    }
    await pollValue(
      "/readyz to recover",
      () => probe(gw, "/readyz"),
      (r) => r.status === 200,
    );
    expect((await health.check({ service: "" })).status).toBe(Status.SERVING);
  });

  it("says 503 draining once a stop begins", async () => {
    const stopping = gw.app.stop(3_000);
    const r = await probe(gw, "/readyz");
    expect(r).toMatchObject({ status: 503, body: "draining: this replica is shutting down\n" });
    await stopping;
  });
});

describe("with TLS on the API port", () => {
  it("still answers plain HTTP on the metrics port, where a gRPC probe in plain text would fail", async () => {
    selfSignedCertificate(dir, "server", "localhost", "IP:127.0.0.1");
    const gw = await startGateway({
      emulator,
      policyText: opsPolicy("probe-token-0123456789"),
      env: { KEYGATE_TLS_CERT: join(dir, "server.crt"), KEYGATE_TLS_KEY: join(dir, "server.key") },
    });
    try {
      // What the shipped plain-text gRPC probe does against a TLS port: it cannot get an answer.
      const plainGrpc = createClient(
        Health,
        createGrpcTransport({ baseUrl: gw.url.replace("https:", "http:") }),
      );
      await expect(plainGrpc.check({ service: "" }, { timeoutMs: 3_000 })).rejects.toThrow();
      expect(await probe(gw, "/livez")).toMatchObject({ status: 200 });
      expect(await probe(gw, "/readyz")).toMatchObject({ status: 200, body: "serving\n" });
    } finally {
      await gw.stop();
    }
  });
});
