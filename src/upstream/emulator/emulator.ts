import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { systemClock, type Clock } from "../../core/clock.js";
import {
  associateInstancesKeyPairs,
  describeInstances,
  type ActionContext,
  type ForceStopReading,
} from "./actions.js";
import { ApiError } from "./api-error.js";
import {
  createFaults,
  FAULT_CODES,
  isBusyCode,
  type FaultKind,
  type FaultRule,
  type Faults,
} from "./faults.js";
import {
  createInventory,
  defaultInventory,
  loadInventoryFile,
  type Inventory,
  type InventorySpec,
} from "./inventory.js";
import { hostWithoutPort, parseAuthorization, verifyTc3, type EmulatorSecret } from "./signature.js";
import { createSlidingWindowLimiter } from "./sliding-window.js";
import { createStats, type Arrival, type EmulatorStats } from "./stats.js";

/** The dev credential the emulator accepts out of the box (`keygate dev` signs with it). */
export const EMULATOR_SECRET_ID = "AKIDKEYGATEEMULATOR";
/** Not a secret: a fixed dev value so the emulator works with no configuration. */
export const EMULATOR_SECRET_KEY = "keygate-emulator-dev-secret-key-not-secret";

export const EMULATOR_VERSION = "2017-03-12";
const ADMIN_PREFIX = "/__emulator/";
/** Faults that let the action run and then spoil (or hold back) its reply, or hold the request. */
const REPLY_FAULTS: ReadonlySet<FaultKind> = new Set([
  "lostReply",
  "lateReply",
  "lateApply",
  "stallBody",
  "taskFailed",
]);
/** The codes "someone in the console" can leave an instance busy with. */
export const BUSY_CODES = [
  "MutexOperation.TaskRunning",
  "OperationDenied.InstanceOperationInProgress",
] as const;
export type BusyCode = (typeof BUSY_CODES)[number];
const MAX_BODY = 1024 * 1024;

export interface EmulatorOptions {
  /** 0 (default) = any free port. */
  port?: number;
  host?: string;
  /** SecretId → SecretKey (or key + session token). Default: the one dev pair above. */
  credentials?: Record<string, string | EmulatorSecret>;
  /** How long a cloud task keeps an instance OPERATING. Default 1500 ms. */
  taskMs?: number;
  /** AssociateInstancesKeyPairs per (SecretId, endpoint, sliding window). Default 10. */
  associateLimit?: number;
  /** DescribeInstances per (SecretId, endpoint, sliding window). Default 40. */
  describeLimit?: number;
  /** Any other action. Default 20. */
  otherLimit?: number;
  windowMs?: number;
  inventory?: InventorySpec;
  /** JSON or YAML inventory; wins over `inventory`. */
  inventoryFile?: string;
  clock?: Clock;
  /** For deterministic probabilistic faults and jitter. */
  random?: () => number;
  /** Accepted difference between X-TC-Timestamp and the emulator clock. Default 5 minutes. */
  maxSkewMs?: number;
  /** Which reading of `ForceStop` the emulated cloud follows (docs/decisions/force-stop.md). */
  forceStopReading?: ForceStopReading;
  /**
   * After an AssociateInstancesKeyPairs task ended, the action keeps answering
   * `MutexOperation.TaskRunning` this long while DescribeInstances already shows the instance
   * idle (the two views lagging). Default 0.
   */
  busyLagMs?: number;
}

export interface Emulator {
  /** http://host:port — give it to keygate as KEYGATE_UPSTREAM_URL. */
  readonly url: string;
  readonly port: number;
  readonly inventory: Inventory;
  readonly stats: EmulatorStats;
  readonly faults: Faults;
  /** "Someone in the console": the instances are OPERATING for `ms`, other operations get `code`. */
  markBusy(
    instanceIds: string[],
    ms: number,
    opts?: {
      code?: BusyCode;
      operation?: string;
      /** Set = the task ends FAILED with this message. */
      fails?: string;
    },
  ): void;
  /** The instance passes into `state` now, and (with `forMs`) on to `then` by itself (see Inventory). */
  setState(instanceId: string, state: string, opts?: { forMs?: number; then?: string }): void;
  /** Inventory, stats, faults and rate windows back to the start. */
  reset(): void;
  close(): Promise<void>;
}

