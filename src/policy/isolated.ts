/**
 * Parsing a policy file off the main thread. The `yaml` parser and the schema need seconds and
 * hundreds of MB on some crafted files under the size limit; on the event loop that would stall
 * health checks and requests. A fresh worker per version, with a heap limit and a time limit,
 * answers with errors or the validated plain data; only indexing happens here. See
 * docs/decisions/policy.md.
 */
import { Worker } from "node:worker_threads";
import {
  digestOf,
  policyFromFile,
  readPolicyFile,
  type PolicyLoadResult,
  type PolicyValidation,
} from "./load.js";

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
    try {
      const { script, eval: isCode } = workerScript();
      worker = new Worker(script, {
        eval: isCode,
        resourceLimits: { maxOldGenerationSizeMb: memoryMb, maxYoungGenerationSizeMb: 8 },
      });
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

    worker.on("message", (m: unknown) => {
      if (m === "ready") {
        clearTimeout(timer);
        timer = setTimeout(
          () => finish(refused(`(file): policy file too complex: parsing exceeded ${timeoutMs / 1000} s`)),
          timeoutMs,
        );
        worker.postMessage(text);
        return;
      }
      finish(m as PolicyValidation);
    });
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
