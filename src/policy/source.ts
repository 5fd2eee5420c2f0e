/**
 * The policy in force, re-read when its file changes. Changes are noticed two ways: a watch on
 * the file's directory (quick; it sees a Kubernetes ConfigMap update, where `..data` is swapped to
 * a new timestamped directory by an atomic rename, and in-place writes alike) and a poll of the
 * file's content digest (slow but certain: watches miss events on some volume types and can
 * die). A new version is taken only once it has settled (a file written in place may be read
 * half-written), and one that fails validation is refused: the last good one stays in force.
 * Every read is bounded in size and time (see `readPolicyFile`), every parse runs in a worker
 * bounded in memory and time (see `isolated.ts`), and shutdown never waits for either.
 */
import { watch, type FSWatcher } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { dirname } from "node:path";
import { parsePolicyIsolated } from "./isolated.js";
import { readPolicyFile, type PolicyReadResult } from "./read.js";
import type { Policy } from "./policy.js";

/** What request handling needs: the policy in force right now. */
export interface PolicySource {
  current(): Policy;
}

/** The first load: the policy, or every reason the file cannot be used. */
export type PolicyStartResult = { ok: true; policy: Policy } | { ok: false; errors: string[] };

/** pino-compatible subset, so the wiring can pass its logger as is. */
export interface PolicySourceLogger {
  info(fields: Record<string, unknown>, msg: string): void;
  warn(fields: Record<string, unknown>, msg: string): void;
}

export interface PolicySourceOptions {
  path: string;
  /** Content poll period. Default 2000 ms. */
  pollMs?: number;
  /** Also watch the directory for a quicker reaction. Default true; polling alone still works. */
  watch?: boolean;
  /** Wait after a directory event before reading, so a burst of events costs one read. Default 50 ms. */
  debounceMs?: number;
  /**
   * A new version is taken only when the file has not changed for this long: its ctime is that
   * old, or a read this much later gives the same bytes. Default 1000 ms.
   */
  settleMs?: number;
  /** Bound on one read of the file. Default POLICY_READ_TIMEOUT_MS. */
  readTimeoutMs?: number;
  /** Wall clock (ms), compared with the file's ctime. Default Date.now. */
  now?: () => number;
  /** A new version is in force. */
  onReload?: (policy: Policy, previous: Policy) => void;
  /** A new version was refused (each distinct bad version is reported once). */
  onError?: (errors: string[]) => void;
  logger?: PolicySourceLogger;
}

export type CheckOutcome = "unchanged" | "reloaded" | "rejected";

export interface ManagedPolicySource extends PolicySource {
  /** Loads the first version, then starts watching; `current()` may be called once this is ok. */
  start(): Promise<PolicyStartResult>;
  /** Re-reads the file now (e.g. on SIGHUP); the outcome of a read that began after this call. */
  check(): Promise<CheckOutcome>;
  close(): Promise<void>;
  /** Versions taken into force after the first. */
  readonly reloads: number;
  /** Versions refused. */
  readonly failures: number;
  /** The errors of the last refused version; empty once a good version is loaded. */
  readonly lastErrors: readonly string[];
}

/** A file still changing after this many settle periods is reported rather than waited for. */
const MAX_SETTLE_ROUNDS = 30;

