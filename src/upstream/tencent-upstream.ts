import tencentcloud from "tencentcloud-sdk-nodejs-cvm";
import { systemClock, type Clock } from "../core/clock.js";
import { keygateError, Reason } from "../core/errors.js";
import type { AssociateInput } from "../core/model.js";
import { type CallOptions, pastSendBy, type Upstream, type UpstreamSendOptions } from "../core/ports.js";
import type { CloudCredential, CredentialProvider } from "./credentials.js";
import { parseInstanceSet } from "./parse-instances.js";
import type { ProxySettings } from "./proxy.js";
import { createUpstreamRoute } from "./redirect-agent.js";
import { gateAgent } from "./send-gate.js";
import { CREDENTIAL_FAILURE_PREFIX, redactSecrets, toKeygateError, type LocalAbort } from "./sdk-errors.js";

export {
  createCredentialProvider,
  credentialIdentity,
  secretIdentity,
  type CloudCredential,
  type CredentialProvider,
  type CredentialSettings,
} from "./credentials.js";

const CvmClient = tencentcloud.cvm.v20170312.Client;
type CvmClientType = InstanceType<typeof CvmClient>;

export const DEFAULT_ENDPOINT = "cvm.tencentcloudapi.com";
const MAX_DESCRIBE_IDS = 100;

export interface TencentUpstreamOptions {
  /** The host signed for and sent as `Host` (KEYGATE_ENDPOINT); its first label is the service. */
  endpoint?: string;
  /** Where to connect instead (KEYGATE_UPSTREAM_URL): http://127.0.0.1:PORT, https://proxy:PORT. */
  upstreamUrl?: string | undefined;
  credential: CredentialProvider | CloudCredential;
  /** Used when a call names no region. */
  defaultRegion?: string | undefined;
  /** Longest wait for one answer. Default 10 s; never longer than the caller's deadline. */
  reqTimeoutMs?: number;
  clock?: Clock;
  /** Keep connections open between calls (default true). */
  keepAlive?: boolean;
  /** HTTPS_PROXY/HTTP_PROXY/NO_PROXY (src/upstream/proxy.ts); none = direct. */
  proxy?: ProxySettings | undefined;
  /**
   * Each answered call's round trip, from the moment its request was written to its answer
   * (ms): what the adaptive margin learns the path's jitter from (src/limiter/margin.ts).
   */
  onRoundTrip?: (ms: number) => void;
}

/** The SDK-facing upstream plus a way to release its sockets. */
export interface TencentUpstream extends Upstream {
  close(): void;
}

function isProvider(c: CredentialProvider | CloudCredential): c is CredentialProvider {
  return typeof (c as { getCredential?: unknown }).getCredential === "function";
}

/**
 * The cloud through the official SDK (`cvm.v20170312.Client`). Every failure becomes a
 * KeygateError; nothing is retried or rate-limited here (the orchestration owns both, so retries
 * spend tokens like first attempts).
 */
