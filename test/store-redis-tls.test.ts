/**
 * Issue 15: TLS to Redis with an operator's CA (KEYGATE_REDIS_CA_FILE), for rediss:// and for
 * rediss+sentinel:// (TLS to the Sentinel as well as to the master). The servers are real
 * redis-server processes listening on TLS only, with certificates made by openssl for this run.
 */
import { readFileSync } from "node:fs";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadSettings, type SettingsError } from "../src/config/settings.js";
import { KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { startEmulator, startGateway, type TestGateway } from "./support/app.js";
import { TOKEN_A, TWO_TENANTS } from "./support/policies.js";
import { startTlsRedis, startTlsSentinel, type TlsRedis } from "./support/redis-tls.js";

function problemsOf(env: Record<string, string>): string[] {
  try {
    loadSettings(env, "dev");
    return [];
  } catch (e) {
    return (e as SettingsError).problems;
  }
}

describe("KEYGATE_REDIS_CA_FILE", () => {
  it("is refused without a TLS URL, or when it cannot be read", () => {
    expect(
      problemsOf({ KEYGATE_REDIS_URL: "redis://127.0.0.1:7000", KEYGATE_REDIS_CA_FILE: "/etc/hostname" }),
    ).toEqual([
      "KEYGATE_REDIS_CA_FILE needs a TLS KEYGATE_REDIS_URL (rediss://, rediss+sentinel://, rediss+cluster://)",
    ]);
    expect(
      problemsOf({
        KEYGATE_REDIS_URL: "rediss://127.0.0.1:7000",
        KEYGATE_REDIS_CA_FILE: "/nonexistent/ca.pem",
      }),
    ).toEqual(['KEYGATE_REDIS_CA_FILE="/nonexistent/ca.pem" cannot be read']);
  });
});

describe.each([
  ["rediss://", startTlsRedis],
  ["rediss+sentinel://", startTlsSentinel],
] as const)("%s with a private CA", (_name, start) => {
  let redis: TlsRedis;
  let emulator: Emulator;
  let gw: TestGateway;

  beforeAll(async () => {
    redis = await start();
    emulator = await startEmulator(50);
    gw = await startGateway({
      emulator,
      policyText: TWO_TENANTS,
      env: { KEYGATE_REDIS_URL: redis.url, KEYGATE_REDIS_CA_FILE: redis.ca },
    });
  }, 60_000);
  afterAll(async () => {
    await gw?.stop();
    await emulator?.close();
    await redis?.stop();
  });

  it("serves calls through the store, and the store holds keygate's keys", async () => {
    const client = createClient(
      KeyPairService,
      createConnectTransport({ baseUrl: gw.url, httpVersion: "1.1" }),
    );
    const headers = { authorization: `Bearer ${TOKEN_A}` };
    const req = {
      region: "ap-guangzhou",
      instanceIds: ["ins-gz000002"],
      keyIds: ["skey-aaaaaaaa"],
      idempotencyKey: "tls-1",
    };
    const first = await client.associateKeyPairs(req, { headers });
    const again = await client.associateKeyPairs(req, { headers });
    expect(again).toMatchObject({ requestId: first.requestId, deduplicated: true });

    // The servers listen on TLS only: that keygate got this far means it spoke TLS, trusting the CA.
    const probe = new Redis({ host: "127.0.0.1", port: redis.port, tls: { ca: readFileSync(redis.ca) } });
    try {
      expect(await probe.dbsize()).toBeGreaterThan(0);
    } finally {
      probe.disconnect();
    }
  });
});