type Outcome =
  | { kind: "json"; status: number; body: string; code: string }
  | { kind: "raw"; status: number; body: string; contentType: string; code: string }
  | { kind: "hang" };

function header(req: IncomingMessage, name: string): string {
  const v = req.headers[name];
  return (Array.isArray(v) ? v[0] : v) ?? "";
}

async function readBody(req: IncomingMessage): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

/**
 * Starts the CVM emulator: a real HTTP server speaking Tencent Cloud API 3.0 for
 * AssociateInstancesKeyPairs and DescribeInstances, with signatures, limits, tasks and faults.
 *
 * Order per request: arrival recorded → signature → rate limit (every authenticated arrival
 * counts, rejected or not) → injected fault → action. Transport faults therefore happen after the
 * request was counted, like a cloud that received it and then failed.
 */
export async function createEmulator(options: EmulatorOptions = {}): Promise<Emulator> {
  const clock = options.clock ?? systemClock;
  const taskMs = options.taskMs ?? 1500;
  const windowMs = options.windowMs ?? 1000;
  const maxSkewMs = options.maxSkewMs ?? 5 * 60_000;
  const secrets = new Map<string, EmulatorSecret>(
    Object.entries(options.credentials ?? { [EMULATOR_SECRET_ID]: EMULATOR_SECRET_KEY }).map(([id, s]) => [
      id,
      typeof s === "string" ? { secretKey: s } : s,
    ]),
  );
  const spec = options.inventoryFile
    ? loadInventoryFile(options.inventoryFile)
    : (options.inventory ?? defaultInventory());
  const inventory = createInventory(spec, clock);
  const stats = createStats();
  /** Aborts held requests (`lateApply`, `lateReply`) when the emulator closes. */
  const closing = new AbortController();
  const faults = createFaults(options.random);
  const limiters = {
    AssociateInstancesKeyPairs: createSlidingWindowLimiter({ limit: options.associateLimit ?? 10, windowMs }),
    DescribeInstances: createSlidingWindowLimiter({ limit: options.describeLimit ?? 40, windowMs }),
    other: createSlidingWindowLimiter({ limit: options.otherLimit ?? 20, windowMs }),
  };
  const actions: Record<string, (ctx: ActionContext, body: Record<string, unknown>) => object> = {
    AssociateInstancesKeyPairs: associateInstancesKeyPairs,
    DescribeInstances: describeInstances,
  };

  const envelope = (requestId: string, payload: object, status = 200, code = "OK"): Outcome => ({
    kind: "json",
    status,
    body: JSON.stringify({ Response: { ...payload, RequestId: requestId } }),
    code,
  });
  const errorEnvelope = (requestId: string, e: ApiError): Outcome =>
    envelope(requestId, { Error: { Code: e.code, Message: e.message } }, 200, e.code);

  const transportFault = (rule: FaultRule, requestId: string): Outcome | undefined => {
    const { kind } = rule;
    switch (kind) {
      case "http500":
      case "http503": {
        const status = kind === "http500" ? 500 : 503;
        const body = `<html><body><h1>${status}</h1>emulated gateway error</body></html>`;
        return { kind: "raw", status, body, contentType: "text/html", code: `HTTP${status}` };
      }
      case "hang":
        return { kind: "hang" };
      case "nonJson":
        return {
          kind: "raw",
          status: 200,
          body: "<html>not json</html>",
          contentType: "text/html",
          code: "NON_JSON",
        };
      case "noResponse":
        return {
          kind: "raw",
          status: 200,
          body: JSON.stringify({ RequestId: requestId, Data: {} }),
          contentType: "application/json",
          code: "NO_RESPONSE",
        };
      case "code": {
        const code = rule.code ?? "InternalError";
        return errorEnvelope(requestId, new ApiError(code, rule.message ?? `Injected fault: ${code}.`));
      }
      default: {
        const code = FAULT_CODES[kind];
        return code ? errorEnvelope(requestId, new ApiError(code, `Injected fault: ${code}.`)) : undefined;
      }
    }
  };

  /** Instance ids named by a request body, best effort (for the per-instance counters). */
  const instanceIdsOf = (body: Buffer): string[] => {
    try {
      const ids = (JSON.parse(body.toString("utf8")) as { InstanceIds?: unknown }).InstanceIds;
      return Array.isArray(ids) ? [...new Set(ids.filter((x): x is string => typeof x === "string"))] : [];
    } catch {
      return [];
    }
  };

  /**
   * At arrival, synchronously so the arrival time is exact: signature, rate limit, fault choice.
   * Returns the answer when it is already decided, or the fault the action then runs under.
   */
  const admit = (
    req: IncomingMessage,
    body: Buffer,
    arrival: Arrival,
  ): { out: Outcome } | { rule: FaultRule | undefined } => {
    const { requestId } = arrival;
    try {
      if (req.method !== "POST" || (req.url ?? "/") !== "/") {
        throw new ApiError("InvalidRequest", "Only POST / with a JSON body is emulated.");
      }
      if (arrival.action === "") {
        throw new ApiError("MissingParameter", "The request is missing a required parameter `Action`.");
      }
      const verified = verifyTc3({
        headers: req.headers,
        body,
        nowMs: arrival.at,
        secrets,
        service: "cvm",
        maxSkewMs,
      });
      const limiter =
        arrival.action === "AssociateInstancesKeyPairs" || arrival.action === "DescribeInstances"
          ? limiters[arrival.action]
          : limiters.other;
      // Per credential and access endpoint (the signed host): docs/upstream-facts.md.
      const endpoint = hostWithoutPort(arrival.host).toLowerCase();
      if (!limiter.admit(`${verified.secretId}\n${endpoint}\n${arrival.action}`, arrival.at)) {
        throw new ApiError(
          "RequestLimitExceeded",
          "Your current request times exceeds the limit. Please try again later.",
        );
      }
      const rule = faults.pick(arrival.action, instanceIdsOf(body));
      if (rule !== undefined && !REPLY_FAULTS.has(rule.kind)) {
        const out = transportFault(rule, requestId);
        if (out) {
          if (
            out.kind === "json" &&
            isBusyCode(out.code) &&
            arrival.action === "AssociateInstancesKeyPairs"
          ) {
            stats.recordBusy(instanceIdsOf(body), true);
          }
          return { out };
        }
      }
      return { rule };
    } catch (e) {
      return { out: apiFailure(requestId, e) };
    }
  };

  /** The action itself (at arrival, or later for `lateApply`); applies are counted here. */
  const act = (
    req: IncomingMessage,
    body: Buffer,
    arrival: Arrival,
    rule: FaultRule | undefined,
  ): Outcome => {
    const { requestId } = arrival;
    try {
      const version = header(req, "x-tc-version");
      if (version === "")
        throw new ApiError("MissingParameter", "The request is missing a required parameter `Version`.");
      if (version !== EMULATOR_VERSION)
        throw new ApiError("NoSuchVersion", `The version \`${version}\` does not exist.`);
      const handler = actions[arrival.action];
      if (!handler) throw new ApiError("InvalidAction", `The action \`${arrival.action}\` is not emulated.`);
      let params: unknown;
      try {
        params = body.length === 0 ? {} : JSON.parse(body.toString("utf8"));
      } catch {
        throw new ApiError("InvalidParameter", "The request body is not valid JSON.");
      }
      if (typeof params !== "object" || params === null || Array.isArray(params)) {
        throw new ApiError("InvalidParameter", "The request body must be a JSON object.");
      }
      const p = params as Record<string, unknown>;
      let result: object;
      const forcedStops: string[] = [];
      try {
        result = handler(
          {
            inventory,
            region: arrival.region,
            requestId,
            taskMs,
            forceStopReading: options.forceStopReading ?? "stopped-only",
            taskFails:
              rule?.kind === "taskFailed" ? (rule.message ?? "Injected fault: the task failed.") : undefined,
            busyLagMs: options.busyLagMs ?? 0,
            forcedStops,
          },
          p,
        );
      } catch (e) {
        if (e instanceof ApiError && isBusyCode(e.code) && arrival.action === "AssociateInstancesKeyPairs") {
          stats.recordBusy(instanceIdsOf(body), false);
        }
        throw e;
      }
      if (arrival.action === "AssociateInstancesKeyPairs") {
        const strings = (v: unknown) =>
          Array.isArray(v) ? [...new Set(v.filter((x): x is string => typeof x === "string"))] : [];
        stats.recordApply({
          at: clock.now(),
          requestId,
          instanceIds: strings(p.InstanceIds),
          keyIds: strings(p.KeyIds),
          forceStop: p.ForceStop === true,
          forcedStops,
        });
      }
      return envelope(requestId, result);
    } catch (e) {
      return apiFailure(requestId, e);
    }
  };

  const apiFailure = (requestId: string, e: unknown): Outcome =>
    errorEnvelope(
      requestId,
      e instanceof ApiError ? e : new ApiError("InternalError", "Emulator internal error."),
    );

  const sendJson = (res: ServerResponse, status: number, value: unknown) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(value));
  };

  const admin = (req: IncomingMessage, res: ServerResponse, path: string, body: Buffer) => {
    const input = (): Record<string, unknown> => {
      const v: unknown = body.length === 0 ? {} : JSON.parse(body.toString("utf8"));
      if (typeof v !== "object" || v === null || Array.isArray(v))
        throw new Error("body must be a JSON object");
      return v as Record<string, unknown>;
    };
    try {
      if (req.method === "GET" && path === "stats") {
        return sendJson(res, 200, {
          arrivals: stats.arrivals,
          outcomes: stats.outcomes(),
          applies: stats.applies,
          instances: stats.perInstance(),
          maxInWindow: {
            AssociateInstancesKeyPairs: stats.maxInWindow({ action: "AssociateInstancesKeyPairs" }, windowMs),
            DescribeInstances: stats.maxInWindow({ action: "DescribeInstances" }, windowMs),
          },
        });
      }
      if (req.method === "GET" && path === "faults") return sendJson(res, 200, faults.get());
      if (req.method === "POST" && path === "faults") {
        faults.set(input());
        return sendJson(res, 200, faults.get());
      }
      if (req.method === "GET" && path === "instances") return sendJson(res, 200, inventory.all());
      if (req.method === "POST" && path === "busy") {
        const b = input();
        const ids = b.instanceIds;
        if (!Array.isArray(ids) || !ids.every((x) => typeof x === "string") || typeof b.ms !== "number") {
          throw new Error('expected {"instanceIds": [..], "ms": N, "code"?: ".."}');
        }
        if (b.code !== undefined && !BUSY_CODES.includes(b.code as BusyCode)) {
          throw new Error(
            `unknown busy code ${JSON.stringify(b.code).slice(0, 100)}: expected one of ${BUSY_CODES.join(", ")}; ` +
              `inject any other code with POST ${ADMIN_PREFIX}faults {"rules":[{"kind":"code","code":".."}]}`,
          );
        }
        if (b.fails !== undefined && typeof b.fails !== "string") throw new Error('"fails" must be a string');
        emulator.markBusy(ids, b.ms, {
          code: (b.code as BusyCode | undefined) ?? "MutexOperation.TaskRunning",
          ...(b.fails === undefined ? {} : { fails: b.fails }),
        });
        return sendJson(res, 200, { ok: true });
      }
      if (req.method === "POST" && path === "state") {
        const b = input();
        const forMs = b.forMs;
        if (
          typeof b.instanceId !== "string" ||
          typeof b.state !== "string" ||
          (forMs !== undefined && (typeof forMs !== "number" || !Number.isFinite(forMs) || forMs < 0)) ||
          (b.then !== undefined && typeof b.then !== "string")
        ) {
          throw new Error('expected {"instanceId": "..", "state": "..", "forMs"?: N, "then"?: ".."}');
        }
        emulator.setState(b.instanceId, b.state, {
          ...(forMs === undefined ? {} : { forMs }),
          ...(b.then === undefined ? {} : { then: b.then }),
        });
        return sendJson(res, 200, { ok: true });
      }
      if (req.method === "POST" && path === "reset") {
        emulator.reset();
        return sendJson(res, 200, { ok: true });
      }
      return sendJson(res, 404, { error: `no admin route ${req.method ?? ""} ${ADMIN_PREFIX}${path}` });
    } catch (e) {
      return sendJson(res, 400, { error: e instanceof Error ? e.message : String(e) });
    }
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const body = await readBody(req);
    const url = req.url ?? "/";
    if (url.startsWith(ADMIN_PREFIX)) {
      admin(req, res, url.slice(ADMIN_PREFIX.length).split("?")[0] ?? "", body ?? Buffer.alloc(0));
      return;
    }
    const requestId = randomUUID();
    const arrival = stats.record({
      at: clock.now(),
      action: header(req, "x-tc-action"),
      secretId: parseAuthorization(header(req, "authorization"))?.secretId ?? "",
      region: header(req, "x-tc-region"),
      host: header(req, "host"),
      service: parseAuthorization(header(req, "authorization"))?.service ?? "",
      requestId,
      instanceIds: body ? instanceIdsOf(body) : [],
      outcome: "PENDING",
    });
    if (!body) {
      const out = errorEnvelope(
        requestId,
        new ApiError("RequestSizeLimitExceeded", "The request body is too large."),
      );
      return reply(res, arrival, out);
    }
    const admitted = admit(req, body, arrival);
    if ("out" in admitted) return reply(res, arrival, admitted.out);
    const { rule } = admitted;
    if (rule?.kind === "lateApply") {
      // Still on its way: the cloud sees it only now, whether or not the client is still there.
      await clock.sleep(rule.delayMs ?? 0, closing.signal);
    }
    const out = act(req, body, arrival, rule);
    if (rule === undefined || out.kind !== "json" || out.code !== "OK") return reply(res, arrival, out);
    switch (rule.kind) {
      case "lostReply":
        arrival.outcome = "HANG";
        return; // Never answered; the connection ends when the client gives up or the emulator closes.
      case "lateReply":
        arrival.outcome = "LATE_REPLY";
        await clock.sleep(rule.delayMs ?? 0, closing.signal);
        return reply(res, arrival, out);
      case "stallBody":
        arrival.outcome = "STALLED_BODY";
        if (res.destroyed) return;
        res.writeHead(out.status, { "content-type": "application/json", "x-tc-requestid": requestId });
        res.write(out.body.slice(0, Math.floor(out.body.length / 2)));
        return; // The rest never comes.
      default:
        return reply(res, arrival, out);
    }
  };

  const reply = async (res: ServerResponse, arrival: Arrival, out: Outcome): Promise<void> => {
    if (out.kind === "hang") {
      arrival.outcome = "HANG";
      return; // Never answered; the connection ends when the client gives up or the emulator closes.
    }
    if (arrival.outcome === "PENDING") arrival.outcome = out.code;
    const delay = faults.latency();
    if (delay > 0) await clock.sleep(delay);
    if (res.destroyed) return;
    res.writeHead(out.status, {
      "content-type": out.kind === "raw" ? out.contentType : "application/json",
      "x-tc-requestid": arrival.requestId,
    });
    res.end(out.body);
  };

  const server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, options.host ?? "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const hostForUrl = address.family === "IPv6" ? `[${address.address}]` : address.address;

  const emulator: Emulator = {
    url: `http://${hostForUrl}:${address.port}`,
    port: address.port,
    inventory,
    stats,
    faults,
    markBusy(instanceIds, ms, opts = {}) {
      const code = opts.code ?? "MutexOperation.TaskRunning";
      if (!BUSY_CODES.includes(code)) throw new Error(`unknown busy code ${String(code)}`);
      const all = inventory.all();
      const unknown = instanceIds.find((id) => !all.some((i) => i.instanceId === id));
      if (unknown !== undefined) throw new Error(`no instance ${unknown}`);
      for (const id of instanceIds) {
        const current = all.find((i) => i.instanceId === id);
        if (!current) throw new Error(`no instance ${id}`);
        inventory.startTask(id, {
          operation: opts.operation ?? "StopInstances",
          requestId: `console-${randomUUID()}`,
          durationMs: ms,
          then: { instanceState: current.instanceState },
          busyCode: code,
          fails: opts.fails,
        });
      }
    },
    setState: (instanceId, state, opts) => inventory.setState(instanceId, state, opts),
    reset() {
      inventory.reset();
      stats.reset();
      faults.reset();
      for (const l of Object.values(limiters)) l.reset();
    },
    close: () =>
      new Promise<void>((resolve) => {
        closing.abort(new Error("emulator closed"));
        server.close(() => resolve());
        // Hung requests and idle keep-alive sockets would keep close() waiting forever.
        server.closeAllConnections();
      }),
  };
  return emulator;
}