export function createTencentUpstream(options: TencentUpstreamOptions): TencentUpstream {
  const endpoint = options.endpoint ?? DEFAULT_ENDPOINT;
  const clock = options.clock ?? systemClock;
  const reqTimeoutMs = options.reqTimeoutMs ?? 10_000;
  const route = createUpstreamRoute(
    options.upstreamUrl,
    options.keepAlive ?? true,
    options.proxy && { settings: options.proxy, endpoint },
  );
  // Every request the SDK makes passes the send gate of its call at the socket (send-gate.ts).
  const gated = gateAgent(route.agent);
  const agent = gated.agent;
  const source = options.credential;
  // Secrets handed to the SDK recently, scrubbed from any error text (G6).
  const secrets = new Set<string>();
  const remember = (c: CloudCredential) => {
    if (secrets.size > 16) secrets.clear();
    secrets.add(c.secretKey);
    if (c.token) secrets.add(c.token);
  };
  if (!isProvider(source)) remember(source);

  const sdkCredential = {
    getCredential: async () => {
      let c: CloudCredential;
      try {
        c = isProvider(source) ? await source.getCredential() : source;
      } catch (e) {
        const why = e instanceof Error ? e.message : String(e);
        throw new Error(CREDENTIAL_FAILURE_PREFIX + redactSecrets(why, [...secrets]).slice(0, 200));
      }
      remember(c);
      return { secretId: c.secretId, secretKey: c.secretKey, token: c.token };
    },
  };

  const clients = new Map<string, CvmClientType>();
  const clientFor = (region: string): CvmClientType => {
    let client = clients.get(region);
    if (!client) {
      client = new CvmClient({
        credential: sdkCredential,
        region,
        profile: {
          httpProfile: {
            endpoint,
            protocol: route.protocol,
            agent,
            // A backstop only: keygate's own timer (below) aborts first and knows why.
            reqTimeout: Math.ceil(reqTimeoutMs / 1000) + 5,
          },
        },
      });
      clients.set(region, client);
    }
    return client;
  };

  const call = async (
    action: string,
    region: string,
    params: Record<string, unknown>,
    opts: CallOptions & UpstreamSendOptions,
  ): Promise<Record<string, unknown>> => {
    const regionToUse = region || options.defaultRegion || "";
    const pastDeadline = () => opts.deadline !== undefined && clock.now() >= opts.deadline;
    const callerAbortKind = (): LocalAbort =>
      pastDeadline() || (opts.signal.reason as { name?: unknown } | undefined)?.name === "TimeoutError"
        ? "caller-deadline"
        : "caller-cancelled";
    if (opts.signal.aborted) {
      throw callerAbortKind() === "caller-deadline"
        ? keygateError(Reason.DEADLINE_EXCEEDED, `${action} was not sent: the caller's deadline had passed`)
        : keygateError(Reason.CANCELLED, `${action} was not sent: the caller went away`);
    }
    const remaining = opts.deadline === undefined ? Infinity : opts.deadline - clock.now();
    if (remaining <= 0) {
      throw keygateError(
        Reason.DEADLINE_EXCEEDED,
        `${action} was not sent: the caller's deadline had passed`,
      );
    }
    const boundByDeadline = remaining < reqTimeoutMs;
    const controller = new AbortController();
    let aborted: LocalAbort;
    const onCallerAbort = () => {
      aborted ??= callerAbortKind();
      controller.abort();
    };
    opts.signal.addEventListener("abort", onCallerAbort, { once: true });
    const cancelTimer = clock.timer(Math.min(reqTimeoutMs, remaining), () => {
      aborted ??= boundByDeadline ? "caller-deadline" : "timeout";
      controller.abort();
    });
    // The grant's last check, at the socket: a request that would leave after `sendBy` is not
    // written at all (SEND_TOO_LATE, the orchestration takes a new grant); one that leaves is
    // reported to the limiter with its real departure time.
    const grant = opts.grant;
    let leftAt: number | undefined;
    let tooLateAt: number | undefined;
    const gate = {
      pass: (): boolean => {
        const now = clock.now();
        if (grant && pastSendBy(grant, now)) {
          tooLateAt = now;
          return false;
        }
        leftAt = now;
        grant?.sent?.(now);
        return true;
      },
    };
    const opened = gated.open(gate);
    try {
      const response: unknown = await clientFor(regionToUse).request(action, params, {
        signal: controller.signal,
        headers: opened.headers,
      });
      if (leftAt !== undefined) options.onRoundTrip?.(clock.now() - leftAt);
      if (typeof response !== "object" || response === null) {
        throw keygateError(
          Reason.UPSTREAM_BAD_RESPONSE,
          `${action}: the cloud API answered an empty Response`,
        );
      }
      return response as Record<string, unknown>;
    } catch (e) {
      if (tooLateAt !== undefined && leftAt === undefined) {
        grant?.notSent?.(tooLateAt);
        throw keygateError(
          Reason.SEND_TOO_LATE,
          `${action} was not sent: it would have left ${Math.ceil(tooLateAt - (grant?.sendBy ?? tooLateAt))} ms after its grant allowed`,
        );
      }
      const mapped = toKeygateError(e, { action, aborted, secrets: [...secrets] });
      if (leftAt !== undefined && mapped.upstreamCode !== undefined) {
        options.onRoundTrip?.(clock.now() - leftAt);
      }
      throw mapped;
    } finally {
      opened.close();
      cancelTimer();
      opts.signal.removeEventListener("abort", onCallerAbort);
    }
  };

  const requestIdOf = (action: string, response: Record<string, unknown>): string => {
    const id = response.RequestId;
    if (typeof id !== "string" || id === "") {
      throw keygateError(
        Reason.UPSTREAM_BAD_RESPONSE,
        `${action}: the cloud API answered without a RequestId`,
      );
    }
    return id;
  };

  return {
    async associateInstancesKeyPairs(input: AssociateInput, opts: CallOptions & UpstreamSendOptions) {
      const action = "AssociateInstancesKeyPairs";
      const response = await call(
        action,
        input.region,
        { InstanceIds: input.instanceIds, KeyIds: input.keyIds, ForceStop: input.forceStop },
        opts,
      );
      return { requestId: requestIdOf(action, response) };
    },
    async describeInstances(region: string, instanceIds: string[], opts: CallOptions & UpstreamSendOptions) {
      const action = "DescribeInstances";
      if (instanceIds.length === 0) return { requestId: "", instances: [] };
      if (instanceIds.length > MAX_DESCRIBE_IDS) {
        throw keygateError(Reason.INTERNAL, `${action} takes at most ${MAX_DESCRIBE_IDS} ids per call`);
      }
      const response = await call(
        action,
        region,
        { InstanceIds: instanceIds, Limit: MAX_DESCRIBE_IDS },
        opts,
      );
      return { requestId: requestIdOf(action, response), instances: parseInstanceSet(response) };
    },
    close() {
      agent.destroy();
      clients.clear();
    },
  };
}
