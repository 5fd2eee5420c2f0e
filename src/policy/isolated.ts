/**
 * Parsing a policy file off the main thread. The `yaml` parser and the schema need seconds and
 * hundreds of MB on some crafted files under the size limit; on the event loop that would stall
 * health checks and requests. A fresh worker per version, with a heap limit and a time limit,
 * answers with errors or the validated plain data; only indexing happens here. See
 * docs/decisions/policy.md.
 */
import { Worker } from "node:worker_threads";
import type { PolicyValidation } from "./load.js";
import { digestOf, policyFromFile, readPolicyFile, type PolicyLoadResult } from "./read.js";

/** Old-generation heap of one parse: a valid 1 MiB policy fits (6,337 tenants needed more than 64 MB). */
export const PARSE_MEMORY_MB = 96;
/** Wall-clock bound of one parse, counted once the worker has loaded (a valid 1 MiB file: 1-5 s on a busy node). */
export const PARSE_TIMEOUT_MS = 10_000;
/** Bound on loading the worker itself (compiling TypeScript on a busy machine can be slow). */
const START_TIMEOUT_MS = 30_000;

export interface IsolatedParseOptions {
  memoryMb?: number;
  timeoutMs?: number;
  /** Ends the parse at once (shutdown). */
  signal?: AbortSignal;
}

/**
 * How to start the worker: the worker file next to this one with this module's extension, so
 * the compiled .js runs the compiled worker. Under tsx (.ts) the worker must register tsx itself:
 * on Node 20, tsx's `--import` hook does not register in worker threads, even when inherited.
 */
function workerScript(): { script: string | URL; eval: boolean } {
  const ext = new URL(import.meta.url).pathname.endsWith(".ts") ? ".ts" : ".js";
  const url = new URL(`./parse-worker${ext}`, import.meta.url);
  if (ext === ".js") return { script: url, eval: false };
  const api = import.meta.resolve("tsx/esm/api");
  const script = `import(${JSON.stringify(api)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(url.href)}); });`;
  return { script, eval: true };
}

/** Like `loadPolicyFile`, with the parse in a bounded worker: what `keygate policy check` runs. */
export async function loadPolicyFileIsolated(path: string): Promise<PolicyLoadResult> {
  const read = await readPolicyFile(path);
  if (!read.ok) return { ok: false, errors: [read.error], digest: undefined };
  return parsePolicyIsolated(read.text, path);
}

/** Like `parsePolicy`, but the parse runs in a bounded worker. Never throws. */
export async function parsePolicyIsolated(
  text: string,
  sourceName: string,
  options: IsolatedParseOptions = {},
): Promise<PolicyLoadResult> {
  const digest = digestOf(text);
  const checked = await validateIsolated(text, options);
  if (!checked.ok) return { ok: false, errors: checked.errors, digest };
  return { ok: true, policy: policyFromFile(checked.file, sourceName, digest), digest };
}

function startParser(memoryMb: number): Worker {
  const { script, eval: isCode } = workerScript();
  return new Worker(script, {
    eval: isCode,
    resourceLimits: { maxOldGenerationSizeMb: memoryMb, maxYoungGenerationSizeMb: 8 },
  });
}

/** A parser started ahead of its first text (see `prewarmPolicyParser`); used once. */
let spare: { worker: Worker; memoryMb: number; ready: () => boolean } | undefined;

/**
 * Starts the parse worker now, so that it loads the YAML parser and the schema on another core while
 * the main thread is still loading the gateway; the next `validateIsolated` with the same memory bound
 * takes it instead of starting one (`keygate serve`'s start-up, docs/decisions/deploy.md). A spare
 * nobody takes does not keep the process alive.
 */
export function prewarmPolicyParser(memoryMb = PARSE_MEMORY_MB): void {
  if (spare) return;
  let worker: Worker;
  try {
    worker = startParser(memoryMb);
  } catch {
    return; // validateIsolated starts one and reports the problem
  }
  let isReady = false;
  const entry = { worker, memoryMb, ready: () => isReady };
  worker.on("message", (m: unknown) => {
    if (m === "ready") isReady = true;
  });
  const drop = () => {
    if (spare === entry) spare = undefined;
  };
  worker.once("error", drop);
  worker.once("exit", drop);
  worker.unref();
  spare = entry;
}

function takeSpare(memoryMb: number): { worker: Worker; ready: () => boolean } | undefined {
  const taken = spare;
  if (!taken || taken.memoryMb !== memoryMb) return undefined;
  spare = undefined;
  taken.worker.ref();
  return taken;
}

export function validateIsolated(
  text: string,
  options: IsolatedParseOptions = {},
): Promise<PolicyValidation> {
  const memoryMb = options.memoryMb ?? PARSE_MEMORY_MB;
  const timeoutMs = options.timeoutMs ?? PARSE_TIMEOUT_MS;
  const signal = options.signal;
  const refused = (error: string): PolicyValidation => ({ ok: false, errors: [error] });
  if (signal?.aborted) return Promise.resolve(refused("(file): parsing was cancelled"));

  return new Promise<PolicyValidation>((resolve) => {
    let worker: Worker;
    const prewarmed = takeSpare(memoryMb);
    try {
      worker = prewarmed?.worker ?? startParser(memoryMb);
    } catch (e) {
      resolve(refused(`(file): cannot start the policy parser: ${(e as Error).message}`));
      return;
    }
    let done = false;
    let timer = setTimeout(
      () => finish(refused(`(file): the policy parser did not start within ${START_TIMEOUT_MS / 1000} s`)),
      START_TIMEOUT_MS,
    );
    const onAbort = () => finish(refused("(file): parsing was cancelled"));
    signal?.addEventListener("abort", onAbort, { once: true });

    function finish(answer: PolicyValidation): void {
      if (done) return;
      done = true;
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      void worker.terminate().catch(() => undefined);
      resolve(answer);
    }

    const send = () => {
      clearTimeout(timer);
      timer = setTimeout(
        () => finish(refused(`(file): policy file too complex: parsing exceeded ${timeoutMs / 1000} s`)),
        timeoutMs,
      );
      worker.postMessage(text);
    };
    worker.on("message", (m: unknown) => {
      if (m === "ready") return send();
      finish(m as PolicyValidation);
    });
    if (prewarmed?.ready()) send();
    worker.on("error", (e: Error & { code?: string }) => {
      if (e.code === "ERR_WORKER_OUT_OF_MEMORY") {
        finish(refused(`(file): policy file too complex: parsing exceeded ${memoryMb} MB`));
      } else {
        // Not the file's fault (the worker could not load): the message names our code, not the file.
        finish(refused(`(file): the policy parser failed: ${e.code ?? e.name}: ${e.message.split("\n")[0]}`));
      }
    });
    worker.on("exit", (code) => finish(refused(`(file): the policy parser exited (code ${code})`)));
  });
}