export function createPolicySource(options: PolicySourceOptions): ManagedPolicySource {
  const { path, onReload, onError, logger } = options;
  const pollMs = options.pollMs ?? 2000;
  const debounceMs = options.debounceMs ?? 50;
  const settleMs = options.settleMs ?? 1000;
  const readTimeoutMs = options.readTimeoutMs;
  const now = options.now ?? Date.now;
  const useWatch = options.watch ?? true;

  let policy: Policy | undefined;
  /** The last refused version (digest or read error), so it is reported once, not every poll. */
  let rejected: string | undefined;
  let reloads = 0;
  let failures = 0;
  let lastErrors: readonly string[] = [];
  let watcher: FSWatcher | undefined;
  let poller: NodeJS.Timeout | undefined;
  let debounce: NodeJS.Timeout | undefined;
  let closed = false;
  /** Aborted by close(): cuts short any read or settle wait in progress. */
  const shutdown = new AbortController();
  let running: Promise<CheckOutcome> | undefined;
  let queued: Promise<CheckOutcome> | undefined;

  function refuse(key: string, errors: string[]): CheckOutcome {
    if (rejected === key) return "unchanged";
    rejected = key;
    failures += 1;
    lastErrors = Object.freeze([...errors]);
    logger?.warn({ path, errors }, "policy file refused; the previous version stays in force");
    try {
      onError?.(errors);
    } catch (e) {
      logger?.warn({ path, err: e }, "policy onError callback threw");
    }
    return "rejected";
  }

  /**
   * Reads the file until its bytes have settled: the file's ctime is `settleMs` old, or two reads
   * `settleMs` apart give the same digest. A digest `known` already (in force, or refused) needs
   * no settling: it is not a new version. `undefined` once closed.
   */
  async function readSettled(known: (digest: string) => boolean): Promise<PolicyReadResult | undefined> {
    let candidate: { digest: string; at: number } | undefined;
    for (let round = 1; ; round++) {
      const read = await readPolicyFile(path, { timeoutMs: readTimeoutMs, signal: shutdown.signal });
      if (closed) return undefined;
      if (read.ok) {
        const at = now();
        if (known(read.digest) || read.changedAtMs <= at - settleMs) return read;
        if (candidate?.digest === read.digest && at - candidate.at >= settleMs) return read;
        if (candidate?.digest !== read.digest) candidate = { digest: read.digest, at };
      } else if (read.changing !== true) {
        return read;
      }
      if (round >= MAX_SETTLE_ROUNDS) {
        const error = `(file): ${path} kept changing for ${round} reads ${settleMs} ms apart; not taken`;
        return { ok: false, error };
      }
      try {
        await sleep(settleMs, undefined, { signal: shutdown.signal });
      } catch {
        return undefined;
      }
    }
  }

  async function checkOnce(): Promise<CheckOutcome> {
    const previous = policy;
    if (!previous || closed) return "unchanged";
    const read = await readSettled((d) => d === previous.digest || d === rejected);
    if (read === undefined) return "unchanged";
    if (!read.ok) return refuse(read.error, [read.error]);
    if (read.digest === previous.digest) {
      rejected = undefined; // a bad version that was reverted may be reported again if it returns
      return "unchanged";
    }
    if (read.digest === rejected) return "unchanged";
    const result = await parsePolicyIsolated(read.text, path, { signal: shutdown.signal });
    if (closed) return "unchanged";
    if (!result.ok) return refuse(read.digest, result.errors);
    policy = result.policy;
    rejected = undefined;
    lastErrors = Object.freeze([]);
    reloads += 1;
    logger?.info(
      { path, digest: result.digest, tenants: result.policy.tenants.size },
      "policy file reloaded",
    );
    try {
      onReload?.(result.policy, previous);
    } catch (e) {
      logger?.warn({ path, err: e }, "policy onReload callback threw");
    }
    return "reloaded";
  }

  /** One read at a time; calls during a read share a single follow-up read. */
  function check(): Promise<CheckOutcome> {
    if (!running) {
      running = checkOnce().finally(() => {
        running = undefined;
      });
      return running;
    }
    queued ??= running.then(() => {
      queued = undefined;
      return check();
    });
    return queued;
  }

  function background(): void {
    if (closed) return;
    check().catch((e: unknown) => logger?.warn({ path, err: e }, "policy check failed"));
  }

  function startWatching(): void {
    if (closed || watcher || !useWatch) return;
    try {
      watcher = watch(dirname(path), { persistent: false }, () => {
        clearTimeout(debounce);
        debounce = setTimeout(background, debounceMs);
        debounce.unref();
      });
      watcher.on("error", (err) => {
        logger?.warn({ path, err }, "policy directory watch failed; polling only until it is re-established");
        watcher?.close();
        watcher = undefined;
      });
    } catch (err) {
      logger?.warn({ path, err }, "cannot watch the policy directory; polling only");
      watcher = undefined;
    }
  }

  return {
    async start() {
      if (policy) return { ok: true, policy };
      const read = await readSettled(() => false);
      if (read === undefined) return { ok: false, errors: ["(file): closed before the policy was read"] };
      if (!read.ok) return { ok: false, errors: [read.error] };
      const result = await parsePolicyIsolated(read.text, path, { signal: shutdown.signal });
      if (!result.ok) return { ok: false, errors: result.errors };
      policy = result.policy;
      logger?.info({ path, digest: result.digest, tenants: policy.tenants.size }, "policy file loaded");
      startWatching();
      poller = setInterval(() => {
        startWatching(); // brings back a watch that died (directory replaced, inotify limits)
        background();
      }, pollMs);
      poller.unref();
      return { ok: true, policy };
    },
    current() {
      if (!policy) throw new Error("policy source not started");
      return policy;
    },
    check,
    async close() {
      closed = true;
      shutdown.abort(); // a read or settle wait in progress ends now, so the await below is short
      clearInterval(poller);
      clearTimeout(debounce);
      watcher?.close();
      watcher = undefined;
      await running?.catch(() => undefined);
    },
    get reloads() {
      return reloads;
    },
    get failures() {
      return failures;
    },
    get lastErrors() {
      return lastErrors;
    },
  };
}

/**
 * A policy given as text that never changes (`keygate dev`, tests), behind the same interface
 * as the file source so the wiring does not care which one it has.
 */
export function createStaticPolicySource(text: string, sourceName: string): ManagedPolicySource {
  let policy: Policy | undefined;
  let lastErrors: readonly string[] = [];
  return {
    async start() {
      // Parsed here, on this thread: the text is the program's own (`keygate dev`, tests).
      const { parsePolicy } = await import("./load.js");
      const result = parsePolicy(text, sourceName);
      if (!result.ok) {
        lastErrors = Object.freeze([...result.errors]);
        return { ok: false, errors: result.errors };
      }
      policy = result.policy;
      return { ok: true, policy };
    },
    current() {
      if (!policy) throw new Error("policy source not started");
      return policy;
    },
    check: () => Promise.resolve("unchanged"),
    close: () => Promise.resolve(),
    reloads: 0,
    failures: 0,
    get lastErrors() {
      return lastErrors;
    },
  };
}
