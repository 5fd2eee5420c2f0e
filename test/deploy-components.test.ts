/**
 * The optional kustomize components, rendered offline the way a user applies them (an overlay of
 * overlays/prod that lists them): `components/tls` (TLS on the API port, probes moved to plain HTTP on
 * the metrics port) and `components/monitoring` (ServiceMonitor + PrometheusRule). The rules are checked
 * by promtool (syntax and unit tests of alerts firing), against the metrics keygate really exports, and
 * against the README's alert table.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { parseAllDocuments, stringify } from "yaml";
import { Deployment, type IDeployment } from "kubernetes-models/apps/v1/Deployment";
import type { IService } from "kubernetes-models/v1/Service";
import type { IConfigMap } from "kubernetes-models/v1/ConfigMap";
import { loadSettings } from "../src/config/settings.js";
import { createMetrics } from "../src/observability/metrics.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const work = mkdtempSync(join(tmpdir(), "keygate-components-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  spec?: Record<string, unknown>;
}

/** Renders overlays/prod plus `components` from an overlay in a temp dir (kustomize wants relative paths). */
function renderWith(components: string[]): K8sObject[] {
  const dir = mkdtempSync(join(work, "overlay-"));
  const rel = (p: string) => relative(dir, join(root, p));
  writeFileSync(
    join(dir, "kustomization.yaml"),
    stringify({
      apiVersion: "kustomize.config.k8s.io/v1beta1",
      kind: "Kustomization",
      resources: [rel("deploy/overlays/prod")],
      components: components.map((c) => rel(`deploy/components/${c}`)),
    }),
  );
  const out = execFileSync("kubectl", ["kustomize", dir], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
  return parseAllDocuments(out).map((doc) => {
    expect(doc.errors).toEqual([]);
    return doc.toJS() as K8sObject;
  });
}

const one = <T>(objs: K8sObject[], kind: string, name: string) => {
  const found = objs.find((o) => o.kind === kind && o.metadata.name === name);
  if (!found) throw new Error(`no ${kind}/${name}`);
  return found as unknown as T;
};

describe("components/tls", () => {
  const objs = renderWith(["tls"]);
  const deployment = one<IDeployment>(objs, "Deployment", "keygate");
  const pod = deployment.spec!.template.spec!;
  const container = pod.containers.find((c) => c.name === "keygate")!;
  const settings =
    objs
      .filter((o) => o.kind === "ConfigMap")
      .map((o) => o as unknown as IConfigMap)
      .find((c) => c.metadata?.name?.startsWith("keygate-settings"))?.data ?? {};

  it("still renders a valid Deployment", () => {
    expect(() => new Deployment(deployment).validate()).not.toThrow();
  });

  it("turns TLS on from the keygate-tls Secret, in a form keygate's settings parser accepts", () => {
    const parsed = loadSettings(
      {
        ...settings,
        TENCENTCLOUD_SECRET_ID: "AKIDexample",
        TENCENTCLOUD_SECRET_KEY: "example",
        KEYGATE_POLICY_FILE: "/p",
      },
      "serve",
    );
    expect(parsed.tls).toEqual({
      cert: "/etc/keygate/tls/tls.crt",
      key: "/etc/keygate/tls/tls.key",
      clientCa: undefined,
    });
    const mount = container.volumeMounts?.find((m) => m.mountPath === "/etc/keygate/tls");
    expect(mount?.readOnly).toBe(true);
    const volume = pod.volumes?.find((v) => v.name === mount?.name);
    expect(volume?.secret?.secretName).toBe("keygate-tls");
  });

  it("probes /livez and /readyz over plain HTTP on the metrics port instead of plain-text gRPC", () => {
    const metricsPort = container.ports?.find((p) => p.name === "metrics")?.containerPort;
    expect(metricsPort).toBe(loadSettings({ ...settings }, "dev").metricsPort);
    expect(container.readinessProbe?.httpGet).toEqual({ path: "/readyz", port: "metrics" });
    expect(container.livenessProbe?.httpGet).toEqual({ path: "/livez", port: "metrics" });
    expect(container.startupProbe?.httpGet).toEqual({ path: "/livez", port: "metrics" });
    for (const p of [container.readinessProbe, container.livenessProbe, container.startupProbe]) {
      expect(p?.grpc).toBeUndefined();
      expect(p?.httpGet?.scheme ?? "HTTP").toBe("HTTP");
    }
  });

  it("marks the API port as TLS on both Services", () => {
    for (const name of ["keygate", "keygate-headless"]) {
      const svc = one<IService>(objs, "Service", name);
      expect(svc.spec?.ports?.find((p) => p.name === "api")?.appProtocol, name).toBe("https");
    }
  });

  it("leaves the base on gRPC probes", () => {
    const plain = one<IDeployment>(renderWith([]), "Deployment", "keygate");
    const c = plain.spec!.template.spec!.containers[0]!;
    expect(c.readinessProbe?.grpc).toEqual({ port: 8080 });
  });
});

interface Rule {
  alert?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

describe("components/monitoring", () => {
  const objs = renderWith(["monitoring"]);
  const rule = one<{ spec: { groups: { name: string; rules: Rule[] }[] } }>(
    objs,
    "PrometheusRule",
    "keygate",
  );
  const rules = rule.spec.groups.flatMap((g) => g.rules);
  const rulesFile = join(work, "rules.yaml");
  writeFileSync(rulesFile, stringify({ groups: rule.spec.groups }));

  it("has a ServiceMonitor that selects the keygate Service's metrics port", () => {
    const sm = one<{
      apiVersion: string;
      spec: {
        selector: { matchLabels: Record<string, string> };
        endpoints: { port: string; path: string }[];
      };
    }>(objs, "ServiceMonitor", "keygate");
    expect(sm.apiVersion).toBe("monitoring.coreos.com/v1");
    expect(sm.spec.endpoints).toEqual([expect.objectContaining({ port: "metrics", path: "/metrics" })]);
    const selected = objs.filter(
      (o) =>
        o.kind === "Service" &&
        Object.entries(sm.spec.selector.matchLabels).every(([k, v]) => o.metadata.labels?.[k] === v),
    ) as unknown as IService[];
    const withPort = selected.filter((s) => s.spec?.ports?.some((p) => p.name === "metrics"));
    expect(withPort.map((s) => s.metadata?.name)).toEqual(["keygate"]);
    expect(rule).toMatchObject({ apiVersion: "monitoring.coreos.com/v1" });
  });

  it("passes promtool check rules", () => {
    const out = execFileSync("promtool", ["check", "rules", rulesFile], { encoding: "utf8" });
    expect(out).toContain(`SUCCESS: ${rules.length} rules found`);
  });

  it("uses only metrics and labels keygate exports (plus the scrape's namespace and pod)", async () => {
    const metrics = createMetrics({ defaultMetrics: true });
    const exported = new Map<string, Set<string>>();
    for (const m of metrics.registry.getMetricsAsArray()) {
      const labels = new Set((m as unknown as { labelNames: string[] }).labelNames);
      exported.set(m.name, labels);
    }
    const targetLabels = ["namespace", "pod"];
    expect(await metrics.registry.metrics()).toContain("keygate_build_info");
    for (const r of rules) {
      const at = r.alert ?? r.expr;
      const names = [...r.expr.matchAll(/\b(keygate_[a-z0-9_]+)/g)].map((m) => m[1]!);
      expect(names.length, at).toBeGreaterThan(0);
      const used = new Set<string>();
      for (const raw of names) {
        const name = exported.has(raw) ? raw : raw.replace(/_(bucket|sum|count)$/, "");
        expect(exported.has(name), `${at}: ${raw} is not a keygate metric`).toBe(true);
        if (raw !== name)
          expect(raw.endsWith("_bucket") || raw.endsWith("_sum") || raw.endsWith("_count")).toBe(true);
        exported.get(name)!.forEach((l) => used.add(l));
      }
      for (const m of r.expr.matchAll(/\{([^}]*)\}/g)) {
        for (const matcher of m[1]!.split(",")) {
          const label = matcher.trim().split(/[=!~]/)[0]!;
          expect(used.has(label), `${at}: label ${label}`).toBe(true);
        }
      }
      for (const m of r.expr.matchAll(/\bby \(([^)]*)\)/g)) {
        for (const label of m[1]!.split(",").map((s) => s.trim())) {
          expect(
            used.has(label) || targetLabels.includes(label) || label === "le",
            `${at}: by ${label}`,
          ).toBe(true);
        }
      }
      expect(r.labels?.severity, at).toMatch(/^(critical|warning|info)$/);
      expect(r.annotations?.summary, at).toBeTruthy();
    }
  });

  it("carries every alert of the README's table, and no other", () => {
    const readme = readFileSync(join(root, "README.md"), "utf8");
    const section = readme.slice(readme.indexOf("### Metrics worth alerting on"));
    const table = section.slice(0, section.indexOf("\n\n", section.indexOf("| alert")));
    const named = [...table.matchAll(/^\| `(Keygate\w+)`/gm)].map((m) => m[1]);
    expect(named.length).toBeGreaterThan(5);
    expect(rules.map((r) => r.alert).sort()).toEqual([...named].sort());
    for (const r of rules) expect(table, r.alert).toContain(r.expr.replace(/\s+/g, " ").slice(0, 30));
  });

  it("fires the alerts it should on synthetic series (promtool test rules)", () => {
    const testFile = join(work, "rules.test.yaml");
    const series = (name: string, values: string) => ({ series: name, values });
    writeFileSync(
      testFile,
      stringify({
        rule_files: [rulesFile],
        evaluation_interval: "1m",
        tests: [
          {
            interval: "1m",
            input_series: [
              series('keygate_redis_errors_total{namespace="keygate",pod="keygate-a"}', "0+10x20"),
              series('keygate_redis_errors_total{namespace="keygate",pod="keygate-b"}', "0x20"),
              series(
                'keygate_upstream_calls_total{namespace="keygate",pod="keygate-a",action="AssociateInstancesKeyPairs",code="OK"}',
                "0+60x20",
              ),
              series(
                'keygate_upstream_calls_total{namespace="keygate",pod="keygate-a",action="AssociateInstancesKeyPairs",code="AuthFailure.SignatureFailure"}',
                "0x5 1+1x15",
              ),
              series(
                'keygate_policy_reloads_total{namespace="keygate",pod="keygate-b",result="rejected"}',
                "0x10 1x10",
              ),
              series('keygate_store_suspect{namespace="keygate",pod="keygate-a"}', "0x20"),
            ],
            alert_rule_test: [
              {
                eval_time: "10m",
                alertname: "KeygateRedisFailing",
                exp_alerts: [
                  {
                    exp_labels: { severity: "critical", namespace: "keygate", pod: "keygate-a" },
                    exp_annotations: {
                      summary: "keygate keygate-a cannot use Redis",
                      description:
                        "Redis operations fail (166.7m/s); requests are refused STORE_UNAVAILABLE.",
                    },
                  },
                ],
              },
              {
                eval_time: "10m",
                alertname: "KeygateUpstreamAuthFailure",
                exp_alerts: [
                  {
                    exp_labels: {
                      severity: "critical",
                      namespace: "keygate",
                      code: "AuthFailure.SignatureFailure",
                    },
                    exp_annotations: {
                      summary: "The cloud refuses keygate's credentials (AuthFailure.SignatureFailure)",
                      description:
                        "Keys rotated, wrong or missing a permission: every AssociateKeyPairs call fails UNAVAILABLE.",
                    },
                  },
                ],
              },
              { eval_time: "5m", alertname: "KeygateBadPolicyPushed", exp_alerts: [] },
              {
                eval_time: "12m",
                alertname: "KeygateBadPolicyPushed",
                exp_alerts: [
                  {
                    exp_labels: { severity: "warning", namespace: "keygate", pod: "keygate-b" },
                    exp_annotations: {
                      summary: "keygate keygate-b refused a new policy file",
                      description:
                        "The previous policy is still in force; run `keygate policy check` on the file you pushed.",
                    },
                  },
                ],
              },
              { eval_time: "20m", alertname: "KeygateStoreSuspect", exp_alerts: [] },
              { eval_time: "20m", alertname: "KeygateUpstreamFailing", exp_alerts: [] },
            ],
          },
        ],
      }),
    );
    const out = execFileSync("promtool", ["test", "rules", testFile], { encoding: "utf8" });
    expect(out).toContain("SUCCESS");
  });
});
