import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { createContextKey } from "@connectrpc/connect";
import type { AssociateService } from "../core/associate-service.js";
import type { Clock } from "../core/clock.js";
import { keygateError } from "../core/errors.js";
import type { AuditEntry, CallerCredential } from "../core/ports.js";
import { AssociateKeyPairsResponseSchema, type KeyPairService } from "../gen/keygate/v1/keygate_pb.js";
import { bearerFrom } from "./credentials.js";
import { traced } from "../observability/tracing.js";
import { toConnectError } from "./error-mapping.js";

/** mTLS identities of the connection, put into the context by the Node adapter. */
export const peerKey = createContextKey<Pick<CallerCredential, "uris" | "dnsNames">>({});

/** What the transport saw of one request; the server creates a fresh one per request. */
export interface RequestInfo {
  /** Set once keygate's handler runs: refusals before that are the transport's to audit. */
  reached: boolean;
  /** How many `authorization` headers arrived (Node keeps only the first in `headers`). */
  authorizationHeaders: number;
  /** The caller's x-request-id when sane, else a fresh one; echoed in the response headers. */
  requestId: string;
}
export const requestInfoKey = createContextKey<RequestInfo | undefined>(undefined);

export interface KeyPairServiceOptions {
  service: Pick<AssociateService, "associate">;
  clock: Clock;
  /** Applied when the caller sets no deadline (grpc-timeout / connect-timeout-ms). */
  defaultDeadlineMs: number;
  isDraining: () => boolean;
  onInflight?: (delta: 1 | -1) => void;
  /** For refusals made here, before the request reaches the service (which audits the rest). */
  audit?: ((entry: AuditEntry) => void) | undefined;
}

/** Translates the proto API to the domain and domain errors back to status codes. */
export function createKeyPairServiceImpl(opts: KeyPairServiceOptions): ServiceImpl<typeof KeyPairService> {
  return {
    async associateKeyPairs(req, ctx) {
      const started = opts.clock.now();
      const info = ctx.values.get(requestInfoKey);
      if (info) info.reached = true;
      opts.onInflight?.(1);
      try {
        if (opts.isDraining())
          throw keygateError("SHUTTING_DOWN", "this keygate replica is shutting down; retry");
        const timeout = ctx.timeoutMs();
        const requestId = info?.requestId ?? requestIdOf(ctx);
        if ((info?.authorizationHeaders ?? 0) > 1) {
          // Which one would win depends on the HTTP stack; refuse rather than guess.
          opts.audit?.({
            requestId,
            tenant: undefined,
            region: req.region,
            instances: req.instanceIds,
            keys: req.keyIds,
            forceStop: req.forceStop,
            decision: "denied",
            rule: "authentication",
            reason: "UNAUTHENTICATED",
            error: "more than one authorization header",
            deduplicated: false,
            limiterWaitMs: 0,
            leaseWaitMs: 0,
            attempts: 0,
            durationMs: opts.clock.now() - started,
          });
          throw keygateError("UNAUTHENTICATED", "send exactly one `authorization: Bearer <token>` header");
        }
        // The tenant is not known yet (authentication happens inside): the span carries what the
        // request itself says. No-op unless OTEL_* variables turned tracing on.
        const result = await traced(
          "keygate.v1.KeyPairService/AssociateKeyPairs",
          {
            "rpc.system": "connect_rpc",
            "rpc.service": "keygate.v1.KeyPairService",
            "rpc.method": "AssociateKeyPairs",
            "cloud.region": req.region.slice(0, 64),
            "keygate.request_id": requestId,
            "keygate.instance_count": req.instanceIds.length,
          },
          () =>
            opts.service.associate({
              requestId,
              credential: {
                bearer: bearerFrom(ctx.requestHeader.get("authorization")),
                ...ctx.values.get(peerKey),
              },
              request: {
                region: req.region,
                instanceIds: req.instanceIds,
                keyIds: req.keyIds,
                forceStop: req.forceStop,
                idempotencyKey: req.idempotencyKey,
                waitForCompletion: req.waitForCompletion,
              },
              signal: ctx.signal,
              deadline: opts.clock.now() + internalBudget(timeout, opts.defaultDeadlineMs),
            }),
          ctx.requestHeader,
        );
        return create(AssociateKeyPairsResponseSchema, result);
      } catch (err) {
        throw toConnectError(err);
      } finally {
        opts.onInflight?.(-1);
      }
    },
  };
}

/**
 * How long keygate itself may work on a call. The server aborts the call's signal when the
 * caller's own deadline passes; keygate stops its waits a little earlier (5%, 20..250 ms) so the
 * caller hears why (INSTANCE_BUSY, RATE_LIMITED, the cloud's busy code) instead of a bare
 * deadline error.
 */
export function internalBudget(callerTimeoutMs: number | undefined, defaultDeadlineMs: number): number {
  const budget = Math.min(callerTimeoutMs ?? defaultDeadlineMs, defaultDeadlineMs);
  const margin = Math.min(250, Math.max(20, budget * 0.05));
  return Math.max(0, budget - margin);
}

/**
 * A caller-supplied x-request-id when it is sane (1..64 of A-Z a-z 0-9 . _ : -) or a fresh UUID, so
 * logs can be joined across systems. Anything else is replaced, never echoed or logged.
 */
export function requestIdFrom(given: string | null): string {
  return given && /^[A-Za-z0-9._:-]{1,64}$/.test(given) ? given : randomUUID();
}

function requestIdOf(ctx: HandlerContext): string {
  return requestIdFrom(ctx.requestHeader.get("x-request-id"));
}
