/**
 * The policy `keygate dev` runs with. It matches the emulator's default inventory
 * (src/upstream/emulator/inventory.ts): tenant `demo` owns the instances tagged `owner: team-a`
 * plus the untagged ins-gz000008; tenant `other` owns `owner: team-b`, so calling with the demo
 * token on one of those shows a POLICY_DENIED. The tokens are public: dev binds to loopback.
 */
import { tokenSha256Hex } from "./authenticate.js";

export const DEMO_TOKEN = "keygate-dev-demo-token";
export const DEMO_OTHER_TOKEN = "keygate-dev-other-token";

export const DEMO_POLICY_YAML = `# keygate dev: demo policy (public tokens, loopback only)
tenants:
  demo:
    tokens_sha256: ["${tokenSha256Hex(DEMO_TOKEN)}"]
    regions: [ap-guangzhou, ap-shanghai]
    instances:
      ids: [ins-gz000008]
      tags: { owner: team-a }
    keys: "*"
    force_stop: true
    max_instances_per_request: 20
    weight: 1
  other:
    tokens_sha256: ["${tokenSha256Hex(DEMO_OTHER_TOKEN)}"]
    regions: [ap-guangzhou]
    instances:
      tags: { owner: team-b }
      projects: [1002]
    keys: [skey-bbbbbbbb]
    force_stop: false
    max_instances_per_request: 5
    weight: 1
`;

/** A call the demo tenant may make (Connect JSON field names): a stopped Linux instance of team-a. */
export const DEMO_REQUEST = Object.freeze({
  region: "ap-guangzhou",
  instanceIds: ["ins-gz000001"],
  keyIds: ["skey-aaaaaaaa"],
  waitForCompletion: true,
});
