import { accessSync, constants } from "node:fs";
import { CRASH_POINTS, type CrashPoint } from "../core/crash-point.js";
import { parseRedisUrl } from "../store/redis.js";
import { proxyUrlProblem, type ProxySettings } from "../upstream/proxy.js";

/** Everything keygate reads from its environment, validated once and frozen. */
export interface Settings {
  host: string;
  port: number;
  metricsPort: number;
  policyFile: string | undefined;
  redisUrl: string | undefined;
  /** KEYGATE_REDIS_CA_FILE: CA bundle trusted for rediss:// (and rediss+sentinel://, rediss+cluster://). */
  redisCaFile: string | undefined;
  credentials:
    | { kind: "static"; secretId: string; secretKey: string; token: string | undefined }
    | { kind: "oidc"; roleArn: string | undefined }
    | { kind: "none" };
  endpoint: string;
  upstreamUrl: string | undefined;
  /** HTTPS_PROXY, HTTP_PROXY, NO_PROXY (lower case wins): used for the cloud calls only. */
  proxy: ProxySettings;
  rateLimit: number;
  describeRateLimit: number;
  /** DescribeInstances policy lookups per second per tenant, cluster-wide (0 = no budget). */
  lookupRatePerTenant: number;
  /** Callers of one replica that may wait for the same instance; more get INSTANCE_BUSY at once. */
  maxInstanceWaiters: number;
  /** Lease waiters are woken by release notices; this is their re-check in case one was lost. */
  leaseRecheckMs: number;
  /** Extra width of the limiter's window over the cloud's 1000 ms, absorbing grant-to-arrival jitter. */
  rateMarginMs: number;
  logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  /** Longest a request may wait for a token or a lease when the caller sets no deadline. */
  maxWaitMs: number;
  /** Deadline applied to calls that carry none. */
  defaultDeadlineMs: number;
  maxQueue: number;
  upstreamTimeoutMs: number;
  taskMaxWaitMs: number;
  taskPollMs: number;
  /** Least ms between two partial merged DescribeInstances polls of one region on one replica (0 = no pacing). */
  describeMergeMs: number;
  /** Carry waiting callers' attempts in one cloud call (docs/decisions/batching.md). */
  batch: boolean;
  /** How long an attempt that would go at once waits for company; 0 = never. */
  batchLingerMs: number;
  drainMs: number;
  onStoreDown: "fail-closed" | "local-share";
  /** One Redis command's time limit; a connection silent for half of it is dropped (docs/decisions.md). */
  storeTimeoutMs: number;
  replicas: number;
  tls: { cert: string; key: string; clientCa: string | undefined } | undefined;
  /** Browser origins allowed to call the API port (CORS preflights answered); empty = CORS off. */
  corsOrigins: readonly string[];
  /** The source revision of this build (KEYGATE_BUILD_REVISION, set by the image build), if known. */
  buildRevision: string | undefined;
  /** Test only: SIGKILL this process when a request reaches this point. */
  testCrashAt: CrashPoint | undefined;
  /** Bounds on the API port, enforced before a request is parsed or authenticated (docs/decisions.md). */
  limits: {
    /** One request message, as received and after decompression. */
    maxRequestBytes: number;
    /** All request headers of one request (HTTP/1.1 header block, HTTP/2 header list). */
    maxHeaderBytes: number;
    maxConnections: number;
    maxStreamsPerConnection: number;
    /** A connection with no traffic at all for this long is closed. */
    idleTimeoutMs: number;
    /** First bytes and a complete header block must arrive within this. */
    headersTimeoutMs: number;
  };
}

type Env = Record<string, string | undefined>;

const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

