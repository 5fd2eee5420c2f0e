/**
 * The cheap half of loading a policy, used on the gateway's main thread: reading the file within
 * bounds, its digest, and indexing a file that was already validated. The YAML parser and the schema
 * (load.ts) run in the parse worker (isolated.ts) and in `keygate policy check`, so `keygate serve`
 * does not load them on its main thread (start-up time and idle memory: docs/decisions/deploy.md).
 */
import { createHash } from "node:crypto";
import { constants } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { frozenMap, frozenSet } from "./frozen.js";
import type { Policy, TenantPolicy } from "./policy.js";
import type { PolicyFile, TenantFile } from "./schema.js";

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
