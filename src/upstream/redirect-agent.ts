import { Agent as HttpAgent, type ClientRequestArgs } from "node:http";
import { Agent as HttpsAgent, type RequestOptions as HttpsRequestOptions } from "node:https";
import type { Duplex } from "node:stream";
import { proxiedAgent, type ProxySettings } from "./proxy.js";

/**
 * What the SDK needs to reach `upstreamUrl` while still addressing `KEYGATE_ENDPOINT`: the
 * protocol of the URL it builds and an agent that only changes where the TCP connection goes.
 * The SDK signs for the first label of its endpoint, so the endpoint must stay the real host.
 */
export interface UpstreamRoute {
  /** "http://" or "https://", for `httpProfile.protocol`. */
  protocol: "http://" | "https://";
  agent: HttpAgent;
}

type ConnectCallback = (err: Error | null, stream: Duplex) => void;

/** An http.Agent whose sockets connect to `host:port` whatever host the request names. */
class RedirectHttpAgent extends HttpAgent {
  constructor(
    private readonly target: { host: string; port: number },
    keepAlive: boolean,
  ) {
    super({ keepAlive });
  }

  override createConnection(
    options: ClientRequestArgs,
    callback?: ConnectCallback,
  ): Duplex | null | undefined {
    return super.createConnection({ ...options, host: this.target.host, port: this.target.port }, callback);
  }
}

/**
 * An https.Agent that connects to `host:port` but keeps SNI and certificate verification for the
 * endpoint: the URL only moves the TCP destination (an SNI-routing egress, a tunnel), never
 * whose certificate is trusted.
 */
class RedirectHttpsAgent extends HttpsAgent {
  constructor(
    private readonly target: { host: string; port: number },
    keepAlive: boolean,
  ) {
    super({ keepAlive });
  }

  override createConnection(
    options: HttpsRequestOptions,
    callback?: ConnectCallback,
  ): Duplex | null | undefined {
    return super.createConnection({ ...options, host: this.target.host, port: this.target.port }, callback);
  }
}

/**
 * The route to the cloud: direct HTTPS, or via `upstreamUrl` (http:// emulator, https:// proxy);
 * through HTTPS_PROXY/HTTP_PROXY when `proxy` names one for the host connected to (src/upstream/proxy.ts).
 */
export function createUpstreamRoute(
  upstreamUrl: string | undefined,
  keepAlive = true,
  proxy?: { settings: ProxySettings; endpoint: string },
): UpstreamRoute {
  if (upstreamUrl === undefined) {
    const agent = proxy && proxiedAgent(proxy.settings, proxy.endpoint, "https:", undefined, keepAlive);
    return { protocol: "https://", agent: agent ?? new HttpsAgent({ keepAlive }) };
  }
  const url = new URL(upstreamUrl);
  const https = url.protocol === "https:";
  if (!https && url.protocol !== "http:")
    throw new Error(`upstream URL must be http:// or https:// (got ${url.protocol})`);
  const target = {
    host: url.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: url.port === "" ? (https ? 443 : 80) : Number(url.port),
  };
  const agent =
    proxy && proxiedAgent(proxy.settings, proxy.endpoint, https ? "https:" : "http:", target, keepAlive);
  if (agent) return { protocol: https ? "https://" : "http://", agent };
  return https
    ? { protocol: "https://", agent: new RedirectHttpsAgent(target, keepAlive) }
    : { protocol: "http://", agent: new RedirectHttpAgent(target, keepAlive) };
}