/** Thrown with every problem found, so start-up can print them all at once. */
export class SettingsError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join("\n")}`);
    this.name = "SettingsError";
  }
}

/**
 * Reads the environment. `mode` "serve" requires a policy file and credentials; "dev" fills
 * both in itself. Never includes a secret value in a problem description.
 */
export function loadSettings(env: Env, mode: "serve" | "dev" = "serve"): Settings {
  const problems: string[] = [];
  const str = (name: string, def?: string): string | undefined => {
    const v = env[name];
    return v === undefined || v.trim() === "" ? def : v.trim();
  };
  const int = (name: string, def: number, min: number, max: number): number => {
    const raw = str(name);
    if (raw === undefined) return def;
    if (!/^\d+$/.test(raw)) {
      problems.push(`${name}="${raw}" is not a whole number (expected ${min}..${max})`);
      return def;
    }
    const n = Number(raw);
    if (n < min || n > max) problems.push(`${name}=${n} is out of range ${min}..${max}`);
    return n;
  };

  const host = str("KEYGATE_HOST", "0.0.0.0") ?? "0.0.0.0";
  const port = int("KEYGATE_PORT", 8080, 0, 65535);
  const metricsPort = int("KEYGATE_METRICS_PORT", 9090, 0, 65535);
  if (port !== 0 && port === metricsPort)
    problems.push(`KEYGATE_PORT and KEYGATE_METRICS_PORT are both ${port}`);

  const policyFile = str("KEYGATE_POLICY_FILE");
  if (mode === "serve" && policyFile === undefined) {
    problems.push("KEYGATE_POLICY_FILE is required: the path of the tenant policy YAML (see README)");
  }

  const redisUrl = str("KEYGATE_REDIS_URL");
  if (redisUrl !== undefined) {
    const parsed = parseRedisUrl(redisUrl);
    if (!parsed.ok) problems.push(`KEYGATE_REDIS_URL ${parsed.error}`);
  }
  const redisCaFile = str("KEYGATE_REDIS_CA_FILE");
  if (redisCaFile !== undefined) {
    if (redisUrl === undefined || !redisUrl.startsWith("rediss"))
      problems.push(
        "KEYGATE_REDIS_CA_FILE needs a TLS KEYGATE_REDIS_URL (rediss://, rediss+sentinel://, rediss+cluster://)",
      );
    try {
      accessSync(redisCaFile, constants.R_OK);
    } catch {
      problems.push(`KEYGATE_REDIS_CA_FILE="${redisCaFile}" cannot be read`);
    }
  }

  const credKind = str("KEYGATE_CREDENTIALS", "env");
  let credentials: Settings["credentials"] = { kind: "none" };
  if (credKind === "oidc") {
    credentials = { kind: "oidc", roleArn: str("TKE_ROLE_ARN") };
    for (const v of ["TKE_REGION", "TKE_PROVIDER_ID", "TKE_WEB_IDENTITY_TOKEN_FILE", "TKE_ROLE_ARN"]) {
      if (str(v) === undefined) problems.push(`KEYGATE_CREDENTIALS=oidc needs ${v} (TKE workload identity)`);
    }
  } else if (credKind === "env") {
    const secretId = str("TENCENTCLOUD_SECRET_ID");
    const secretKey = str("TENCENTCLOUD_SECRET_KEY");
    if (secretId && secretKey) {
      credentials = { kind: "static", secretId, secretKey, token: str("TENCENTCLOUD_SESSION_TOKEN") };
    } else if (mode === "serve") {
      problems.push(
        "TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY are required (or KEYGATE_CREDENTIALS=oidc for TKE workload identity)",
      );
    } else if (secretId || secretKey) {
      problems.push("set both TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY, or neither");
    }
  } else {
    problems.push(`KEYGATE_CREDENTIALS="${credKind}" must be "env" or "oidc"`);
  }

  const endpoint = str("KEYGATE_ENDPOINT", "cvm.tencentcloudapi.com") ?? "cvm.tencentcloudapi.com";
  if (!/^cvm(\.[a-z0-9-]+)*\.tencentcloudapi\.com$/.test(endpoint)) {
    problems.push(
      `KEYGATE_ENDPOINT="${endpoint}" must be a CVM API host such as cvm.tencentcloudapi.com or cvm.ap-guangzhou.tencentcloudapi.com (no scheme, no port)`,
    );
  }
  const upstreamUrl = str("KEYGATE_UPSTREAM_URL");
  if (upstreamUrl !== undefined) {
    let ok = false;
    try {
      const u = new URL(upstreamUrl);
      ok = (u.protocol === "http:" || u.protocol === "https:") && (u.pathname === "/" || u.pathname === "");
    } catch {
      ok = false;
    }
    if (!ok) problems.push(`KEYGATE_UPSTREAM_URL="${upstreamUrl}" must be http(s)://host:port with no path`);
  }

  // The usual spelling of proxy variables: either case, lower case first (as curl reads them).
  const either = (name: string) => str(name.toLowerCase()) ?? str(name);
  const proxy: ProxySettings = {
    httpsProxy: either("HTTPS_PROXY"),
    httpProxy: either("HTTP_PROXY"),
    noProxy: either("NO_PROXY"),
  };
  for (const [name, value] of [
    ["HTTPS_PROXY", proxy.httpsProxy],
    ["HTTP_PROXY", proxy.httpProxy],
  ] as const) {
    const problem = value === undefined ? undefined : proxyUrlProblem(value);
    if (problem) problems.push(`${name} ${problem}`);
  }

  const rateLimit = int("KEYGATE_RATE_LIMIT", 10, 1, 1000);
  const describeRateLimit = int("KEYGATE_DESCRIBE_RATE_LIMIT", 40, 1, 1000);
  const lookupRatePerTenant = int("KEYGATE_LOOKUP_RATE_PER_TENANT", 20, 0, 1000);
  const maxInstanceWaiters = int("KEYGATE_MAX_INSTANCE_WAITERS", 16, 1, 10_000);
  const leaseRecheckMs = int("KEYGATE_LEASE_RECHECK_MS", 2_000, 100, 60_000);
  const rateMarginMs = int("KEYGATE_RATE_MARGIN_MS", 40, 0, 1000);

  const logLevel = (str("KEYGATE_LOG_LEVEL", "info") ?? "info").toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) {
    problems.push(`KEYGATE_LOG_LEVEL="${logLevel}" must be one of ${LOG_LEVELS.join(", ")}`);
  }

  const maxWaitMs = int("KEYGATE_MAX_WAIT_MS", 30_000, 0, 600_000);
  const defaultDeadlineMs = int("KEYGATE_DEFAULT_DEADLINE_MS", 60_000, 1, 3_600_000);
  const maxQueue = int("KEYGATE_MAX_QUEUE", 1000, 1, 1_000_000);
  const upstreamTimeoutMs = int("KEYGATE_UPSTREAM_TIMEOUT_MS", 10_000, 100, 120_000);
  const taskMaxWaitMs = int("KEYGATE_TASK_MAX_WAIT_MS", 300_000, 1_000, 3_600_000);
  const taskPollMs = int("KEYGATE_TASK_POLL_MS", 500, 50, 60_000);
  const describeMergeMs = int("KEYGATE_DESCRIBE_MERGE_MS", 250, 0, 10_000);
  const drainMs = int("KEYGATE_DRAIN_MS", 20_000, 0, 600_000);
  const batchText = str("KEYGATE_BATCH", "on") ?? "on";
  if (batchText !== "on" && batchText !== "off") {
    problems.push(`KEYGATE_BATCH="${batchText}" must be "on" or "off"`);
  }
  const batchLingerMs = int("KEYGATE_BATCH_LINGER_MS", 0, 0, 1_000);

  const onStoreDown = str("KEYGATE_ON_STORE_DOWN", "fail-closed");
  if (onStoreDown !== "fail-closed" && onStoreDown !== "local-share") {
    problems.push(`KEYGATE_ON_STORE_DOWN="${onStoreDown}" must be "fail-closed" or "local-share"`);
  }
  const replicas = int("KEYGATE_REPLICAS", 1, 1, 1000);
  const storeTimeoutMs = int("KEYGATE_STORE_TIMEOUT_MS", 1_000, 100, 60_000);

  const cert = str("KEYGATE_TLS_CERT");
  const key = str("KEYGATE_TLS_KEY");
  const clientCa = str("KEYGATE_TLS_CLIENT_CA");
  if ((cert === undefined) !== (key === undefined))
    problems.push("set both KEYGATE_TLS_CERT and KEYGATE_TLS_KEY, or neither");
  if (clientCa !== undefined && cert === undefined)
    problems.push("KEYGATE_TLS_CLIENT_CA needs KEYGATE_TLS_CERT and KEYGATE_TLS_KEY");

  const corsOrigins = parseCorsOrigins(str("KEYGATE_CORS_ORIGINS"), problems);
  const buildRevision = buildRevisionFrom(env);
  if (buildRevision === null)
    problems.push(
      "KEYGATE_BUILD_REVISION must be 1..64 characters of A-Z a-z 0-9 . _ - (a git revision or tag)",
    );

  const testCrashAt = str("KEYGATE_TEST_CRASH_AT");
  if (testCrashAt !== undefined && !(CRASH_POINTS as readonly string[]).includes(testCrashAt)) {
    problems.push(`KEYGATE_TEST_CRASH_AT="${testCrashAt}" must be one of ${CRASH_POINTS.join(", ")}`);
  }
  const limits = {
    maxRequestBytes: int("KEYGATE_MAX_REQUEST_BYTES", 65_536, 1_024, 4_194_304),
    maxHeaderBytes: int("KEYGATE_MAX_HEADER_BYTES", 16_384, 1_024, 65_536),
    maxConnections: int("KEYGATE_MAX_CONNECTIONS", 1_000, 1, 100_000),
    maxStreamsPerConnection: int("KEYGATE_MAX_STREAMS_PER_CONNECTION", 100, 1, 1_000),
    idleTimeoutMs: int("KEYGATE_IDLE_TIMEOUT_MS", 20_000, 500, 600_000),
    headersTimeoutMs: int("KEYGATE_HEADERS_TIMEOUT_MS", 10_000, 500, 60_000),
  };

  if (problems.length > 0) throw new SettingsError(problems);
  return Object.freeze({
    host,
    port,
    metricsPort,
    policyFile,
    redisUrl,
    redisCaFile,
    credentials,
    endpoint,
    upstreamUrl,
    proxy: Object.freeze(proxy),
    rateLimit,
    describeRateLimit,
    lookupRatePerTenant,
    maxInstanceWaiters,
    leaseRecheckMs,
    rateMarginMs,
    logLevel: logLevel as Settings["logLevel"],
    maxWaitMs,
    defaultDeadlineMs,
    maxQueue,
    upstreamTimeoutMs,
    taskMaxWaitMs,
    taskPollMs,
    describeMergeMs,
    batch: batchText !== "off",
    batchLingerMs,
    drainMs,
    onStoreDown: onStoreDown as Settings["onStoreDown"],
    storeTimeoutMs,
    replicas,
    tls: cert && key ? { cert, key, clientCa } : undefined,
    corsOrigins: Object.freeze(corsOrigins),
    buildRevision: buildRevision ?? undefined,
    testCrashAt: testCrashAt as CrashPoint | undefined,
    limits: Object.freeze(limits),
  });
}

