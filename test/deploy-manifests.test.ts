/**
 * Renders every kustomization under deploy/ offline (`kubectl kustomize`, no cluster), validates each object
 * against the Kubernetes schemas (kubernetes-models) and checks the hardening and operational rules the
 * gateway depends on: probes that match the health service, a grace period that covers the drain, a policy
 * mount that receives updates, and no secret in a ConfigMap. Also checks the container build file.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { posix } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import { ConfigMap } from "kubernetes-models/v1/ConfigMap";
import { Namespace } from "kubernetes-models/v1/Namespace";
import { Secret } from "kubernetes-models/v1/Secret";
import { Service } from "kubernetes-models/v1/Service";
import { ServiceAccount } from "kubernetes-models/v1/ServiceAccount";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler";
import { NetworkPolicy } from "kubernetes-models/networking.k8s.io/v1/NetworkPolicy";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1/PodDisruptionBudget";
import type { IContainer } from "kubernetes-models/v1/Container";
import type { IPodSpec } from "kubernetes-models/v1/PodSpec";
import type { IDeployment } from "kubernetes-models/apps/v1/Deployment";
import type { IHorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler";
import type { INetworkPolicy } from "kubernetes-models/networking.k8s.io/v1/NetworkPolicy";
import type { IPodDisruptionBudget } from "kubernetes-models/policy/v1/PodDisruptionBudget";
import type { IService } from "kubernetes-models/v1/Service";
import type { IConfigMap } from "kubernetes-models/v1/ConfigMap";
import type { ISecret } from "kubernetes-models/v1/Secret";
import type { IServiceAccount } from "kubernetes-models/v1/ServiceAccount";
import { loadSettings } from "../src/config/settings.js";

const root = fileURLToPath(new URL("..", import.meta.url));

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [field: string]: unknown;
}

/** Every kind the manifests may contain; an object of any other kind fails the schema test. */
const models: Record<string, new (data: Record<string, unknown>) => { validate(): void }> = {
  "v1/ConfigMap": ConfigMap,
  "v1/Namespace": Namespace,
  "v1/Secret": Secret,
  "v1/Service": Service,
  "v1/ServiceAccount": ServiceAccount,
  "apps/v1/Deployment": Deployment,
  "autoscaling/v2/HorizontalPodAutoscaler": HorizontalPodAutoscaler,
  "networking.k8s.io/v1/NetworkPolicy": NetworkPolicy,
  "policy/v1/PodDisruptionBudget": PodDisruptionBudget,
};

