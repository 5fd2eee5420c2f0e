import { readFileSync } from "node:fs";
import { Cluster, Redis, type RedisOptions } from "ioredis";

/** A connection that behaves the same for standalone, Sentinel and Cluster deployments. */
export type RedisClient = Redis | Cluster;

/**
 * Parses KEYGATE_REDIS_URL. Accepted forms:
 * - `redis://[user:pass@]host:port[/db]`, `rediss://…` (TLS)
 * - `redis+sentinel://[user:pass@]host1:port1,host2:port2/<master-name>[/db]`, `rediss+sentinel://…`
 *   (TLS to the Sentinels and the master)
 * - `redis+cluster://[user:pass@]host1:port1,host2:port2`
 * Returns a description of the problem instead of throwing, so config can list every error.
 */
export function parseRedisUrl(
  url: string,
): { ok: true; mode: "standalone" | "sentinel" | "cluster"; url: string } | { ok: false; error: string } {
  const m = /^(redis|rediss|redis\+sentinel|rediss\+sentinel|redis\+cluster|rediss\+cluster):\/\/(.+)$/.exec(
    url,
  );
  if (!m) {
    return {
      ok: false,
      error: `must start with redis://, rediss://, redis+sentinel:// or redis+cluster:// (got "${redact(url)}")`,
    };
  }
  const scheme = m[1] ?? "";
  const mode = scheme.includes("sentinel")
    ? "sentinel"
    : scheme.includes("cluster")
      ? "cluster"
      : "standalone";
  if (mode === "sentinel" && !/\/[^/]+/.test(m[2]?.replace(/^[^@]*@/, "").replace(/^[^/]*/, "") ?? "")) {
    return { ok: false, error: "a redis+sentinel:// URL needs the master name as its path, e.g. /mymaster" };
  }
  return { ok: true, mode, url };
}

interface Parsed {
  tls: boolean;
  username?: string | undefined;
  password?: string | undefined;
  hosts: { host: string; port: number }[];
  path: string[];
}

function split(url: string): Parsed {
  const [, scheme = "", rest = ""] = /^([^:]+):\/\/(.*)$/.exec(url) ?? [];
  const at = rest.lastIndexOf("@");
  const auth = at >= 0 ? rest.slice(0, at) : "";
  const afterAuth = at >= 0 ? rest.slice(at + 1) : rest;
  const slash = afterAuth.indexOf("/");
  const hostPart = slash >= 0 ? afterAuth.slice(0, slash) : afterAuth;
  const path =
    slash >= 0
      ? afterAuth
          .slice(slash + 1)
          .split("/")
          .filter(Boolean)
      : [];
  const [user, pass] = auth.includes(":") ? auth.split(/:(.*)/s) : [undefined, auth || undefined];
  const hosts = hostPart.split(",").map((h) => {
    const i = h.lastIndexOf(":");
    return i > 0 ? { host: h.slice(0, i), port: Number(h.slice(i + 1)) } : { host: h, port: 6379 };
  });
  return {
    tls: scheme.startsWith("rediss"),
    username: user ? decodeURIComponent(user) : undefined,
    password: pass ? decodeURIComponent(pass) : undefined,
    hosts,
    path,
  };
}

export interface CreateRedisOptions {
  /** Name shown in Redis CLIENT LIST. */
  connectionName?: string;
  /** KEYGATE_REDIS_CA_FILE: the CA bundle that signs the servers' certificates (rediss:// URLs). */
  caFile?: string | undefined;
  /** KEYGATE_STORE_TIMEOUT_MS: one command's limit. Default 1000. */
  timeoutMs?: number | undefined;
}

/** Longest pause between reconnect attempts: Redis back means keygate back within this. */
export const RECONNECT_MAX_MS = 200;

/** 25, 50, … ms, never more than RECONNECT_MAX_MS: a refused connect is cheap, a slow comeback is not. */
export const reconnectDelay = (times: number) => Math.min(25 * Math.max(1, times), RECONNECT_MAX_MS);

/**
 * Opens a client. Commands fail fast while disconnected (no offline queue) so that a Redis
 * outage becomes STORE_UNAVAILABLE at once instead of piling up waiters; reconnects forever.
 * A hung server (no reply for half the timeout) costs the connection: every command in flight
 * fails at once and none is sent again after the reconnect (docs/decisions.md, "A hung store").
 */
export function createRedis(url: string, opts: CreateRedisOptions = {}): RedisClient {
  const client = openClient(url, opts);
  // Connection errors also fail the commands that meet them (STORE_UNAVAILABLE); without a
  // listener ioredis would print each reconnect attempt to stderr. Owners add their own (main.ts logs).
  client.on("error", () => undefined);
  return client;
}

function openClient(url: string, opts: CreateRedisOptions): RedisClient {
  const parsed = parseRedisUrl(url);
  if (!parsed.ok) throw new Error(`KEYGATE_REDIS_URL ${parsed.error}`);
  const p = split(url);
  const tls = p.tls ? (opts.caFile ? { ca: readFileSync(opts.caFile) } : {}) : undefined;
  const timeoutMs = opts.timeoutMs ?? 1_000;
  const common: RedisOptions = {
    connectionName: opts.connectionName ?? "keygate",
    enableOfflineQueue: false,
    // 0: a connection lost fails its commands instead of keeping them for the next one, where
    // they would wait a second timeout and run after the caller gave up.
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    // Commands issued in the same tick leave in one write and their replies come back in one
    // read: under load a replica's hundreds of small round trips become a few (docs/benchmarks.md).
    // Order per connection is kept; timeouts, the watchdog and the no-resend rule apply per command
    // as before (docs/decisions.md, "A hung or emptied store").
    enableAutoPipelining: true,
    connectTimeout: timeoutMs,
    commandTimeout: timeoutMs,
    // Also covers the ready check, which would otherwise wait forever on a stopped server.
    socketTimeout: Math.max(50, Math.floor(timeoutMs / 2)),
    retryStrategy: reconnectDelay,
    username: p.username,
    password: p.password,
    ...(tls ? { tls } : {}),
  };
  if (parsed.mode === "cluster") {
    return new Cluster(p.hosts, {
      redisOptions: common,
      enableOfflineQueue: false,
      enableAutoPipelining: true,
      clusterRetryStrategy: reconnectDelay,
    });
  }
  if (parsed.mode === "sentinel") {
    const [name = "mymaster", db] = p.path;
    return new Redis({
      ...common,
      sentinels: p.hosts,
      name,
      db: db ? Number(db) : 0,
      sentinelPassword: p.password,
      // rediss+sentinel://: TLS to the Sentinels as well as to the master they name.
      ...(tls ? { sentinelTLS: tls, enableTLSForSentinelMode: true } : {}),
    });
  }
  const first = p.hosts[0] ?? { host: "127.0.0.1", port: 6379 };
  return new Redis({ ...common, host: first.host, port: first.port, db: p.path[0] ? Number(p.path[0]) : 0 });
}

/** The URL with any password replaced, for logs and error messages. */
export function redact(url: string): string {
  return url.replace(
    /\/\/([^@/]*)@/,
    (_m, auth: string) => `//${auth.includes(":") ? auth.split(":")[0] + ":***" : "***"}@`,
  );
}
