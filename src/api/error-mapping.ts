import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { type ErrorKind, type KeygateError, isKeygateError } from "../core/errors.js";
import { ErrorDetailSchema } from "../gen/keygate/v1/keygate_pb.js";

/**
 * Spelling only: each kind already is a gRPC status, decided in src/core (errors.ts for keygate's
 * reasons, cloud-errors.ts for the cloud's codes).
 */
export const codeOfKind: Record<ErrorKind, Code> = {
  unauthenticated: Code.Unauthenticated,
  permission_denied: Code.PermissionDenied,
  invalid_argument: Code.InvalidArgument,
  resource_exhausted: Code.ResourceExhausted,
  not_found: Code.NotFound,
  failed_precondition: Code.FailedPrecondition,
  aborted: Code.Aborted,
  unavailable: Code.Unavailable,
  deadline_exceeded: Code.DeadlineExceeded,
  cancelled: Code.Canceled,
  internal: Code.Internal,
};

/**
 * Turns any error into what the caller may see. A KeygateError keeps its (safe) message and
 * gets an ErrorDetail; anything else becomes a generic internal error, its cause kept for logs.
 */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (!isKeygateError(err)) {
    return new ConnectError("internal error", Code.Internal, undefined, [errorDetail("INTERNAL")], err);
  }
  const e: KeygateError = err;
  const headers = new Headers();
  if (e.retryAfterMs !== undefined) headers.set("retry-after-ms", String(Math.ceil(e.retryAfterMs)));
  return new ConnectError(
    e.message,
    codeOfKind[e.kind],
    headers,
    [errorDetail(e.reason, e.upstreamCode, e.upstreamRequestId, e.retryAfterMs)],
    e,
  );
}

/** The keygate.v1.ErrorDetail every error carries. */
export function errorDetail(
  reason: string,
  upstreamCode?: string,
  upstreamRequestId?: string,
  retryAfterMs?: number,
) {
  return {
    desc: ErrorDetailSchema,
    value: create(ErrorDetailSchema, {
      reason,
      upstreamCode: upstreamCode ?? "",
      upstreamRequestId: upstreamRequestId ?? "",
      retryAfterMs: BigInt(Math.max(0, Math.ceil(retryAfterMs ?? 0))),
    }),
  };
}
