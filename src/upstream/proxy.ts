import { Agent as HttpAgent, type ClientRequest, type ClientRequestArgs } from "node:http";
import { Agent as HttpsAgent, type RequestOptions as HttpsRequestOptions } from "node:https";
import { BlockList, connect as netConnect, isIP, type Socket } from "node:net";
import type { Duplex } from "node:stream";

/**
 * The standard proxy variables (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), as read by
 * src/config/settings.ts. Only the cloud calls use them (docs/decisions/clients.md, "Proxies").
 */
export interface ProxySettings {
  /** http://[user:pass@]host:port for https:// targets (a CONNECT tunnel). */
  httpsProxy: string | undefined;
  /** http://[user:pass@]host:port for http:// targets (absolute-URI requests). */
  httpProxy: string | undefined;
  /** Comma-separated hosts, domains (`.example.com` or `example.com`), IPs, CIDRs, `*`; `:port` optional. */
  noProxy: string | undefined;
}

/** A problem with a proxy URL, or undefined when it can be used. */
export function proxyUrlProblem(raw: string): string | undefined {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return "is not a URL (expected http://host:port)";
  }
  if (url.protocol !== "http:") return `must be an http:// proxy URL (got ${url.protocol})`;
  if (url.pathname !== "/" || url.search !== "") return "must be http://host:port with no path";
  return undefined;
}

interface Target {
  host: string;
  port: number;
}

interface NoProxyRule {
  /** Host name (lower case, no leading dot) matched with its subdomains, or an IP. */
  host?: string;
  cidr?: BlockList;
  port?: number;
}

function parseNoProxy(raw: string | undefined): { all: boolean; rules: NoProxyRule[] } {
  const rules: NoProxyRule[] = [];
  let all = false;
  for (const entry of (raw ?? "").split(/[\s,]+/)) {
    const e = entry.trim().toLowerCase();
    if (e === "") continue;
    if (e === "*") {
      all = true;
      continue;
    }
    const slash = e.indexOf("/");
    if (slash > 0) {
      const ip = e.slice(0, slash);
      const bits = Number(e.slice(slash + 1));
      const family = isIP(ip);
      if (family !== 0 && Number.isInteger(bits)) {
        const list = new BlockList();
        list.addSubnet(ip, bits, family === 6 ? "ipv6" : "ipv4");
        rules.push({ cidr: list });
      }
      continue;
    }
    // host, host:port, [v6]:port, bare v6
    const bracket = /^\[([^\]]+)\](?::(\d+))?$/.exec(e);
    if (bracket) {
      rules.push({ host: bracket[1], ...(bracket[2] ? { port: Number(bracket[2]) } : {}) });
      continue;
    }
    if (isIP(e) === 6) {
      rules.push({ host: e });
      continue;
    }
    const colon = /^(.*):(\d+)$/.exec(e);
    const host = (colon ? (colon[1] ?? "") : e).replace(/^\*?\./, "");
    rules.push({ host, ...(colon ? { port: Number(colon[2]) } : {}) });
  }
  return { all, rules };
}

/** True when NO_PROXY says `host:port` is reached directly. */
export function bypassesProxy(noProxy: string | undefined, target: Target): boolean {
  const { all, rules } = parseNoProxy(noProxy);
  if (all) return true;
  const host = target.host.toLowerCase().replace(/^\[(.*)\]$/, "$1");
  const family = isIP(host);
  return rules.some((r) => {
    if (r.port !== undefined && r.port !== target.port) return false;
    if (r.cidr) return family !== 0 && r.cidr.check(host, family === 6 ? "ipv6" : "ipv4");
    if (r.host === undefined) return false;
    return host === r.host || (family === 0 && host.endsWith(`.${r.host}`));
  });
}

/** The proxy to use for a target, or undefined for a direct connection. */
export function proxyFor(
  proxy: ProxySettings | undefined,
  protocol: "http:" | "https:",
  target: Target,
): URL | undefined {
  const raw = protocol === "https:" ? proxy?.httpsProxy : proxy?.httpProxy;
  if (raw === undefined || bypassesProxy(proxy?.noProxy, target)) return undefined;
  return new URL(raw);
}

/** The URL without its password, for error messages. */
function shown(url: URL): string {
  return `${url.protocol}//${url.host}`;
}

function basicAuth(url: URL): string | undefined {
  if (url.username === "" && url.password === "") return undefined;
  const pair = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
  return `Basic ${Buffer.from(pair).toString("base64")}`;
}

function proxyAddress(url: URL): Target {
  return { host: url.hostname.replace(/^\[(.*)\]$/, "$1"), port: url.port === "" ? 80 : Number(url.port) };
}

function authority(t: Target): string {
  return isIP(t.host) === 6 ? `[${t.host}]:${t.port}` : `${t.host}:${t.port}`;
}

/** How long the proxy may take to open a tunnel; the call's own deadline usually ends it first. */
const TUNNEL_TIMEOUT_MS = 10_000;

/**
 * Opens `CONNECT target` through `proxy` and hands back the raw socket once the proxy answers
 * 2xx. Any other answer, a close or a silence fails with the proxy's status line.
 */
