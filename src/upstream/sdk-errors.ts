import { cloudCodeError } from "../core/cloud-errors.js";
import { KeygateError, keygateError, Reason } from "../core/errors.js";

/** Why the adapter itself stopped waiting (decided by the adapter, never guessed from a message). */
export type LocalAbort = "caller-cancelled" | "caller-deadline" | "timeout" | undefined;

export interface MapContext {
  action: string;
  /** Set when the adapter aborted the request. */
  aborted: LocalAbort;
  /** Strings that must never leave (the secret key, the session token). */
  secrets: readonly string[];
}

/** The SDK's error shape (TencentCloudSDKHttpException), read structurally. */
interface SdkLikeError {
  message?: unknown;
  code?: unknown;
  httpCode?: unknown;
  requestId?: unknown;
}

/** Marks credential-provider failures so they are not mistaken for network errors. */
export const CREDENTIAL_FAILURE_PREFIX = "keygate: cannot obtain cloud credentials: ";

/** Long mixed-case or alphanumeric words: what SecretKeys and session tokens look like. */
const SECRET_LIKE = /[A-Za-z0-9+/=_-]{16,}/g;
const looksSecret = (w: string) =>
  (/[a-z]/.test(w) && /[A-Z]/.test(w)) || (/[0-9]/.test(w) && /[A-Za-z]/.test(w));

/**
 * Removes secrets from text that is about to become part of an error: the known ones, and any
 * word shaped like a key or token (a credential provider's message may quote one keygate never saw).
 */
export function redactSecrets(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const s of secrets) if (s.length >= 4) out = out.split(s).join("[redacted]");
  return out.replace(SECRET_LIKE, (w) => (looksSecret(w) ? "[redacted]" : w));
}

/**
 * Turns anything the SDK throws into a KeygateError; what a cloud code means is decided in
 * src/core/cloud-errors.ts, not here. Shapes (docs/decisions/upstream.md): an API error
 * has `code` + `requestId`; HTTP non-200 has `httpCode`; timeouts, refused connections and aborts
 * have only a message; a non-JSON reply or one without `Response` is a raw FetchError/TypeError.
 */
export function toKeygateError(err: unknown, ctx: MapContext): KeygateError {
  if (err instanceof KeygateError) return err;
  const e = (typeof err === "object" && err !== null ? err : {}) as SdkLikeError;
  const rawMessage = typeof e.message === "string" ? e.message : String(err);
  const message = redactSecrets(rawMessage, ctx.secrets).slice(0, 300);
  const requestId = typeof e.requestId === "string" && e.requestId !== "" ? e.requestId : undefined;
  const what = `${ctx.action}`;

  if (ctx.aborted === "caller-cancelled") {
    return keygateError(
      Reason.CANCELLED,
      `${what} was cancelled by the caller; it may have reached the cloud`,
    );
  }
  if (ctx.aborted === "caller-deadline") {
    return keygateError(
      Reason.DEADLINE_EXCEEDED,
      `${what} did not finish before the caller's deadline; it may have reached the cloud`,
    );
  }
  if (ctx.aborted === "timeout") {
    return keygateError(
      Reason.UPSTREAM_TIMEOUT,
      `${what} got no answer in time; it may have reached the cloud`,
    );
  }
  if (typeof e.code === "string" && e.code !== "") {
    return cloudCodeError(e.code, `${e.code}: ${message}`, {
      upstreamCode: e.code,
      upstreamRequestId: requestId,
    });
  }
  if (typeof e.httpCode === "number") {
    return keygateError(Reason.UPSTREAM_UNAVAILABLE, `${what}: the cloud API answered HTTP ${e.httpCode}`);
  }
  if (rawMessage.startsWith(CREDENTIAL_FAILURE_PREFIX)) {
    return keygateError(Reason.UPSTREAM_UNAVAILABLE, message);
  }
  if (/network timeout|ETIMEDOUT|timed out/i.test(rawMessage)) {
    return keygateError(
      Reason.UPSTREAM_TIMEOUT,
      `${what} got no answer in time; it may have reached the cloud`,
    );
  }
  if (/invalid json|Unexpected token|is not valid JSON|reading 'Error'|Cannot read prop/i.test(rawMessage)) {
    return keygateError(
      Reason.UPSTREAM_BAD_RESPONSE,
      `${what}: the cloud API answered something that is not its protocol`,
    );
  }
  if (/ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN/i.test(rawMessage)) {
    return keygateError(
      Reason.UPSTREAM_UNAVAILABLE,
      `${what}: the cloud API could not be reached (${message})`,
    );
  }
  if (/ECONNRESET|EPIPE|socket hang up|request to .* failed/i.test(rawMessage)) {
    return keygateError(
      Reason.UPSTREAM_UNAVAILABLE,
      `${what}: the connection to the cloud API broke (${message})`,
    );
  }
  if (
    err instanceof TypeError ||
    err instanceof SyntaxError ||
    (err as { name?: unknown }).name === "FetchError"
  ) {
    return keygateError(
      Reason.UPSTREAM_BAD_RESPONSE,
      `${what}: the cloud API answered something that is not its protocol`,
    );
  }
  return keygateError(Reason.UPSTREAM_UNAVAILABLE, `${what} failed: ${message}`);
}
