/**
 * What Kubernetes and Prometheus see of a real `keygate serve` process: grpc.health.v1 Check and
 * Watch on the API port, `/metrics` on the metrics port after traffic of every kind, bounded label
 * cardinality (no instance id anywhere), and the README's "Operating keygate" section naming exactly the metrics the code has.
 */
import { readFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../src/gen/health/v1/health_pb.js";
import { KeyPairService } from "../src/gen/keygate/v1/keygate_pb.js";
import { createMetrics } from "../src/observability/metrics.js";
import { EMULATOR_SECRET_KEY, type Emulator } from "../src/upstream/emulator/index.js";
import { startEmulator } from "./support/app.js";
import { sha256 } from "./support/policies.js";
import { type Child, killStrays, ROOT, serveEnv, spawnKeygate, waitListening } from "./support/process.js";
import { pollUntil } from "./support/wait.js";
import { freePort } from "./support/redis-server.js";

const TOKEN_OPS = "ops-metrics-token-0123456789";
const TOKEN_NARROW = "ops-narrow-token-0123456789";
const policy = (extraTenant = "") => `
tenants:
  ops:
    tokens_sha256: ["${sha256(TOKEN_OPS)}"]
    regions: [ap-guangzhou, ap-shanghai]
    instances: "*"
    keys: "*"
    weight: 1
  narrow:
    tokens_sha256: ["${sha256(TOKEN_NARROW)}"]
    regions: [ap-guangzhou]
    instances:
      ids: [ins-gz000001]
    keys: [skey-aaaaaaaa]
    weight: 1
${extraTenant}`;

let emulator: Emulator;
let dir: string;
let policyFile: string;
let child: Child;
let api: string;
let metricsUrl: string;

beforeAll(async () => {
  emulator = await startEmulator(100);
  dir = mkdtempSync(join(tmpdir(), "keygate-ops-metrics-"));
  policyFile = join(dir, "policy.yaml");
  writeFileSync(policyFile, policy());
  const [port, metricsPort] = [await freePort(), await freePort()];
  child = spawnKeygate(
    ["serve"],
    serveEnv(policyFile, emulator.url, {
      KEYGATE_PORT: String(port),
      KEYGATE_METRICS_PORT: String(metricsPort),
      KEYGATE_DRAIN_MS: "3000",
    }),
  );
  await waitListening(child);
  api = `http://127.0.0.1:${port}`;
  metricsUrl = `http://127.0.0.1:${metricsPort}/metrics`;
});
afterAll(async () => {
  await killStrays();
  await emulator?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** One sample of the Prometheus text format: `name{a="b",…} value`. */
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
function parseMetrics(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`unparseable metrics line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1] ?? ""] = l[2] ?? "";
    }
    out.push({ name: m[1] ?? "", labels, value: Number(m[3]) });
  }
  return out;
}
async function scrape(): Promise<{ text: string; samples: Sample[] }> {
  const res = await fetch(metricsUrl);
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type")).toMatch(/^text\/plain/);
  const text = await res.text();
  return { text, samples: parseMetrics(text) };
}
/** The value of the one sample of `name` whose labels include `labels` (undefined when absent). */
function valueOf(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const hits = samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  if (hits.length > 1) throw new Error(`${name} ${JSON.stringify(labels)} matches ${hits.length} samples`);
  return hits[0]?.value;
}

const client = () =>
  createClient(KeyPairService, createConnectTransport({ baseUrl: api, httpVersion: "1.1" }));
const bearer = (t: string) => ({ authorization: `Bearer ${t}` });
async function codeOf(p: Promise<unknown>): Promise<Code | "OK"> {
  return p.then(
    () => "OK" as const,
    (e: unknown) => ConnectError.from(e).code,
  );
}

describe("grpc.health.v1.Health on the API port", () => {
  it("Check answers for the overall, the API and the liveness service, and NOT_FOUND otherwise", async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl: api }));
    // Ready means warm: readiness turns SERVING once the send path to the cloud has run once.
    await pollUntil(
      async () => (await health.check({ service: "" })).status === Status.SERVING,
      "readiness SERVING after the warm-up",
      10_000,
    );
    for (const service of ["", "keygate.v1.KeyPairService", "liveness"]) {
      expect((await health.check({ service })).status, service).toBe(Status.SERVING);
    }
    const err = await health.check({ service: "no.such.Service" }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    expect(err?.code).toBe(Code.NotFound);
    // Connect JSON over HTTP/1.1 too (what a curl-based probe would use).
    const h1 = createClient(Health, createConnectTransport({ baseUrl: api, httpVersion: "1.1" }));
    expect((await h1.check({ service: "" })).status).toBe(Status.SERVING);
  });
});

describe("/metrics after traffic", () => {
  it("exposes the documented keygate_ metrics with bounded labels and no instance id", async () => {
    const c = client();
    // ok
    expect(
      await codeOf(
        c.associateKeyPairs(
          {
            region: "ap-guangzhou",
            instanceIds: ["ins-gz000001"],
            keyIds: ["skey-aaaaaaaa"],
            idempotencyKey: "m-1",
          },
          { headers: bearer(TOKEN_OPS) },
        ),
      ),
    ).toBe("OK");
    // the same idempotency key again: replayed, no second upstream call
    expect(
      await codeOf(
        c.associateKeyPairs(
          {
            region: "ap-guangzhou",
            instanceIds: ["ins-gz000001"],
            keyIds: ["skey-aaaaaaaa"],
            idempotencyKey: "m-1",
          },
          { headers: bearer(TOKEN_OPS) },
        ),
      ),
    ).toBe("OK");
    // unauthenticated
    expect(
      await codeOf(
        c.associateKeyPairs({
          region: "ap-guangzhou",
          instanceIds: ["ins-gz000002"],
          keyIds: ["skey-aaaaaaaa"],
        }),
      ),
    ).toBe(Code.Unauthenticated);
    // outside the policy
    expect(
      await codeOf(
        c.associateKeyPairs(
          { region: "ap-guangzhou", instanceIds: ["ins-gz000002"], keyIds: ["skey-aaaaaaaa"] },
          { headers: bearer(TOKEN_NARROW) },
        ),
      ),
    ).toBe(Code.PermissionDenied);
    // malformed
    expect(
      await codeOf(
        c.associateKeyPairs(
          { region: "ap-guangzhou", instanceIds: ["ins-BAD"], keyIds: ["skey-aaaaaaaa"] },
          { headers: bearer(TOKEN_OPS) },
        ),
      ),
    ).toBe(Code.InvalidArgument);
    // the cloud says NotFound
    expect(
      await codeOf(
        c.associateKeyPairs(
          { region: "ap-guangzhou", instanceIds: ["ins-zzzzzzzz"], keyIds: ["skey-aaaaaaaa"] },
          { headers: bearer(TOKEN_OPS) },
        ),
      ),
    ).toBe(Code.NotFound);

    // A bad policy version is refused (and counted), then a good one is loaded.
    writeFileSync(policyFile, policy("  bogus: {}\n").replace("weight: 1\n  narrow", "wieght: 1\n  narrow"));
    await pollUntil(
      async () =>
        valueOf((await scrape()).samples, "keygate_policy_reloads_total", { result: "rejected" }) === 1,
      "the rejected reload to be counted",
    );
    const okBefore = valueOf((await scrape()).samples, "keygate_policy_reloads_total", { result: "ok" }) ?? 0;
    writeFileSync(policyFile, policy().replace("weight: 1\n  narrow", "weight: 2\n  narrow"));
    await pollUntil(
      async () =>
        (valueOf((await scrape()).samples, "keygate_policy_reloads_total", { result: "ok" }) ?? 0) > okBefore,
      "the good reload to be counted",
    );

    const { text, samples } = await scrape();
    const A = "AssociateInstancesKeyPairs";
    // requests by tenant / outcome / code
    expect(valueOf(samples, "keygate_requests_total", { tenant: "ops", outcome: "ok", code: "OK" })).toBe(2);
    expect(
      valueOf(samples, "keygate_requests_total", {
        tenant: "(unauthenticated)",
        outcome: "denied",
        code: "UNAUTHENTICATED",
      }),
    ).toBe(1);
    expect(
      valueOf(samples, "keygate_requests_total", {
        tenant: "narrow",
        outcome: "denied",
        code: "POLICY_DENIED",
      }),
    ).toBe(1);
    expect(
      valueOf(samples, "keygate_requests_total", { tenant: "ops", code: "InvalidInstanceId.Malformed" }),
    ).toBe(1);
    expect(
      valueOf(samples, "keygate_requests_total", {
        tenant: "ops",
        outcome: "error",
        code: "InvalidInstanceId.NotFound",
      }),
    ).toBe(1);
    expect(valueOf(samples, "keygate_request_duration_seconds_count", { outcome: "ok" })).toBe(2);
    // limiter: waits observed per granted token, queue depth sampled at scrape time
    expect(valueOf(samples, "keygate_limiter_wait_seconds_count", { action: A })).toBe(2);
    expect(valueOf(samples, "keygate_limiter_wait_seconds_bucket", { action: A, le: "+Inf" })).toBe(2);
    expect(valueOf(samples, "keygate_limiter_tokens_granted_total", { action: A })).toBe(2);
    expect(valueOf(samples, "keygate_limiter_queue_depth", { action: A })).toBe(0);
    // upstream calls by code: one OK, one NotFound (the replay and the refusals never reached it)
    expect(valueOf(samples, "keygate_upstream_calls_total", { action: A, code: "OK" })).toBe(1);
    expect(
      valueOf(samples, "keygate_upstream_calls_total", { action: A, code: "InvalidInstanceId.NotFound" }),
    ).toBe(1);
    expect(valueOf(samples, "keygate_upstream_duration_seconds_count", { action: A })).toBe(2);
    expect(valueOf(samples, "keygate_dedup_joins_total")).toBe(1);
    expect(valueOf(samples, "keygate_lease_wait_seconds_count")).toBe(2);
    expect(valueOf(samples, "keygate_policy_reloads_total", { result: "rejected" })).toBe(1);
    expect(valueOf(samples, "keygate_policy_last_reload_success_timestamp_seconds")).toBeGreaterThan(0);
    expect(valueOf(samples, "keygate_inflight_requests")).toBe(0);
    expect(valueOf(samples, "keygate_redis_errors_total")).toBe(0);
    // default process metrics carry the prefix too
    expect(valueOf(samples, "keygate_process_cpu_user_seconds_total")).toBeGreaterThan(0);

    // Every metric is keygate's, and no label value is an instance id, a key id, a token or a secret.
    for (const s of samples) expect(s.name.startsWith("keygate_"), s.name).toBe(true);
    expect(text).not.toMatch(/ins-[A-Za-z0-9]+/);
    expect(text).not.toMatch(/skey-[A-Za-z0-9]+/);
    for (const secret of [TOKEN_OPS, TOKEN_NARROW, sha256(TOKEN_OPS), EMULATOR_SECRET_KEY]) {
      expect(text).not.toContain(secret);
    }
    // keygate_build_info's version / revision / node have one value per process.
    const allowedLabels = new Set(["tenant", "outcome", "code", "action", "result", "le", "quantile"]);
    for (const s of samples.filter((s) => s.name === "keygate_build_info")) {
      expect(Object.keys(s.labels).sort()).toEqual(["node", "revision", "version"]);
      expect(s.value).toBe(1);
    }
    const labelNames = new Set(
      samples
        .filter((s) => !/^keygate_(process_|nodejs_|build_info$)/.test(s.name))
        .flatMap((s) => Object.keys(s.labels)),
    );
    for (const l of labelNames) expect(allowedLabels.has(l), `label ${l}`).toBe(true);
  });
});

describe("the README's operating section and the code name the same metrics", () => {
  it("every keygate_ name in the docs exists, and every keygate metric is documented", async () => {
    const registered = new Map<string, string>(
      (await createMetrics({ defaultMetrics: false }).registry.getMetricsAsJSON()).map((m) => [
        m.name,
        String(m.type),
      ]),
    );
    const readme = readFileSync(join(ROOT, "README.md"), "utf8");
    const doc = readme.slice(readme.indexOf("## Operating keygate"));
    const mentioned = new Set<string>();
    for (const [name] of doc.matchAll(/keygate_[a-z0-9_]*[a-z0-9]/g)) {
      // `keygate_process_*` and `keygate_nodejs_*`: the default process metrics, not ours to list.
      if (/^keygate_(process|nodejs)$/.test(name)) continue;
      // Histogram series are named after the histogram.
      const base = name.replace(/_(bucket|sum|count)$/, "");
      mentioned.add(registered.get(base) === "histogram" ? base : name);
    }
    expect([...mentioned].filter((n) => !registered.has(n))).toEqual([]);
    expect([...registered.keys()].filter((n) => !mentioned.has(n))).toEqual([]);
  });
});

describe("Watch streams readiness changes", () => {
  // Last: it drains the shared server.
  it("reports NOT_SERVING for readiness on SIGTERM while liveness stays SERVING", async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl: api }));
    const streams = ["", "keygate.v1.KeyPairService", "liveness", "no.such.Service"];
    const seen = new Map<string, Status[]>(streams.map((s) => [s, []]));
    const abort = new AbortController();
    const ended: string[] = [];
    const watching = streams.map((service) =>
      (async () => {
        for await (const r of health.watch({ service }, { signal: abort.signal }))
          seen.get(service)?.push(r.status);
        ended.push(service);
      })().catch(() => undefined),
    );
    await pollUntil(
      () => streams.every((s) => (seen.get(s)?.length ?? 0) >= 1),
      "the first status of every Watch",
    );
    expect(seen.get("")).toEqual([Status.SERVING]);
    expect(seen.get("liveness")).toEqual([Status.SERVING]);
    expect(seen.get("no.such.Service")).toEqual([Status.SERVICE_UNKNOWN]);

    child.signal("SIGTERM");
    await pollUntil(
      () =>
        seen.get("")?.at(-1) === Status.NOT_SERVING &&
        seen.get("keygate.v1.KeyPairService")?.at(-1) === Status.NOT_SERVING,
      `readiness Watches to report NOT_SERVING (seen ${JSON.stringify([...seen])})`,
    );
    const exit = await child.exited;
    abort.abort();
    await Promise.all(watching);
    expect(exit.code).toBe(0);
    expect(seen.get("")).toEqual([Status.SERVING, Status.NOT_SERVING]);
    expect(seen.get("keygate.v1.KeyPairService")).toEqual([Status.SERVING, Status.NOT_SERVING]);
    expect(seen.get("liveness")).toEqual([Status.SERVING]);
    // The streams ended cleanly (status OK after their last message), not cut off by the exit.
    expect(ended.sort()).toEqual([...streams].sort());
  });
});
