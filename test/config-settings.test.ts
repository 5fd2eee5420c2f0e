import { describe, expect, it } from "vitest";
import { loadSettings, SettingsError } from "../src/config/settings.js";

const base = {
  KEYGATE_POLICY_FILE: "/etc/keygate/policy.yaml",
  TENCENTCLOUD_SECRET_ID: "AKIDexample",
  TENCENTCLOUD_SECRET_KEY: "super-secret-key-value",
};

function problems(env: Record<string, string>, mode: "serve" | "dev" = "serve"): string[] {
  try {
    loadSettings(env, mode);
    return [];
  } catch (e) {
    if (e instanceof SettingsError) return e.problems;
    throw e;
  }
}

describe("settings from the environment", () => {
  it("has the documented defaults", () => {
    const s = loadSettings(base);
    expect(s).toMatchObject({
      host: "0.0.0.0",
      port: 8080,
      metricsPort: 9090,
      endpoint: "cvm.tencentcloudapi.com",
      rateLimit: 10,
      logLevel: "info",
      redisUrl: undefined,
      upstreamUrl: undefined,
      onStoreDown: "fail-closed",
    });
    expect(Object.isFrozen(s)).toBe(true);
  });

  it("bounds the API port by default, and refuses limits out of range", () => {
    expect(loadSettings(base).limits).toEqual({
      maxRequestBytes: 65_536,
      maxHeaderBytes: 16_384,
      maxConnections: 1_000,
      maxStreamsPerConnection: 100,
      idleTimeoutMs: 20_000,
      headersTimeoutMs: 10_000,
    });
    const p = problems({
      ...base,
      KEYGATE_MAX_REQUEST_BYTES: "100",
      KEYGATE_MAX_HEADER_BYTES: "1000000",
      KEYGATE_MAX_CONNECTIONS: "0",
      KEYGATE_MAX_STREAMS_PER_CONNECTION: "many",
      KEYGATE_IDLE_TIMEOUT_MS: "10",
      KEYGATE_HEADERS_TIMEOUT_MS: "3600000",
    });
    expect(p).toHaveLength(6);
    expect(p.join("\n")).toContain("KEYGATE_MAX_REQUEST_BYTES=100 is out of range 1024..4194304");
  });

  it("merges waiting calls by default, with no linger; refuses other values", () => {
    expect(loadSettings(base)).toMatchObject({ batch: true, batchLingerMs: 0 });
    expect(loadSettings({ ...base, KEYGATE_BATCH: "off", KEYGATE_BATCH_LINGER_MS: "25" })).toMatchObject({
      batch: false,
      batchLingerMs: 25,
    });
    const p = problems({ ...base, KEYGATE_BATCH: "yes", KEYGATE_BATCH_LINGER_MS: "5000" });
    expect(p).toEqual([
      'KEYGATE_BATCH="yes" must be "on" or "off"',
      expect.stringContaining("KEYGATE_BATCH_LINGER_MS"),
    ]);
  });

  it("lists every problem at once and never echoes the secret key", () => {
    const p = problems({
      KEYGATE_PORT: "eighty",
      KEYGATE_METRICS_PORT: "70000",
      KEYGATE_REDIS_URL: "http://redis:6379",
      KEYGATE_ENDPOINT: "https://cvm.tencentcloudapi.com",
      KEYGATE_UPSTREAM_URL: "ftp://x",
      KEYGATE_RATE_LIMIT: "0",
      KEYGATE_LOG_LEVEL: "loud",
      KEYGATE_ON_STORE_DOWN: "maybe",
      KEYGATE_TLS_CERT: "/c.pem",
      TENCENTCLOUD_SECRET_KEY: "super-secret-key-value",
    });
    expect(p.join("\n")).not.toContain("super-secret-key-value");
    for (const name of [
      "KEYGATE_PORT",
      "KEYGATE_METRICS_PORT",
      "KEYGATE_POLICY_FILE",
      "KEYGATE_REDIS_URL",
      "KEYGATE_ENDPOINT",
      "KEYGATE_UPSTREAM_URL",
      "KEYGATE_RATE_LIMIT",
      "KEYGATE_LOG_LEVEL",
      "KEYGATE_ON_STORE_DOWN",
      "KEYGATE_TLS_KEY",
      "TENCENTCLOUD_SECRET_ID",
    ]) {
      expect(
        p.some((line) => line.includes(name)),
        name,
      ).toBe(true);
    }
  });

  it("accepts Sentinel and Cluster URLs and the regional endpoint", () => {
    expect(problems({ ...base, KEYGATE_REDIS_URL: "redis+sentinel://a:26379,b:26379/mymaster" })).toEqual([]);
    expect(problems({ ...base, KEYGATE_REDIS_URL: "redis+cluster://a:6379,b:6379" })).toEqual([]);
    expect(problems({ ...base, KEYGATE_REDIS_URL: "rediss://:pw@redis:6380/2" })).toEqual([]);
    expect(problems({ ...base, KEYGATE_ENDPOINT: "cvm.ap-guangzhou.tencentcloudapi.com" })).toEqual([]);
    expect(problems({ ...base, KEYGATE_REDIS_URL: "redis+sentinel://a:26379" })).toHaveLength(1);
  });

  it("oidc credentials need the TKE variables instead of static keys", () => {
    const p = problems({
      KEYGATE_POLICY_FILE: "/p.yaml",
      KEYGATE_CREDENTIALS: "oidc",
      TKE_REGION: "ap-guangzhou",
    });
    expect(p).toHaveLength(3);
    expect(p.join()).toContain("TKE_ROLE_ARN");
  });

  it("reads CORS origins (off by default) and refuses what is not an origin", () => {
    expect(loadSettings(base).corsOrigins).toEqual([]);
    expect(
      loadSettings({ ...base, KEYGATE_CORS_ORIGINS: " https://a.example.com , http://localhost:5173 " })
        .corsOrigins,
    ).toEqual(["https://a.example.com", "http://localhost:5173"]);
    expect(loadSettings({ ...base, KEYGATE_CORS_ORIGINS: "*" }).corsOrigins).toEqual(["*"]);
    const p = problems({
      ...base,
      KEYGATE_CORS_ORIGINS: "https://a.example.com/,console.example.com,ftp://x.example.com,*",
    });
    expect(p).toHaveLength(1);
    expect(p[0]).toContain('"*" allows every origin and cannot be combined');
    const q = problems({ ...base, KEYGATE_CORS_ORIGINS: "https://a.example.com/,console.example.com" });
    expect(q).toEqual([
      'KEYGATE_CORS_ORIGINS: "https://a.example.com/" is not an origin: write scheme://host[:port] with no path or trailing slash, e.g. https://console.example.com',
      'KEYGATE_CORS_ORIGINS: "console.example.com" is not an origin: write scheme://host[:port] with no path or trailing slash, e.g. https://console.example.com',
    ]);
  });

  it("reads the build revision, refusing anything that is not a plain revision or tag", () => {
    expect(loadSettings(base).buildRevision).toBeUndefined();
    expect(loadSettings({ ...base, KEYGATE_BUILD_REVISION: "v1.2.3-4-gabc" }).buildRevision).toBe(
      "v1.2.3-4-gabc",
    );
    expect(problems({ ...base, KEYGATE_BUILD_REVISION: "a b" })).toHaveLength(1);
  });

  it("dev mode needs neither a policy file nor credentials", () => {
    expect(problems({}, "dev")).toEqual([]);
  });
});

describe("the README's configuration table", () => {
  it("names every variable the settings read", async () => {
    const { readFileSync } = await import("node:fs");
    const source = readFileSync(new URL("../src/config/settings.ts", import.meta.url), "utf8");
    const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
    const table = readme.slice(readme.indexOf("## Configuration"), readme.indexOf("## Tenant policy"));
    const names = [...new Set(source.match(/"(KEYGATE|TENCENTCLOUD|TKE)_[A-Z_]+"/g) ?? [])].map((n) =>
      n.slice(1, -1),
    );
    expect(names.length).toBeGreaterThan(20);
    for (const name of names) expect(table, name).toContain(name);
  });
});