export function openTunnel(
  proxy: URL,
  target: Target,
  done: (err: Error | null, socket?: Socket) => void,
): void {
  const at = proxyAddress(proxy);
  const socket = netConnect({ host: at.host, port: at.port });
  let buffered = Buffer.alloc(0);
  let settled = false;
  const finish = (err: Error | null) => {
    if (settled) return;
    settled = true;
    socket.removeListener("data", onData);
    socket.setTimeout(0);
    if (err) {
      socket.destroy();
      done(err);
    } else done(null, socket);
  };
  const onData = (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    const end = buffered.indexOf("\r\n\r\n");
    if (end < 0) {
      if (buffered.length > 16_384)
        finish(new Error(`proxy ${shown(proxy)} sent an oversized answer to CONNECT`));
      return;
    }
    const statusLine = buffered.subarray(0, buffered.indexOf("\r\n")).toString("latin1");
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1] ?? 0);
    if (status < 200 || status > 299) {
      finish(
        new Error(`proxy ${shown(proxy)} refused CONNECT ${authority(target)}: ${statusLine.slice(0, 100)}`),
      );
      return;
    }
    const rest = buffered.subarray(end + 4);
    if (rest.length > 0) socket.unshift(rest);
    finish(null);
  };
  socket.setTimeout(TUNNEL_TIMEOUT_MS, () =>
    finish(new Error(`proxy ${shown(proxy)} did not open a tunnel within ${TUNNEL_TIMEOUT_MS} ms`)),
  );
  socket.once("error", (e) => finish(new Error(`proxy ${shown(proxy)}: ${e.message}`)));
  socket.once("close", () => finish(new Error(`proxy ${shown(proxy)} closed the connection during CONNECT`)));
  socket.on("data", onData);
  socket.once("connect", () => {
    const auth = basicAuth(proxy);
    socket.write(
      `CONNECT ${authority(target)} HTTP/1.1\r\nHost: ${authority(target)}\r\n` +
        (auth ? `Proxy-Authorization: ${auth}\r\n` : "") +
        "\r\n",
    );
  });
}

type ConnectCallback = (err: Error | null, stream: Duplex) => void;

/**
 * An https.Agent whose connections are CONNECT tunnels through a proxy to `target`; TLS (SNI
 * and certificate checks for the endpoint the request names) runs inside the tunnel.
 */
class TunnelHttpsAgent extends HttpsAgent {
  constructor(
    private readonly proxy: URL,
    private readonly target: Target | undefined,
    keepAlive: boolean,
  ) {
    super({ keepAlive });
  }

  override createConnection(
    options: HttpsRequestOptions,
    callback?: ConnectCallback,
  ): Duplex | null | undefined {
    const target = this.target ?? {
      host: String(options.host ?? options.hostname ?? "localhost"),
      port: Number(options.port ?? 443),
    };
    openTunnel(this.proxy, target, (err, socket) => {
      if (err || !socket) {
        callback?.(err ?? new Error("no tunnel"), undefined as unknown as Duplex);
        return;
      }
      const tls = super.createConnection({ ...options, socket } as HttpsRequestOptions);
      if (tls) callback?.(null, tls);
    });
    return undefined;
  }
}

/**
 * An http.Agent that sends each request to a proxy in absolute-URI form
 * (`POST http://target/ HTTP/1.1`); the `Host` header still names the endpoint.
 */
class ForwardHttpAgent extends HttpAgent {
  constructor(
    private readonly proxy: URL,
    private readonly target: Target | undefined,
    keepAlive: boolean,
  ) {
    super({ keepAlive });
  }

  /** Node's hook between a request and its socket; the request line is not written yet. */
  addRequest(req: ClientRequest, options: ClientRequestArgs): void {
    const target = this.target ?? {
      host: String(options.host ?? options.hostname ?? "localhost"),
      port: Number(options.port ?? 80),
    };
    if (!/^https?:\/\//.test(req.path)) req.path = `http://${authority(target)}${req.path}`;
    const auth = basicAuth(this.proxy);
    if (auth) req.setHeader("proxy-authorization", auth);
    (
      HttpAgent.prototype as unknown as { addRequest: (r: ClientRequest, o: ClientRequestArgs) => void }
    ).addRequest.call(this, req, options);
  }

  override createConnection(
    options: ClientRequestArgs,
    callback?: ConnectCallback,
  ): Duplex | null | undefined {
    const at = proxyAddress(this.proxy);
    return super.createConnection({ ...options, host: at.host, port: at.port }, callback);
  }
}

/**
 * The agent for a cloud route when a proxy applies to it, else undefined. `target` is where the
 * connection would go without a proxy (KEYGATE_UPSTREAM_URL's host), undefined for the endpoint.
 */
export function proxiedAgent(
  proxy: ProxySettings | undefined,
  endpointHost: string,
  protocol: "http:" | "https:",
  target: Target | undefined,
  keepAlive: boolean,
): HttpAgent | undefined {
  const decideFor = target ?? { host: endpointHost, port: protocol === "https:" ? 443 : 80 };
  const via = proxyFor(proxy, protocol, decideFor);
  if (!via) return undefined;
  return protocol === "https:"
    ? new TunnelHttpsAgent(via, target, keepAlive)
    : new ForwardHttpAgent(via, target, keepAlive);
}

/**
 * The proxy the cloud calls will use, without credentials (`http://host:port`), for the start-up
 * log; undefined when they go direct.
 */
export function cloudProxy(
  proxy: ProxySettings | undefined,
  endpoint: string,
  upstreamUrl: string | undefined,
): string | undefined {
  let protocol: "http:" | "https:" = "https:";
  let target: Target = { host: endpoint, port: 443 };
  if (upstreamUrl !== undefined) {
    const url = new URL(upstreamUrl);
    protocol = url.protocol === "http:" ? "http:" : "https:";
    const port = url.port === "" ? (protocol === "https:" ? 443 : 80) : Number(url.port);
    target = { host: url.hostname.replace(/^\[(.*)\]$/, "$1"), port };
  }
  const via = proxyFor(proxy, protocol, target);
  return via ? shown(via) : undefined;
}
