/** The world both arms of bench:contention run against: a few STOPPED instances, one key per caller. */
import type { InventorySpec } from "../../src/upstream/emulator/index.js";

export const REGION = "ap-guangzhou";
export const BENCH_TOKEN = "token-bench-contention-0123456789";

export const instanceId = (n: number) => `ins-bench${String(n).padStart(3, "0")}`;
export const keyId = (n: number) => `skey-bench${String(n).padStart(3, "0")}`;

export function benchInventory(instances: number, keys: number): InventorySpec {
  return {
    instances: Array.from({ length: instances }, (_, i) => ({
      instanceId: instanceId(i + 1),
      region: REGION,
      zone: "ap-guangzhou-3",
      projectId: 0,
      osName: "TencentOS Server 3.1 (TK4)",
      instanceState: "STOPPED",
    })),
    keyPairs: Array.from({ length: keys }, (_, i) => ({ keyId: keyId(i + 1) })),
  };
}

export function benchPolicy(tokenSha256: string): string {
  return `
tenants:
  bench:
    tokens_sha256: ["${tokenSha256}"]
    regions: [${REGION}]
    instances: "*"
    keys: "*"
    force_stop: false
`;
}
