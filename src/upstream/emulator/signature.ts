import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";
import { ApiError } from "./api-error.js";

/** A secret the emulator knows; `token` set = temporary credentials that must send X-TC-Token. */
export interface EmulatorSecret {
  secretKey: string;
  token?: string | undefined;
}

export interface Tc3Parts {
  secretKey: string;
  /** Unix seconds, as sent in X-TC-Timestamp. */
  timestamp: number;
  service: string;
  /** Lower-case header names in signing order, e.g. ["content-type", "host"]. */
  signedHeaders: readonly string[];
  /** Canonical value of each signed header (host without port). */
  headerValues: Readonly<Record<string, string>>;
  body: Buffer | string;
}

const sha256hex = (data: Buffer | string) => createHash("sha256").update(data).digest("hex");
const hmac = (key: Buffer | string, data: string) => createHmac("sha256", key).update(data).digest();

/** `YYYY-MM-DD` (UTC) of a unix-seconds timestamp: the date in the credential scope. */
export function scopeDate(timestamp: number): string {
  return new Date(timestamp * 1000).toISOString().slice(0, 10);
}

/** Computes a TC3-HMAC-SHA256 signature (hex) for a `POST /` request, as the cloud does. */
export function tc3Signature(p: Tc3Parts): string {
  const canonicalHeaders = p.signedHeaders.map((h) => `${h}:${p.headerValues[h] ?? ""}\n`).join("");
  const canonicalRequest = [
    "POST",
    "/",
    "",
    canonicalHeaders,
    p.signedHeaders.join(";"),
    sha256hex(p.body),
  ].join("\n");
  const date = scopeDate(p.timestamp);
  const stringToSign = [
    "TC3-HMAC-SHA256",
    String(p.timestamp),
    `${date}/${p.service}/tc3_request`,
    sha256hex(canonicalRequest),
  ].join("\n");
  const kDate = hmac(`TC3${p.secretKey}`, date);
  const kService = hmac(kDate, p.service);
  const kSigning = hmac(kService, "tc3_request");
  return createHmac("sha256", kSigning).update(stringToSign).digest("hex");
}

export interface VerifyOptions {
  headers: IncomingHttpHeaders;
  body: Buffer;
  nowMs: number;
  secrets: ReadonlyMap<string, EmulatorSecret>;
  /** The service this server signs for ("cvm"); a scope naming another one is refused. */
  service: string;
  maxSkewMs: number;
}

export interface Verified {
  secretId: string;
  service: string;
  host: string;
}

const AUTH_RE =
  /^TC3-HMAC-SHA256\s+Credential=([^/\s,]+)\/(\d{4}-\d{2}-\d{2})\/([^/\s,]+)\/tc3_request,\s*SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})$/;

export interface ParsedAuthorization {
  secretId: string;
  date: string;
  service: string;
  signedHeaders: string[];
  signature: string;
}

/** Splits a TC3 Authorization header into its parts; undefined when it is not one. */
export function parseAuthorization(auth: string | undefined): ParsedAuthorization | undefined {
  const m = auth === undefined ? null : AUTH_RE.exec(auth.trim());
  if (!m) return undefined;
  const [, secretId = "", date = "", service = "", signedList = "", signature = ""] = m;
  return { secretId, date, service, signedHeaders: signedList.split(";"), signature };
}

function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v.join(",") : v;
}

/** The hostname a client signed: the Host header without its port. */
export function hostWithoutPort(host: string): string {
  if (host.startsWith("[")) return host.slice(0, host.indexOf("]") + 1);
  const colon = host.lastIndexOf(":");
  return colon === -1 ? host : host.slice(0, colon);
}

/**
 * Verifies the Authorization header of an API 3.0 request; throws the cloud's own AuthFailure.*
 * codes. The signature is recomputed with the server's service name, so a client that signed
 * for another service (e.g. "127" after pointing the SDK endpoint at an IP) fails like upstream.
 */
export function verifyTc3(opts: VerifyOptions): Verified {
  const auth = header(opts.headers, "authorization");
  if (!auth) throw new ApiError("AuthFailure.InvalidAuthorization", "The Authorization header is missing.");
  const parsed = parseAuthorization(auth);
  if (!parsed) {
    throw new ApiError(
      "AuthFailure.InvalidAuthorization",
      "The Authorization header is not a well-formed TC3-HMAC-SHA256 authorization.",
    );
  }
  const { secretId, date, service, signedHeaders, signature } = parsed;
  const tsRaw = header(opts.headers, "x-tc-timestamp");
  if (!tsRaw || !/^\d+$/.test(tsRaw)) {
    throw new ApiError("MissingParameter", "The request is missing a valid X-TC-Timestamp header.");
  }
  const timestamp = Number(tsRaw);
  if (Math.abs(timestamp * 1000 - opts.nowMs) > opts.maxSkewMs) {
    throw new ApiError(
      "AuthFailure.SignatureExpire",
      "The signature has expired: X-TC-Timestamp differs from the server time by more than 5 minutes.",
    );
  }
  const secret = opts.secrets.get(secretId);
  if (!secret) throw new ApiError("AuthFailure.SecretIdNotFound", "The SecretId does not exist.");
  if (secret.token !== undefined && header(opts.headers, "x-tc-token") !== secret.token) {
    throw new ApiError("AuthFailure.TokenFailure", "The X-TC-Token is missing or invalid.");
  }
  if (!signedHeaders.includes("host") || !signedHeaders.includes("content-type")) {
    throw new ApiError(
      "AuthFailure.InvalidAuthorization",
      "SignedHeaders must include content-type and host.",
    );
  }
  const host = hostWithoutPort(header(opts.headers, "host") ?? "");
  const headerValues: Record<string, string> = {};
  for (const name of signedHeaders) {
    const raw = name === "host" ? host : (header(opts.headers, name) ?? "");
    headerValues[name] = raw.trim().toLowerCase();
  }
  const expected = tc3Signature({
    secretKey: secret.secretKey,
    timestamp,
    service: opts.service,
    signedHeaders,
    headerValues,
    body: opts.body,
  });
  const matches =
    service === opts.service &&
    date === scopeDate(timestamp) &&
    timingSafeEqual(Buffer.from(expected, "hex"), Buffer.from(signature, "hex"));
  if (!matches) {
    throw new ApiError(
      "AuthFailure.SignatureFailure",
      "The provided credentials could not be validated. Please check your signature is correct.",
    );
  }
  return { secretId, service, host };
}