function render(dir: string): K8sObject[] {
  const out = execFileSync("kubectl", ["kustomize", posix.join(root, dir)], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
  return parseAllDocuments(out).map((doc) => {
    expect(doc.errors).toEqual([]);
    return doc.toJS() as K8sObject;
  });
}

const ofKind = <T>(objs: K8sObject[], kind: string) => objs.filter((o) => o.kind === kind) as unknown as T[];
const byName = <T extends { metadata?: { name?: string } }>(items: T[], name: string): T => {
  const found = items.find((o) => o.metadata?.name === name);
  if (!found) throw new Error(`no object named ${name}`);
  return found;
};

/** The gateway's own objects carry these labels; the dev Redis and emulator do not. */
const gatewayLabels = { "app.kubernetes.io/name": "keygate", "app.kubernetes.io/component": "gateway" };

const DRAIN_MS_DEFAULT = 20_000; // keygate's own default for KEYGATE_DRAIN_MS

interface Variant {
  dir: string;
  /** Highly available: at least two replicas, HPA minimum at least two. */
  ha: boolean;
  /** Ships the credentials Secret (dev and base only; prod creates it out of band or uses OIDC). */
  hasSecret: boolean;
  oidc: boolean;
}

const variants: Variant[] = [
  { dir: "deploy/base", ha: true, hasSecret: true, oidc: false },
  { dir: "deploy/overlays/dev", ha: false, hasSecret: true, oidc: false },
  { dir: "deploy/overlays/prod", ha: true, hasSecret: false, oidc: false },
  { dir: "deploy/overlays/prod-oidc", ha: true, hasSecret: false, oidc: true },
];

describe.each(variants)("kustomize $dir", ({ dir, ha, hasSecret, oidc }) => {
  const objs = render(dir);
  const deployments = ofKind<IDeployment>(objs, "Deployment");
  const gateway = byName(deployments, "keygate");
  const podSpec = gateway.spec?.template.spec as IPodSpec;
  const container = podSpec.containers.find((c) => c.name === "keygate") as IContainer;
  const configMaps = ofKind<IConfigMap>(objs, "ConfigMap");
  const settingsMap = configMaps.find((c) => c.metadata?.name?.startsWith("keygate-settings"));
  const settings = settingsMap?.data ?? {};

  it("validates every object against the Kubernetes schemas", () => {
    expect(objs.length).toBeGreaterThan(0);
    for (const obj of objs) {
      const Model = models[`${obj.apiVersion}/${obj.kind}`];
      expect(Model, `${obj.apiVersion} ${obj.kind} ${obj.metadata.name} has no schema here`).toBeDefined();
      expect(() => new Model!(obj).validate(), `${obj.kind}/${obj.metadata.name}`).not.toThrow();
    }
  });

  it("gives keygate an environment its own settings parser accepts", () => {
    const secret = ofKind<ISecret>(objs, "Secret").find((x) => x.metadata?.name === "keygate-credentials");
    // Where the Secret is created out of band, stand in for it.
    const secretEnv = oidc
      ? {}
      : (secret?.stringData ?? { TENCENTCLOUD_SECRET_ID: "AKIDexample", TENCENTCLOUD_SECRET_KEY: "example" });
    const inline = Object.fromEntries((container.env ?? []).map((e) => [e.name, e.value]));
    const parsed = loadSettings({ ...settings, ...secretEnv, ...inline }, "serve");
    expect(parsed.redisUrl).toBe(settings.KEYGATE_REDIS_URL);
    expect(parsed.credentials.kind).toBe(oidc ? "oidc" : "static");
    expect(parsed.port).toBe(8080);
    expect(parsed.metricsPort).toBe(9090);
  });

  it("runs every pod under the restricted security profile with resources and probes", () => {
    expect(deployments.length).toBeGreaterThan(0);
    for (const d of deployments) {
      const spec = d.spec?.template.spec as IPodSpec;
      const where = `Deployment/${d.metadata?.name}`;
      expect(spec.automountServiceAccountToken, where).toBe(false);
      expect(spec.enableServiceLinks, where).toBe(false);
      expect(spec.hostNetwork ?? false, where).toBe(false);
      expect(spec.hostPID ?? false, where).toBe(false);
      expect(spec.hostIPC ?? false, where).toBe(false);
      const pod = spec.securityContext ?? {};
      for (const c of [...spec.containers, ...(spec.initContainers ?? [])]) {
        const at = `${where} container ${c.name}`;
        const sc = c.securityContext ?? {};
        expect(sc.runAsNonRoot ?? pod.runAsNonRoot, at).toBe(true);
        const uid = sc.runAsUser ?? pod.runAsUser;
        expect(uid, at).toBeGreaterThan(0);
        expect(sc.readOnlyRootFilesystem, at).toBe(true);
        expect(sc.allowPrivilegeEscalation, at).toBe(false);
        expect(sc.privileged ?? false, at).toBe(false);
        expect(sc.capabilities?.drop, at).toContain("ALL");
        expect(sc.capabilities?.add ?? [], at).toEqual([]);
        expect((sc.seccompProfile ?? pod.seccompProfile)?.type, at).toBe("RuntimeDefault");
        for (const r of ["cpu", "memory"]) {
          expect(c.resources?.requests?.[r], `${at} requests.${r}`).toBeDefined();
        }
        expect(c.resources?.limits?.memory, `${at} limits.memory`).toBeDefined();
        expect(c.readinessProbe, at).toBeDefined();
        expect(c.livenessProbe, at).toBeDefined();
        expect(c.startupProbe, at).toBeDefined();
        expect(c.image, at).toMatch(/^[^@\s]+(:[\w.-]+|@sha256:[0-9a-f]{64})$/);
        expect(c.image, at).not.toMatch(/:latest$/);
      }
    }
  });

  it("probes the gRPC health service: overall for readiness, 'liveness' for liveness and startup", () => {
    const port = Number(settings.KEYGATE_PORT ?? 8080);
    expect(container.ports?.find((p) => p.name === "api")?.containerPort).toBe(port);
    expect(container.ports?.find((p) => p.name === "metrics")?.containerPort).toBe(
      Number(settings.KEYGATE_METRICS_PORT ?? 9090),
    );
    expect(container.readinessProbe?.grpc).toEqual({ port });
    expect(container.livenessProbe?.grpc).toEqual({ port, service: "liveness" });
    expect(container.startupProbe?.grpc?.port).toBe(port);
    expect(container.args).toEqual(["serve"]);
  });

  it("gives the drain its time: grace period >= preStop sleep + KEYGATE_DRAIN_MS", () => {
    const drainS = Number(settings.KEYGATE_DRAIN_MS ?? DRAIN_MS_DEFAULT) / 1000;
    const preStopS = container.lifecycle?.preStop?.sleep?.seconds ?? 0;
    expect(preStopS).toBeGreaterThan(0);
    expect(podSpec.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(preStopS + drainS);
  });

  it("mounts the policy ConfigMap as a directory (no subPath) at KEYGATE_POLICY_FILE", () => {
    const policyFile = container.env?.find((e) => e.name === "KEYGATE_POLICY_FILE")?.value;
    expect(policyFile).toBe("/etc/keygate/policy/policy.yaml");
    const volume = podSpec.volumes?.find((v) => v.configMap?.name === "keygate-policy");
    expect(volume, "policy volume").toBeDefined();
    const mount = container.volumeMounts?.find((m) => m.name === volume?.name);
    expect(mount?.mountPath).toBe(posix.dirname(policyFile!));
    expect(mount?.subPath).toBeUndefined();
    expect(mount?.subPathExpr).toBeUndefined();
    expect(mount?.readOnly).toBe(true);
    // Same name as the volume refers to: a hash suffix would turn every policy edit into a rollout.
    const policyMap = byName(configMaps, "keygate-policy");
    const policy = parse(policyMap.data?.["policy.yaml"] ?? "") as {
      tenants: Record<string, { tokens_sha256: string[] }>;
    };
    const tenants = Object.values(policy.tenants);
    expect(tenants.length).toBeGreaterThan(0);
    for (const t of tenants) for (const h of t.tokens_sha256) expect(h).toMatch(/^[0-9a-f]{64}$/);
    expect(container.volumeMounts?.find((m) => m.mountPath === "/tmp")).toBeDefined();
  });

  it("configures a shared Redis and consistent settings", () => {
    expect(settingsMap, "keygate-settings ConfigMap").toBeDefined();
    expect(settings.KEYGATE_REDIS_URL).toMatch(/^rediss?(\+sentinel|\+cluster)?:\/\//);
    expect(settings.KEYGATE_ON_STORE_DOWN ?? "fail-closed").toBe("fail-closed");
    const hpa = byName(ofKind<IHorizontalPodAutoscaler>(objs, "HorizontalPodAutoscaler"), "keygate");
    expect(Number(settings.KEYGATE_REPLICAS)).toBeGreaterThanOrEqual(hpa.spec?.maxReplicas ?? 0);
    const refs = container.envFrom?.map((e) => e.configMapRef?.name ?? e.secretRef?.name);
    expect(refs).toContain(settingsMap?.metadata?.name);
    expect(refs?.includes("keygate-credentials")).toBe(!oidc);
    if (oidc) {
      expect(settings.KEYGATE_CREDENTIALS).toBe("oidc");
      for (const v of ["TKE_REGION", "TKE_PROVIDER_ID", "TKE_WEB_IDENTITY_TOKEN_FILE", "TKE_ROLE_ARN"]) {
        expect(settings[v], v).toBeTruthy();
      }
      const tokenDir = posix.dirname(settings.TKE_WEB_IDENTITY_TOKEN_FILE!);
      const mount = container.volumeMounts?.find((m) => m.mountPath === tokenDir);
      const volume = podSpec.volumes?.find((v) => v.name === mount?.name);
      expect(volume?.projected?.sources?.[0]?.serviceAccountToken?.path).toBe(
        posix.basename(settings.TKE_WEB_IDENTITY_TOKEN_FILE!),
      );
    }
  });

  it("keeps secret values out of ConfigMaps", () => {
    const secrets = ofKind<ISecret>(objs, "Secret");
    expect(secrets.length > 0).toBe(hasSecret);
    const secretValues = secrets.flatMap((s) => [
      ...Object.values(s.stringData ?? {}),
      ...Object.values(s.data ?? {}).map((v) => Buffer.from(v, "base64").toString("utf8")),
    ]);
    for (const cm of configMaps) {
      for (const [key, value] of Object.entries(cm.data ?? {})) {
        const at = `ConfigMap/${cm.metadata?.name} ${key}`;
        expect(key, at).not.toMatch(/SECRET|PASSWORD|SESSION_TOKEN|PRIVATE_KEY/i);
        expect(value, at).not.toMatch(/:\/\/[^/@\s]*:[^/@\s]+@/); // a URL with a password
        for (const s of secretValues) if (s.length >= 8) expect(value, at).not.toContain(s);
      }
    }
  });

  it("has the objects that run it safely: Service, headless Service, PDB, HPA, NetworkPolicy, ServiceAccount", () => {
    const selects = (sel: Record<string, string> | undefined) => expect(sel).toEqual(gatewayLabels);
    selects(gateway.spec?.selector.matchLabels);

    const service = byName(ofKind<IService>(objs, "Service"), "keygate");
    selects(service.spec?.selector);
    const api = service.spec?.ports?.find((p) => p.name === "api");
    expect(api?.appProtocol).toBe("kubernetes.io/h2c");
    expect(service.spec?.ports?.map((p) => p.port).sort()).toEqual([8080, 9090]);
    expect(byName(ofKind<IService>(objs, "Service"), "keygate-headless").spec?.clusterIP).toBe("None");

    const pdb = byName(ofKind<IPodDisruptionBudget>(objs, "PodDisruptionBudget"), "keygate");
    selects(pdb.spec?.selector?.matchLabels);
    expect(pdb.spec?.maxUnavailable ?? pdb.spec?.minAvailable).toBeDefined();

    const hpa = byName(ofKind<IHorizontalPodAutoscaler>(objs, "HorizontalPodAutoscaler"), "keygate");
    expect(hpa.spec?.scaleTargetRef).toMatchObject({ kind: "Deployment", name: "keygate" });
    expect(hpa.spec?.metrics?.[0]?.resource?.name).toBe("cpu");

    const sa = byName(ofKind<IServiceAccount>(objs, "ServiceAccount"), "keygate");
    expect(podSpec.serviceAccountName).toBe("keygate");
    expect(sa.automountServiceAccountToken).toBe(false);

    if (ha) {
      expect(gateway.spec?.replicas).toBeGreaterThanOrEqual(2);
      expect(hpa.spec?.minReplicas).toBeGreaterThanOrEqual(2);
    }
    expect(podSpec.topologySpreadConstraints?.map((t) => t.topologyKey).sort()).toEqual([
      "kubernetes.io/hostname",
      "topology.kubernetes.io/zone",
    ]);
  });

  it("lets in only clients and Prometheus, and out only DNS, Redis and HTTPS", () => {
    const np = byName(ofKind<INetworkPolicy>(objs, "NetworkPolicy"), "keygate");
    expect(np.spec?.podSelector.matchLabels).toEqual(gatewayLabels);
    expect(np.spec?.policyTypes?.sort()).toEqual(["Egress", "Ingress"]);
    const ingressPorts = np.spec?.ingress?.flatMap((r) => {
      expect(r.from?.length, "every ingress rule names its sources").toBeGreaterThan(0);
      return r.ports?.map((p) => p.port) ?? [];
    });
    expect(ingressPorts?.sort()).toEqual([8080, 9090]);
    const egressPorts = new Set(np.spec?.egress?.flatMap((r) => r.ports?.map((p) => p.port) ?? []));
    for (const p of [53, 6379, 26379, 443]) expect(egressPorts.has(p), `egress ${p}`).toBe(true);
    for (const r of np.spec?.egress ?? [])
      expect(r.ports?.length, "no egress rule opens all ports").toBeGreaterThan(0);
  });
});

describe("schema validation", () => {
  it("is not vacuous: a malformed Deployment is rejected", () => {
    const broken = {
      apiVersion: "apps/v1",
      kind: "Deployment",
      metadata: { name: "x" },
      spec: { replicas: "3" },
    };
    expect(() => new Deployment(broken as unknown as IDeployment).validate()).toThrow();
  });
});

describe("Dockerfile", () => {
  const dockerfile = readFileSync(posix.join(root, "Dockerfile"), "utf8");
  const lines = dockerfile
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  const stages = lines.filter((l) => /^FROM\s/i.test(l));
  const finalStage = lines.slice(lines.lastIndexOf(stages.at(-1)!));

  // The Node major and the build stage: test/cli-dockerfile.test.ts.
  it("is a multi-stage build on a pinned Node image", () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    expect(dockerfile).toMatch(/^ARG NODE_IMAGE=node:\d+\.\d+\.\d+-[\w-]+$/m);
    expect(dockerfile).not.toMatch(/:latest\b/);
    expect(dockerfile).toMatch(/npm ci --omit=dev/);
  });

  it("runs as a numeric non-root user with an exec-form entrypoint", () => {
    const user = finalStage.filter((l) => /^USER\s/i.test(l)).at(-1);
    expect(user).toMatch(/^USER\s+[1-9]\d*(:[1-9]\d*)?$/);
    // The compiled bin, with node's flags (test/cli-dockerfile.test.ts has the rest).
    expect(
      finalStage.some((l) => /^ENTRYPOINT \["node", ("--[\w=-]+", )*"bin\/keygate\.js"\]$/.test(l)),
    ).toBe(true);
    expect(finalStage).toContain('CMD ["serve"]');
    expect(finalStage).toContain("EXPOSE 8080 9090");
  });

  it("copies only what runs and ignores the rest", () => {
    const copies = finalStage.filter((l) => /^COPY\s/i.test(l)).join("\n");
    expect(copies).not.toMatch(/\b(test|proto|deploy|docs|bench)\b/);
    expect(copies).not.toMatch(/COPY \. /);
    const ignore = readFileSync(posix.join(root, ".dockerignore"), "utf8");
    expect(ignore).toMatch(/^\*\*$/m);
    expect(existsSync(posix.join(root, ".dockerignore"))).toBe(true);
  });
});
