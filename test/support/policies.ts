import { createHash } from "node:crypto";

export const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

export const TOKEN_A = "token-team-a-0123456789";
export const TOKEN_B = "token-team-b-0123456789";

/** Two tenants over the emulator's default inventory (team-a / team-b tags and projects). */
export const TWO_TENANTS = `
tenants:
  team-a:
    tokens_sha256: ["${sha256(TOKEN_A)}"]
    regions: [ap-guangzhou, ap-shanghai]
    instances:
      tags: { owner: team-a }
    keys: [skey-aaaaaaaa, skey-bbbbbbbb]
    force_stop: false
    max_instances_per_request: 10
    weight: 1
  team-b:
    tokens_sha256: ["${sha256(TOKEN_B)}"]
    regions: [ap-guangzhou]
    instances:
      projects: [1002]
    keys: "*"
    force_stop: true
    weight: 1
`;

/** One tenant "ops" that may touch any instance with any key in ap-guangzhou (no lookups needed). */
export const opsPolicy = (token: string, forceStop = false) => `
tenants:
  ops:
    tokens_sha256: ["${sha256(token)}"]
    regions: [ap-guangzhou]
    instances: "*"
    keys: "*"
    force_stop: ${String(forceStop)}
`;
