import { describe, expect, it } from "vitest";
import { authenticateBearer, authenticateIdentity, tokenSha256Hex } from "../src/policy/authenticate.js";
import { parsePolicy } from "../src/policy/load.js";
import type { Policy } from "../src/policy/policy.js";

const TOKEN_A = "token-a-0123456789";
const TOKEN_A2 = "token-a-second-key";
const TOKEN_B = "token-b-0123456789";

function policy(): Policy {
  const result = parsePolicy(
    `
tenants:
  team-a:
    tokens_sha256: ["${tokenSha256Hex(TOKEN_A)}", "${tokenSha256Hex(TOKEN_A2)}"]
    identities: { spiffe: ["spiffe://cluster.local/ns/a/sa/deployer"], dns: [svc.team-a.internal] }
    regions: [ap-guangzhou]
    instances: "*"
    keys: "*"
  team-b:
    tokens_sha256: ["${tokenSha256Hex(TOKEN_B)}"]
    identities: { dns: [svc.team-b.internal] }
    regions: [ap-guangzhou]
    instances: "*"
    keys: "*"
`,
    "test",
  );
  if (!result.ok) throw new Error(result.errors.join("\n"));
  return result.policy;
}

describe("authenticateBearer", () => {
  const p = policy();

  it("maps each listed token to its tenant, including a second token during rotation", () => {
    expect(authenticateBearer(p, TOKEN_A)?.name).toBe("team-a");
    expect(authenticateBearer(p, TOKEN_A2)?.name).toBe("team-a");
    expect(authenticateBearer(p, TOKEN_B)?.name).toBe("team-b");
  });

  it("refuses unknown, empty, absent and oversized tokens", () => {
    expect(authenticateBearer(p, "token-a-012345678")).toBeUndefined();
    expect(authenticateBearer(p, `${TOKEN_A} `)).toBeUndefined();
    expect(authenticateBearer(p, "")).toBeUndefined();
    expect(authenticateBearer(p, undefined)).toBeUndefined();
    expect(authenticateBearer(p, "x".repeat(5000))).toBeUndefined();
  });

  it("refuses the hash itself presented as a token", () => {
    expect(authenticateBearer(p, tokenSha256Hex(TOKEN_A))).toBeUndefined();
  });

  it("hashes like `sha256sum` does (the hex the operator writes in the file)", () => {
    expect(tokenSha256Hex("fixture-token-a")).toBe(
      "631be138e52c7bc6d6f1c602cb9811ea36f75b58e35b5a780c55c9686882b18f",
    );
  });
});

describe("authenticateIdentity", () => {
  const p = policy();

  it("maps a SPIFFE id or a DNS name to its tenant", () => {
    expect(authenticateIdentity(p, { uris: ["spiffe://cluster.local/ns/a/sa/deployer"] })?.name).toBe(
      "team-a",
    );
    expect(authenticateIdentity(p, { dnsNames: ["svc.team-b.internal"] })?.name).toBe("team-b");
  });

  it("compares DNS names without regard to case or a trailing dot", () => {
    expect(authenticateIdentity(p, { dnsNames: ["SVC.Team-A.internal."] })?.name).toBe("team-a");
  });

  it("compares SPIFFE ids exactly", () => {
    expect(authenticateIdentity(p, { uris: ["spiffe://cluster.local/ns/a/sa/deployer/x"] })).toBeUndefined();
    expect(authenticateIdentity(p, { uris: ["spiffe://cluster.local/ns/a/sa"] })).toBeUndefined();
  });

  it("ignores SANs that name no tenant next to one that does", () => {
    const peer = { uris: ["spiffe://other/x"], dnsNames: ["unrelated.example", "svc.team-a.internal"] };
    expect(authenticateIdentity(p, peer)?.name).toBe("team-a");
  });

  it("refuses a certificate whose SANs name two tenants", () => {
    const peer = { uris: ["spiffe://cluster.local/ns/a/sa/deployer"], dnsNames: ["svc.team-b.internal"] };
    expect(authenticateIdentity(p, peer)).toBeUndefined();
  });

  it("refuses an empty or unknown identity", () => {
    expect(authenticateIdentity(p, {})).toBeUndefined();
    expect(authenticateIdentity(p, { dnsNames: ["svc.team-c.internal"] })).toBeUndefined();
  });
});
