/**
 * Parsing a policy file into a frozen, indexed `Policy`, or into the complete list of what is
 * wrong with it. All errors are collected before answering: an operator fixing a file one error
 * per attempt, during an incident, is the failure mode this avoids.
 */
import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { isMap, isScalar, LineCounter, parseDocument, visit, type Document } from "yaml";
import { capErrors, excerptKey, excerptProse, hiddenKey } from "./excerpt.js";
import { frozenMap, frozenSet } from "./frozen.js";
import { SHA256_HEX_PATTERN } from "../core/ids.js";
import { formatIssue, formatPath } from "./issues.js";
import type { Policy, TenantPolicy } from "./policy.js";
import { policyFileSchema, type PolicyFile, type TenantFile } from "./schema.js";

export type PolicyLoadResult =
  | { ok: true; policy: Policy; digest: string }
  /** `digest` is set when the bytes could be read, so a watcher can tell "same bad file" apart. */
  | { ok: false; errors: string[]; digest: string | undefined };

/** Far above any real policy; stops a wrong path (a log file, a huge file) from being slurped. */
export const MAX_POLICY_BYTES = 1024 * 1024;
/** A policy read (open, stat, read) that takes longer than this is given up (a hung network volume). */
export const POLICY_READ_TIMEOUT_MS = 5_000;

export function digestOf(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

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

export type PolicyReadResult =
  | {
      ok: true;
      text: string;
      digest: string;
      /** When the file last changed (its ctime, which every write moves and no caller can set back). */
      changedAtMs: number;
    }
  /** `changing`: the file changed while it was read; not an error, just not a version yet. */
  | { ok: false; error: string; changing?: boolean };

export interface PolicyReadOptions {
  maxBytes?: number;
  timeoutMs?: number;
  /** Gives the read up at once (shutdown). */
  signal?: AbortSignal;
}

/** O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, in a libuv thread, forever. */
const OPEN_FLAGS = constants.O_RDONLY | (constants.O_NONBLOCK ?? 0) | (constants.O_NOCTTY ?? 0);
const CHUNK_BYTES = 64 * 1024;

/**
 * Reads a policy file the way a security boundary must: a regular file only (symlinks are
 * followed, as ConfigMap mounts need), no larger than `maxBytes` by fstat before reading and by
 * the read itself (a file growing meanwhile cannot exceed it), and within `timeoutMs`. Never
 * throws; errors name the path, never the content.
 */
export async function readPolicyFile(
  path: string,
  options: PolicyReadOptions = {},
): Promise<PolicyReadResult> {
  const maxBytes = options.maxBytes ?? MAX_POLICY_BYTES;
  const timeoutMs = options.timeoutMs ?? POLICY_READ_TIMEOUT_MS;
  let gaveUp = false;
  const work = readBounded(path, maxBytes, () => gaveUp).catch((e: unknown): PolicyReadResult => ({
    ok: false,
    error: `(file): cannot read ${path}: ${errorCode(e)}`,
  }));
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const stop = new Promise<PolicyReadResult>((resolve) => {
    timer = setTimeout(
      () =>
        resolve({ ok: false, error: `(file): reading ${path} took longer than ${timeoutMs} ms; gave up` }),
      timeoutMs,
    );
    onAbort = () => resolve({ ok: false, error: `(file): reading ${path} was cancelled` });
    if (options.signal?.aborted) onAbort();
    else options.signal?.addEventListener("abort", onAbort, { once: true });
  });
  try {
    return await Promise.race([work, stop]);
  } finally {
    gaveUp = true; // a read still running stops at its next chunk and closes its file
    clearTimeout(timer);
    if (onAbort) options.signal?.removeEventListener("abort", onAbort);
  }
}

async function readBounded(path: string, maxBytes: number, gaveUp: () => boolean): Promise<PolicyReadResult> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(path, OPEN_FLAGS);
    const before = await handle.stat({ bigint: true });
    if (!before.isFile()) {
      return { ok: false, error: `(file): ${path} is ${kindOf(before)}, not a regular file` };
    }
    if (before.size > BigInt(maxBytes)) return { ok: false, error: tooBig(path, maxBytes, before.size) };
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      if (gaveUp()) return { ok: false, error: `(file): reading ${path} was given up` };
      const want = Math.min(CHUNK_BYTES, maxBytes + 1 - total);
      const chunk = Buffer.allocUnsafe(want);
      const { bytesRead } = await handle.read(chunk, 0, want, total);
      if (bytesRead === 0) break;
      chunks.push(bytesRead === want ? chunk : chunk.subarray(0, bytesRead));
      total += bytesRead;
      if (total > maxBytes) return { ok: false, error: tooBig(path, maxBytes) };
    }
    const after = await handle.stat({ bigint: true });
    if (
      after.ino !== before.ino ||
      after.size !== before.size ||
      after.mtimeNs !== before.mtimeNs ||
      after.ctimeNs !== before.ctimeNs
    ) {
      return { ok: false, error: `(file): ${path} changed while it was read`, changing: true };
    }
    const text = Buffer.concat(chunks, total).toString("utf8");
    return { ok: true, text, digest: digestOf(text), changedAtMs: Number(after.ctimeNs / 1_000_000n) };
  } finally {
    await handle?.close().catch(() => undefined);
  }
}

function tooBig(path: string, maxBytes: number, size?: bigint): string {
  const limit = `the ${maxBytes}-byte limit`;
  return size === undefined
    ? `(file): ${path} grew past ${limit} while it was read`
    : `(file): ${path} is ${size} bytes, larger than ${limit}`;
}

function kindOf(s: {
  isDirectory(): boolean;
  isFIFO(): boolean;
  isCharacterDevice(): boolean;
  isBlockDevice(): boolean;
  isSocket(): boolean;
}): string {
  if (s.isDirectory()) return "a directory";
  if (s.isFIFO()) return "a named pipe (FIFO)";
  if (s.isCharacterDevice()) return "a character device";
  if (s.isBlockDevice()) return "a block device";
  if (s.isSocket()) return "a socket";
  return "not a file of a known kind";
}

function errorCode(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  return typeof code === "string" ? code : "read error";
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

/** Indexes and freezes a validated file: linear in its size, cheap next to parsing it. */
export function policyFromFile(file: PolicyFile, source: string, digest: string): Policy {
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
