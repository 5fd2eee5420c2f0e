/**
 * Issue 15: HTTPS_PROXY / HTTP_PROXY / NO_PROXY are honoured for the cloud calls. A small proxy on
 * loopback (CONNECT tunnels and absolute-URI requests, counted) sits between keygate and the
 * emulator; for the https case a TLS front with a certificate for cvm.tencentcloudapi.com stands
 * in for the cloud, trusted through NODE_EXTRA_CA_CERTS as an operator's private CA would be.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";
import net, { type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadSettings, SettingsError } from "../src/config/settings.js";
import { KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import type { Emulator } from "../src/upstream/emulator/index.js";
import { isKeygateError } from "../src/core/errors.js";
import { bypassesProxy } from "../src/upstream/proxy.js";
import { createTencentUpstream } from "../src/upstream/tencent-upstream.js";
import { selfSignedCertificate } from "./support/tls.js";
import { startEmulator, startGateway } from "./support/app.js";
import { TOKEN_A, TWO_TENANTS } from "./support/policies.js";
import { killStrays, serveEnv, spawnKeygate, waitListening } from "./support/process.js";

/** What the test proxy saw. */
interface ProxyLog {
  tunnels: string[];
  forwards: string[];
  auth: (string | undefined)[];
}

/**
 * An HTTP proxy: CONNECT host:port opens a tunnel (to `reroute[host:port]` when named, so the
 * cloud's real name can lead to a local TLS front), any other request is forwarded by its URI.
 */