/**
 * The build's source revision, for `keygate --version` and keygate_build_info: undefined when not
 * set, null when set to something that is not a plain revision or tag.
 */
export function buildRevisionFrom(env: Env): string | undefined | null {
  const raw = env.KEYGATE_BUILD_REVISION?.trim();
  if (raw === undefined || raw === "") return undefined;
  return /^[A-Za-z0-9._-]{1,64}$/.test(raw) ? raw : null;
}

/**
 * KEYGATE_CORS_ORIGINS: a comma-separated list of exact origins (scheme://host[:port]), or "*" alone.
 * Empty or unset: CORS is off and preflights are refused.
 */
function parseCorsOrigins(raw: string | undefined, problems: string[]): string[] {
  if (raw === undefined) return [];
  const origins = raw
    .split(",")
    .map((o) => o.trim())
    .filter((o) => o !== "");
  if (origins.includes("*")) {
    if (origins.length > 1)
      problems.push('KEYGATE_CORS_ORIGINS: "*" allows every origin and cannot be combined with others');
    return ["*"];
  }
  for (const o of origins) {
    let ok = false;
    try {
      const u = new URL(o);
      ok = (u.protocol === "http:" || u.protocol === "https:") && u.origin === o;
    } catch {
      ok = false;
    }
    if (!ok)
      problems.push(
        `KEYGATE_CORS_ORIGINS: "${o.slice(0, 100)}" is not an origin: write scheme://host[:port] with no path or trailing slash, e.g. https://console.example.com`,
      );
  }
  return origins;
}
