/**
 * Parsing a policy file into a frozen, indexed `Policy`, or into the complete list of what is
 * wrong with it. All errors are collected before answering: an operator fixing a file one error
 * per attempt, during an incident, is the failure mode this avoids.
 */
import { isMap, isScalar, LineCounter, parseDocument, visit, type Document } from "yaml";
import { capErrors, excerptKey, excerptProse, hiddenKey } from "./excerpt.js";
import { SHA256_HEX_PATTERN } from "../core/ids.js";
import { formatIssue, formatPath } from "./issues.js";
import { policyFileSchema, type PolicyFile } from "./schema.js";
import { digestOf, policyFromFile, readPolicyFile, type PolicyLoadResult } from "./read.js";

// Reading and indexing live in read.ts (no YAML parser, no schema); importers of this module keep them.
export {
  digestOf,
  MAX_POLICY_BYTES,
  POLICY_READ_TIMEOUT_MS,
  policyFromFile,
  readPolicyFile,
  type PolicyLoadResult,
  type PolicyReadOptions,
  type PolicyReadResult,
} from "./read.js";

/** Validates policy YAML; `sourceName` only labels the result (a path, "demo", …). */
export function parsePolicy(text: string, sourceName: string): PolicyLoadResult {
  const digest = digestOf(text);
  const checked = validatePolicyText(text);
  if (!checked.ok) return { ok: false, errors: checked.errors, digest };
  return { ok: true, policy: policyFromFile(checked.file, sourceName, digest), digest };
}

/**
 * The expensive half of `parsePolicy`: YAML parsing and validation. Its answer is plain data (no
 * class instances), so it can cross a worker boundary by structured clone; see `isolated.ts`.
 */
export type PolicyValidation = { ok: true; file: PolicyFile } | { ok: false; errors: string[] };

export function validatePolicyText(text: string): PolicyValidation {
  const depth = flowDepth(text);
  if (depth > MAX_FLOW_DEPTH) {
    const error = `(file): brackets nest ${depth} deep (at most ${MAX_FLOW_DEPTH}); not a policy`;
    return { ok: false, errors: [error] };
  }
  const yamlErrors: string[] = [];
  const lines = new LineCounter();
  // yaml's own duplicate-key check compares each key with every earlier one: minutes for a
  // 4 MiB map. duplicateKeys() does it with a Set.
  const doc = parseDocument(text, { uniqueKeys: false, prettyErrors: false, lineCounter: lines });
  const found: { offset: number; what: string }[] = [];
  for (const e of [...doc.errors, ...doc.warnings]) {
    const what = `not valid YAML: ${excerptProse(e.message.split("\n")[0] ?? "", e.code)}`;
    found.push({ offset: e.pos[0], what });
  }
  for (const offset of duplicateKeys(doc)) {
    found.push({ offset, what: `duplicate key ${shownKey(keyAt(text, offset))} (each key may appear once)` });
  }
  found.sort((a, b) => a.offset - b.offset);
  for (const { offset, what } of found) {
    const at = lines.linePos(offset);
    yamlErrors.push(`line ${at.line}, column ${at.col}: ${what}`);
  }
  if (yamlErrors.length > 0) return { ok: false, errors: capErrors(yamlErrors) };

  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    const why = excerptProse((e as Error).message, "it cannot be turned into data");
    return { ok: false, errors: [`(file): not usable YAML: ${why}`] };
  }

  if (raw === null || raw === undefined) {
    return { ok: false, errors: ['(file): is empty; expected a map with "tenants"'] };
  }
  const parsed = policyFileSchema.safeParse(raw, { reportInput: true });
  const errors = parsed.success ? [] : parsed.error.issues.flatMap((i) => formatIssue(i));
  errors.push(...crossTenantErrors(raw));
  if (!parsed.success || errors.length > 0) return { ok: false, errors: capErrors(errors) };
  return { ok: true, file: parsed.data };
}

/** Reads and validates the file at `path`, parsing in this thread (tests; the gateway and `policy check` use `loadPolicyFileIsolated`). Never throws. */
export async function loadPolicyFile(path: string): Promise<PolicyLoadResult> {
  const read = await readPolicyFile(path);
  if (!read.ok) return { ok: false, errors: [read.error], digest: undefined };
  return parsePolicy(read.text, path);
}

/** A key for a duplicate-key message, quoted, or described when it is not a plain name. */
function shownKey(key: string): string {
  const shown = excerptKey(key);
  return shown === undefined ? hiddenKey(key) : JSON.stringify(shown);
}

/** A policy nests a few levels; the YAML parser's time and memory explode on thousands. */
const MAX_FLOW_DEPTH = 32;

/** Deepest `[`/`{` nesting, counting brackets in strings too (an overestimate is harmless here). */
function flowDepth(text: string): number {
  let depth = 0;
  let max = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x5b || c === 0x7b) max = Math.max(max, ++depth);
    else if ((c === 0x5d || c === 0x7d) && depth > 0) depth--;
  }
  return max;
}

/** Where each repeated scalar key of a map starts (keys compared as yaml does: by value and type). */
function duplicateKeys(doc: Document): number[] {
  const offsets: number[] = [];
  visit(doc, {
    Map(_, map) {
      if (!isMap(map)) return;
      const seen = new Set<string>();
      for (const pair of map.items) {
        if (!isScalar(pair.key)) continue;
        const v: unknown = pair.key.value;
        const id = `${typeof v}:${String(v)}`;
        if (seen.has(id)) offsets.push(pair.key.range?.[0] ?? 0);
        else seen.add(id);
      }
    },
  });
  return offsets;
}

/** The key written at `offset` (quoted or plain), for duplicate-key messages. */
function keyAt(text: string, offset: number): string {
  const m = /^("(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[^:\n]*)/.exec(text.slice(offset, offset + 256));
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
