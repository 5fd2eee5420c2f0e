/**
 * Parsing a policy file into a frozen, indexed `Policy`, or into the complete list of what is
 * wrong with it. All errors are collected before answering: an operator fixing a file one error
 * per attempt, during an incident, is the failure mode this avoids.
 */
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { LineCounter, parseDocument } from "yaml";
import { frozenMap, frozenSet } from "./frozen.js";
import { SHA256_HEX_PATTERN } from "../core/ids.js";
import { formatIssue, formatPath } from "./issues.js";
import type { Policy, TenantPolicy } from "./policy.js";
import { policyFileSchema, type PolicyFile, type TenantFile } from "./schema.js";

export type PolicyLoadResult =
  | { ok: true; policy: Policy; digest: string }
  /** `digest` is set when the bytes could be read, so a watcher can tell "same bad file" apart. */
  | { ok: false; errors: string[]; digest: string | undefined };

/** Far above any real policy; stops a wrong path (a log file, a device) from being slurped. */
const MAX_POLICY_BYTES = 4 * 1024 * 1024;

export function digestOf(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

/** Validates policy YAML; `sourceName` only labels the result (a path, "demo", …). */
export function parsePolicy(text: string, sourceName: string): PolicyLoadResult {
  const digest = digestOf(text);
  const yamlErrors: string[] = [];
  const lines = new LineCounter();
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: false, lineCounter: lines });
  for (const e of [...doc.errors, ...doc.warnings]) {
    const at = lines.linePos(e.pos[0]);
    const where = `line ${at.line}, column ${at.col}`;
    const what =
      e.code === "DUPLICATE_KEY"
        ? `duplicate key ${JSON.stringify(keyAt(text, e.pos[0]))} (each key may appear once)`
        : `not valid YAML: ${e.message.split("\n")[0] ?? e.message}`;
    yamlErrors.push(`${where}: ${what}`);
  }
  if (yamlErrors.length > 0) return { ok: false, errors: yamlErrors, digest };

  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    return { ok: false, errors: [`(file): not usable YAML: ${(e as Error).message}`], digest };
  }

  if (raw === null || raw === undefined) {
    return { ok: false, errors: ['(file): is empty; expected a map with "tenants"'], digest };
  }
  const parsed = policyFileSchema.safeParse(raw, { reportInput: true });
  const errors = parsed.success ? [] : parsed.error.issues.flatMap((i) => formatIssue(i));
  errors.push(...crossTenantErrors(raw));
  if (!parsed.success || errors.length > 0) return { ok: false, errors, digest };
  return { ok: true, policy: buildPolicy(parsed.data, sourceName, digest), digest };
}

/** Reads and validates the file at `path`. Never throws. */
export async function loadPolicyFile(path: string): Promise<PolicyLoadResult> {
  let text: string;
  try {
    const bytes = await readFile(path);
    if (bytes.length > MAX_POLICY_BYTES) {
      return {
        ok: false,
        errors: [`(file): ${bytes.length} bytes is larger than the ${MAX_POLICY_BYTES}-byte limit`],
        digest: undefined,
      };
    }
    text = bytes.toString("utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    return { ok: false, errors: [`(file): cannot read ${path}: ${code}`], digest: undefined };
  }
  return parsePolicy(text, path);
}

/** The key written at `offset` (quoted or plain), for duplicate-key messages. */
function keyAt(text: string, offset: number): string {
  const m = /^("(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[^:\n]*)/.exec(text.slice(offset));
  const key = (m?.[1] ?? "").trim();
  return /^["']/.test(key) ? key.slice(1, -1) : key;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * One credential must name one tenant, or authentication would depend on map order. Checked on
 * the raw document so these errors are listed alongside the schema's, not after a second attempt.
 */
function crossTenantErrors(raw: unknown): string[] {
  if (!isRecord(raw) || !isRecord(raw["tenants"])) return [];
  const errors: string[] = [];
  const seen = new Map<string, string>();
  const claim = (kind: string, value: string, path: (string | number)[]) => {
    const here = formatPath(path);
    const first = seen.get(`${kind}\0${value}`);
    if (first === undefined) seen.set(`${kind}\0${value}`, here);
    else errors.push(`${here}: already listed at ${first} (a credential must identify exactly one tenant)`);
  };
  for (const [name, tenant] of Object.entries(raw["tenants"])) {
    if (!isRecord(tenant)) continue;
    const tokens = tenant["tokens_sha256"];
    if (Array.isArray(tokens)) {
      tokens.forEach((t, i) => {
        if (typeof t === "string" && SHA256_HEX_PATTERN.test(t))
          claim("token", t, ["tenants", name, "tokens_sha256", i]);
      });
    }
    const ids = tenant["identities"];
    if (!isRecord(ids)) continue;
    for (const kind of ["spiffe", "dns"] as const) {
      const values = ids[kind];
      if (!Array.isArray(values)) continue;
      values.forEach((v, i) => {
        if (typeof v === "string") claim(kind, v.toLowerCase(), ["tenants", name, "identities", kind, i]);
      });
    }
  }
  return errors;
}

function buildTenant(name: string, t: TenantFile): TenantPolicy {
  const instances =
    t.instances === "*"
      ? "*"
      : Object.freeze({
          ids: frozenSet(t.instances.ids ?? []),
          tags: t.instances.tags === undefined ? undefined : Object.freeze({ ...t.instances.tags }),
          projects: frozenSet(t.instances.projects ?? []),
        });
  return Object.freeze({
    name,
    tokensSha256: Object.freeze([...(t.tokens_sha256 ?? [])]),
    identities: Object.freeze({
      spiffe: Object.freeze([...(t.identities?.spiffe ?? [])]),
      dns: Object.freeze((t.identities?.dns ?? []).map((d) => d.toLowerCase())),
    }),
    regions: frozenSet(t.regions),
    instances,
    keys: t.keys === "*" ? "*" : frozenSet(t.keys),
    forceStop: t.force_stop,
    maxInstancesPerRequest: t.max_instances_per_request,
    weight: t.weight,
  });
}

function buildPolicy(file: PolicyFile, source: string, digest: string): Policy {
  const tenants = Object.entries(file.tenants).map(([name, t]) => buildTenant(name, t));
  return Object.freeze({
    source,
    digest,
    tenants: frozenMap(tenants.map((t) => [t.name, t] as const)),
    byTokenSha256: frozenMap(tenants.flatMap((t) => t.tokensSha256.map((h) => [h, t] as const))),
    bySpiffe: frozenMap(tenants.flatMap((t) => t.identities.spiffe.map((s) => [s, t] as const))),
    byDns: frozenMap(tenants.flatMap((t) => t.identities.dns.map((d) => [d, t] as const))),
  });
}
