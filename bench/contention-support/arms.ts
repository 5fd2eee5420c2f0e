/** The two ways the same callers reach the cloud: through keygate replicas, or straight with the SDK. */
import { Writable } from "node:stream";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { loadSettings } from "../../src/config/settings.js";
import { isKeygateError } from "../../src/core/errors.js";
import { ErrorDetailSchema, KeyPairService } from "../../src/gen/keygate/v1/keygate_pb.js";
import { createApp, type App } from "../../src/main.js";
import { createLogger } from "../../src/observability/logger.js";
import { EMULATOR_SECRET_ID, EMULATOR_SECRET_KEY, type Emulator } from "../../src/upstream/emulator/index.js";
import { createTencentUpstream } from "../../src/upstream/tencent-upstream.js";
import { BENCH_TOKEN, keyId, REGION } from "./fixture.js";
import type { CallFn } from "./load.js";

/** Warnings and errors of the replicas, kept for the end of the run (info lines are dropped). */
export class LogSink extends Writable {
  readonly lines: string[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    for (const l of chunk.toString("utf8").split("\n")) if (l.trim() !== "") this.lines.push(l);
    cb();
  }
}

export interface Replica {
  app: App;
  url: string;
}

/** One keygate replica in this process, sharing `redisUrl` with the others, default settings otherwise. */
export async function startReplica(
  emulator: Emulator,
  redisUrl: string,
  policyText: string,
  logs: LogSink,
): Promise<Replica> {
  const settings = loadSettings(
    {
      KEYGATE_HOST: "127.0.0.1",
      KEYGATE_PORT: "0",
      KEYGATE_METRICS_PORT: "0",
      KEYGATE_LOG_LEVEL: "warn",
      KEYGATE_REDIS_URL: redisUrl,
      KEYGATE_UPSTREAM_URL: emulator.url,
      TENCENTCLOUD_SECRET_ID: EMULATOR_SECRET_ID,
      TENCENTCLOUD_SECRET_KEY: EMULATOR_SECRET_KEY,
    },
    // "dev" only because the policy comes as text instead of KEYGATE_POLICY_FILE; the rest is `serve`.
    "dev",
  );
  const app = await createApp({
    settings,
    logger: createLogger(settings.logLevel, logs),
    policyText: { text: policyText, source: "bench" },
    defaultMetrics: false,
  });
  const { api } = await app.start();
  return { app, url: `http://127.0.0.1:${api.port}` };
}

/** Callers spread over the replicas round-robin, each with its own gRPC (HTTP/2) connection per replica. */
export function keygateArm(replicas: Replica[]): CallFn {
  const clients = replicas.map((r) => createClient(KeyPairService, createGrpcTransport({ baseUrl: r.url })));
  return async (caller, instanceId, deadlineMs) => {
    const client = clients[caller % clients.length];
    if (!client) throw new Error("no replica");
    try {
      await client.associateKeyPairs(
        { region: REGION, instanceIds: [instanceId], keyIds: [keyId(caller + 1)] },
        { headers: { authorization: `Bearer ${BENCH_TOKEN}` }, timeoutMs: deadlineMs },
      );
      return "OK";
    } catch (e) {
      const err = ConnectError.from(e);
      const reason = err.findDetails(ErrorDetailSchema)[0]?.reason;
      return reason || Code[err.code];
    }
  };
}

/** The naive client: the official SDK straight to the cloud, one call, its error returned as is. */
export function directArm(emulator: Emulator): { call: CallFn; close(): void } {
  const upstream = createTencentUpstream({
    upstreamUrl: emulator.url,
    credential: { secretId: EMULATOR_SECRET_ID, secretKey: EMULATOR_SECRET_KEY },
  });
  const call: CallFn = async (caller, instanceId, deadlineMs) => {
    try {
      await upstream.associateInstancesKeyPairs(
        { region: REGION, instanceIds: [instanceId], keyIds: [keyId(caller + 1)], forceStop: false },
        { signal: AbortSignal.timeout(deadlineMs), deadline: Date.now() + deadlineMs },
      );
      return "OK";
    } catch (e) {
      if (isKeygateError(e)) return e.upstreamCode ?? e.reason;
      throw e;
    }
  };
  return { call, close: () => upstream.close() };
}
