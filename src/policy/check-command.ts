/**
 * `keygate policy check FILE`: the same validation the gateway runs at start-up and on reload,
 * offline, so a policy change can be checked in CI before it reaches a ConfigMap.
 */
import { loadPolicyFileIsolated } from "./isolated.js";

export interface CheckResult {
  /** 0 = valid, 1 = invalid (every error is in `output`). */
  exitCode: 0 | 1;
  output: string;
}

export async function checkPolicyFile(path: string): Promise<CheckResult> {
  // The same bounded parse as the gateway, so a file too complex to load fails here first.
  const result = await loadPolicyFileIsolated(path);
  if (!result.ok) {
    const n = result.errors.length;
    const lines = [
      `${path}: invalid, ${n} error${n === 1 ? "" : "s"}:`,
      ...result.errors.map((e) => `  ${e}`),
    ];
    return { exitCode: 1, output: lines.join("\n") };
  }
  const names = [...result.policy.tenants.keys()];
  const n = names.length;
  return {
    exitCode: 0,
    output: `${path}: OK, ${n} tenant${n === 1 ? "" : "s"} (${names.join(", ")}), sha256 ${result.digest}`,
  };
}
