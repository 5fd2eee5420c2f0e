import type { TLSSocket } from "node:tls";
import type { CallerCredential } from "../core/ports.js";

/**
 * Extracts `authorization: Bearer <token>`; the scheme is case-insensitive (RFC 7235). Anything
 * else (another scheme, empty token, stray whitespace inside the token) yields no bearer, which
 * the policy treats as unauthenticated.
 */
export function bearerFrom(header: string | null): string | undefined {
  if (header === null) return undefined;
  const m = /^bearer +([A-Za-z0-9._~+/=-]{1,512})$/i.exec(header.trim());
  return m?.[1];
}

/** SANs of a client certificate the TLS layer already verified against KEYGATE_TLS_CLIENT_CA. */
export function peerIdentities(socket: unknown): Pick<CallerCredential, "uris" | "dnsNames"> {
  const tls = socket as Partial<TLSSocket> | undefined;
  if (!tls || typeof tls.getPeerCertificate !== "function" || tls.authorized !== true) return {};
  const san = tls.getPeerCertificate()?.subjectaltname ?? "";
  const uris: string[] = [];
  const dnsNames: string[] = [];
  for (const part of san.split(/,\s*/)) {
    if (part.startsWith("URI:")) uris.push(part.slice(4));
    else if (part.startsWith("DNS:")) dnsNames.push(part.slice(4));
  }
  return { uris, dnsNames };
}
