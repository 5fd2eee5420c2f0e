/**
 * Who is calling: a bearer token or an mTLS client identity, resolved to one tenant of the
 * policy in force. Anything ambiguous or unknown resolves to no tenant (deny by default).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { CallerCredential } from "../core/ports.js";
import type { Policy, TenantPolicy } from "./policy.js";

/** Tokens longer than this are not ours; refusing them bounds the hashing work per request. */
const MAX_TOKEN_LENGTH = 4096;

/** sha256 hex of a bearer token, as written in `tokens_sha256`. */
export function tokenSha256Hex(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

interface TokenEntry {
  digest: Buffer;
  tenant: TenantPolicy;
}

/** Decoded digests per policy version, so a request never parses hex. */
const digestsByPolicy = new WeakMap<Policy, readonly TokenEntry[]>();

function digestsOf(policy: Policy): readonly TokenEntry[] {
  let entries = digestsByPolicy.get(policy);
  if (!entries) {
    entries = [...policy.byTokenSha256].map(([hex, tenant]) => ({ digest: Buffer.from(hex, "hex"), tenant }));
    digestsByPolicy.set(policy, entries);
  }
  return entries;
}

/**
 * The tenant holding `token`, or undefined. The presented token is hashed, then its digest is
 * compared with EVERY known digest in constant time, with no early exit: the time taken depends
 * only on how many tokens the policy lists (see docs/decisions/policy.md).
 */
export function authenticateBearer(policy: Policy, token: string | undefined): TenantPolicy | undefined {
  if (token === undefined || token.length === 0 || token.length > MAX_TOKEN_LENGTH) return undefined;
  const presented = createHash("sha256").update(token, "utf8").digest();
  let found: TenantPolicy | undefined;
  for (const entry of digestsOf(policy)) {
    // No `break`: every digest is compared whether or not one already matched.
    if (timingSafeEqual(presented, entry.digest)) found = entry.tenant;
  }
  return found;
}

/**
 * The tenant a verified client certificate stands for. A certificate whose SANs name two
 * different tenants is refused rather than resolved by some order of precedence.
 */
export function authenticateIdentity(
  policy: Policy,
  peer: Pick<CallerCredential, "uris" | "dnsNames">,
): TenantPolicy | undefined {
  const matched = new Set<TenantPolicy>();
  for (const id of peer.uris ?? []) {
    const t = policy.bySpiffe.get(id);
    if (t) matched.add(t);
  }
  for (const name of peer.dnsNames ?? []) {
    const t = policy.byDns.get(name.toLowerCase().replace(/\.$/, ""));
    if (t) matched.add(t);
  }
  if (matched.size !== 1) return undefined;
  const [only] = matched;
  return only;
}
