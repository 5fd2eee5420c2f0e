/**
 * Ready means warm (issue 14): a replica reports SERVING only once the send path to the cloud has
 * run once (one DescribeInstances through the limiter, the SDK and a keep-alive connection), so
 * the first granted calls of a new pod are not its slowest. Real app, real SDK, real emulator.
 */
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, describe, expect, it } from "vitest";
import { loadSettings } from "../src/config/settings.js";
import { Health } from "../src/gen/health/v1/health_pb.js";
import { HealthCheckResponse_ServingStatus as Status } from "../src/gen/health/v1/health_pb.js";
import { createApp, type App } from "../src/main.js";
import { createLogger } from "../src/observability/logger.js";
import {
  createEmulator,
  EMULATOR_SECRET_ID,
  EMULATOR_SECRET_KEY,
  type Emulator,
} from "../src/upstream/emulator/index.js";
import { LogCapture } from "./support/app.js";
import { FLEET_POLICY } from "./support/fleet.js";
import { freePort } from "./support/redis-server.js";
import { pollUntil } from "./support/wait.js";

let app: App | undefined;
let emulator: Emulator | undefined;
afterAll(async () => {
  await app?.stop(500);
  await emulator?.close();
});

describe("ready means warm", () => {
  it("NOT_SERVING while the cloud cannot be reached (liveness SERVING), SERVING once the warm-up call was answered", async () => {
    const port = await freePort();
    const settings = loadSettings(
      {
        KEYGATE_HOST: "127.0.0.1",
        KEYGATE_PORT: "0",
        KEYGATE_METRICS_PORT: "0",
        TENCENTCLOUD_SECRET_ID: EMULATOR_SECRET_ID,
        TENCENTCLOUD_SECRET_KEY: EMULATOR_SECRET_KEY,
        KEYGATE_UPSTREAM_URL: `http://127.0.0.1:${port}`,
      },
      "dev",
    );
    app = await createApp({
      settings,
      logger: createLogger("warn", new LogCapture()),
      policyText: { text: FLEET_POLICY, source: "test" },
      defaultMetrics: false,
      warmWaitMs: 300,
    });
    const { api } = await app.start();
    const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${api.port}` }));
    const status = async (service: string) => (await health.check({ service })).status;

    // Policy loaded, store up, but nothing has reached the cloud yet.
    expect(app.health.components()).toMatchObject({ policy: true, upstream: false });
    expect(await status("")).toBe(Status.NOT_SERVING);
    expect(await status("keygate.v1.KeyPairService")).toBe(Status.NOT_SERVING);
    expect(await status("liveness")).toBe(Status.SERVING);
    expect(app.health.isServing()).toBe(false);

    // The cloud comes up: the warm-up's next try is answered and readiness turns SERVING.
    emulator = await createEmulator({ host: "127.0.0.1", port });
    await pollUntil(
      async () => (await status("")) === Status.SERVING,
      "SERVING after the warm-up",
      15_000,
      50,
    );
    expect(app.health.isServing()).toBe(true);
    const describes = emulator.stats.arrivals.filter((a) => a.action === "DescribeInstances");
    expect(describes.length).toBeGreaterThanOrEqual(1);
    expect(emulator.stats.arrivals.filter((a) => a.action === "AssociateInstancesKeyPairs")).toHaveLength(0);
  });
});