async function startProxy(reroute: Record<string, number> = {}) {
  const log: ProxyLog = { tunnels: [], forwards: [], auth: [] };
  const server = http.createServer((req, res) => {
    log.forwards.push(`${req.method} ${req.url}`);
    log.auth.push(req.headers["proxy-authorization"]);
    const url = new URL(req.url ?? "");
    const headers = { ...req.headers };
    delete headers["proxy-authorization"];
    const up = http.request(
      { host: url.hostname, port: url.port, method: req.method, path: url.pathname + url.search, headers },
      (r) => {
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
      },
    );
    up.on("error", () => res.destroy());
    req.pipe(up);
  });
  server.on("connect", (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    const target = req.url ?? "";
    log.tunnels.push(target);
    log.auth.push(req.headers["proxy-authorization"]);
    const i = target.lastIndexOf(":");
    const port = reroute[target] ?? Number(target.slice(i + 1));
    const upstream = net.connect(port, reroute[target] ? "127.0.0.1" : target.slice(0, i), () => {
      client.write("HTTP/1.1 200 Connection established\r\n\r\n");
      if (head.length > 0) upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    upstream.on("error", () => client.destroy());
    client.on("error", () => upstream.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    log,
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

let emulator: Emulator;
let dir: string;

beforeAll(async () => {
  emulator = await startEmulator(50);
  dir = mkdtempSync(join(tmpdir(), "keygate-proxy-"));
});
afterAll(async () => {
  await killStrays();
  await emulator?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const request = { region: "ap-guangzhou", instanceIds: ["ins-gz000002"], keyIds: ["skey-aaaaaaaa"] };
const headers = { authorization: `Bearer ${TOKEN_A}` };

describe("NO_PROXY rules", () => {
  it("match hosts, domains with their subdomains, ports, IPs, CIDRs and *", () => {
    const at = (host: string, port = 443) => ({ host, port });
    expect(bypassesProxy(undefined, at("cvm.tencentcloudapi.com"))).toBe(false);
    expect(bypassesProxy(".tencentcloudapi.com", at("cvm.tencentcloudapi.com"))).toBe(true);
    expect(bypassesProxy("tencentcloudapi.com", at("cvm.tencentcloudapi.com"))).toBe(true);
    expect(bypassesProxy("tencentcloudapi.com", at("nottencentcloudapi.com"))).toBe(false);
    expect(bypassesProxy("localhost, 127.0.0.1", at("127.0.0.1", 9000))).toBe(true);
    expect(bypassesProxy("127.0.0.1:8000", at("127.0.0.1", 9000))).toBe(false);
    expect(bypassesProxy("127.0.0.1:9000", at("127.0.0.1", 9000))).toBe(true);
    expect(bypassesProxy("10.0.0.0/8", at("10.2.3.4"))).toBe(true);
    expect(bypassesProxy("10.0.0.0/8", at("11.2.3.4"))).toBe(false);
    expect(bypassesProxy("::1", at("[::1]"))).toBe(true);
    expect(bypassesProxy("*", at("cvm.tencentcloudapi.com"))).toBe(true);
  });
});

describe("proxy settings", () => {
  it("lower case wins, and a proxy URL keygate cannot use is refused at start", () => {
    const s = loadSettings(
      { HTTPS_PROXY: "http://upper:3128", https_proxy: "http://lower:3128", NO_PROXY: ".svc" },
      "dev",
    );
    expect(s.proxy).toEqual({ httpsProxy: "http://lower:3128", httpProxy: undefined, noProxy: ".svc" });
    let err: unknown;
    try {
      loadSettings({ HTTPS_PROXY: "socks5://u:secretpw@proxy:1080", HTTP_PROXY: "http://p:3128/x" }, "dev");
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SettingsError);
    const problems = (err as SettingsError).problems.join("\n");
    expect(problems).toContain("HTTPS_PROXY must be an http:// proxy URL");
    expect(problems).toContain("HTTP_PROXY must be http://host:port with no path");
    expect(problems).not.toContain("secretpw");
  });
});

describe("HTTP_PROXY for an http:// upstream", () => {
  it("sends absolute-URI requests through the proxy, with its credentials", async () => {
    const proxy = await startProxy();
    const gw = await startGateway({
      emulator,
      policyText: TWO_TENANTS,
      env: { HTTP_PROXY: proxy.url.replace("//", "//ops:pa%40ss@") },
    });
    try {
      const client = createClient(KeyPairService, createGrpcTransport({ baseUrl: gw.url }));
      const res = await client.associateKeyPairs(request, { headers });
      expect(res.requestId).not.toBe("");
      expect(proxy.log.forwards.length).toBeGreaterThan(0);
      expect(proxy.log.forwards.every((f) => f.startsWith(`POST ${emulator.url}/`))).toBe(true);
      expect(proxy.log.auth[0]).toBe(`Basic ${Buffer.from("ops:pa@ss").toString("base64")}`);
    } finally {
      await gw.stop();
      await proxy.close();
    }
  });

  it("NO_PROXY naming the upstream host goes direct", async () => {
    const proxy = await startProxy();
    const gw = await startGateway({
      emulator,
      policyText: TWO_TENANTS,
      env: { HTTP_PROXY: proxy.url, NO_PROXY: "localhost,127.0.0.1" },
    });
    try {
      const client = createClient(KeyPairService, createGrpcTransport({ baseUrl: gw.url }));
      const res = await client.associateKeyPairs(request, { headers });
      expect(res.requestId).not.toBe("");
      expect(proxy.log.forwards).toEqual([]);
      expect(proxy.log.tunnels).toEqual([]);
    } finally {
      await gw.stop();
      await proxy.close();
    }
  });
});

describe("a proxy that refuses", () => {
  it("CONNECT answered 407 fails the call as UPSTREAM_UNAVAILABLE, naming the proxy's answer", async () => {
    const refusing = http.createServer((_req, res) => res.end());
    refusing.on("connect", (_req: http.IncomingMessage, socket: net.Socket) => {
      socket.end("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n");
    });
    await new Promise<void>((resolve) => refusing.listen(0, "127.0.0.1", resolve));
    const port = (refusing.address() as AddressInfo).port;
    const up = createTencentUpstream({
      credential: { secretId: "AKIDPROXYTEST", secretKey: "proxy-test-secret" },
      proxy: { httpsProxy: `http://u:hunter2@127.0.0.1:${port}`, httpProxy: undefined, noProxy: undefined },
      keepAlive: false,
    });
    try {
      const err = await up
        .describeInstances("ap-guangzhou", ["ins-gz000001"], { signal: new AbortController().signal })
        .catch((e: unknown) => e);
      expect(isKeygateError(err)).toBe(true);
      expect(err).toMatchObject({ reason: "UPSTREAM_UNAVAILABLE" });
      expect((err as Error).message).toContain("407 Proxy Authentication Required");
      expect((err as Error).message).not.toContain("hunter2");
    } finally {
      up.close();
      refusing.closeAllConnections();
      await new Promise<void>((resolve) => refusing.close(() => resolve()));
    }
  });
});

describe("HTTPS_PROXY for the cloud itself", () => {
  it("keygate serve tunnels to cvm.tencentcloudapi.com:443 with CONNECT, TLS checked inside", async () => {
    selfSignedCertificate(dir, "cloud", "cvm.tencentcloudapi.com", "DNS:cvm.tencentcloudapi.com");
    // The "cloud": TLS for cvm.tencentcloudapi.com in front of the emulator.
    const emu = new URL(emulator.url);
    let sni: string | undefined;
    const front = https.createServer(
      { key: readFileSync(join(dir, "cloud.key")), cert: readFileSync(join(dir, "cloud.crt")) },
      (req, res) => {
        sni = (req.socket as unknown as { servername?: string }).servername;
        const up = http.request(
          { host: emu.hostname, port: emu.port, method: req.method, path: req.url, headers: req.headers },
          (r) => {
            res.writeHead(r.statusCode ?? 502, r.headers);
            r.pipe(res);
          },
        );
        req.pipe(up);
      },
    );
    await new Promise<void>((resolve) => front.listen(0, "127.0.0.1", resolve));
    const frontPort = (front.address() as AddressInfo).port;
    const proxy = await startProxy({ "cvm.tencentcloudapi.com:443": frontPort });
    writeFileSync(join(dir, "policy.yaml"), TWO_TENANTS);
    try {
      const child = spawnKeygate(
        ["serve"],
        serveEnv(join(dir, "policy.yaml"), "", {
          HTTPS_PROXY: proxy.url,
          NODE_EXTRA_CA_CERTS: join(dir, "cloud.crt"),
        }),
      );
      const { api } = await waitListening(child);
      expect(child.logs().find((l) => l.msg === "cloud calls go through a proxy")?.proxy).toBe(proxy.url);
      const client = createClient(
        KeyPairService,
        createGrpcTransport({ baseUrl: `http://127.0.0.1:${api}` }),
      );
      const res = await client.associateKeyPairs(request, { headers });
      expect(res.requestId).not.toBe("");
      expect(proxy.log.tunnels.length).toBeGreaterThan(0);
      expect(new Set(proxy.log.tunnels)).toEqual(new Set(["cvm.tencentcloudapi.com:443"]));
      expect(proxy.log.forwards).toEqual([]);
      expect(sni).toBe("cvm.tencentcloudapi.com");
      await child.kill();
    } finally {
      await proxy.close();
      front.closeAllConnections();
      await new Promise<void>((resolve) => front.close(() => resolve()));
    }
  }, 60_000);
});
