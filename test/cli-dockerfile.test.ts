/**
 * The container build, checked without a Docker engine (none runs here): the stages, what each copies, the
 * Node major against package.json and the Node running this suite (CI's), the labels, and that the
 * production install leaves tsx and esbuild out. docs/decisions/deploy.md.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { imageEntrypoint } from "./support/build.js";
import { ROOT } from "./support/process.js";

const dockerfile = readFileSync(join(ROOT, "Dockerfile"), "utf8");
const dockerignore = readFileSync(join(ROOT, ".dockerignore"), "utf8");
const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as {
  version: string;
  engines: { node: string };
};

/** Instruction lines, continuations joined, comments dropped. */
const instructions = dockerfile
  .replace(/\\\n/g, " ")
  .split("\n")
  .map((l) => l.trim())
  .filter((l) => l !== "" && !l.startsWith("#"));

/** Instructions per stage name (FROM … AS name). */
const stages = new Map<string, string[]>();
let current: string[] | undefined;
for (const line of instructions) {
  const from = /^FROM\s+\S+\s+AS\s+(\S+)$/i.exec(line);
  if (from?.[1]) {
    current = [];
    stages.set(from[1], current);
  } else current?.push(line);
}
const stage = (name: string): string[] => {
  const s = stages.get(name);
  if (!s) throw new Error(`no stage "${name}" in the Dockerfile`);
  return s;
};
const major = (v: string) => Number(/(\d+)/.exec(v)?.[1]);

describe("Dockerfile stages", () => {
  it("builds in one stage, installs production dependencies in another, runs in the last", () => {
    expect([...stages.keys()]).toEqual(["build", "deps", "runtime"]);
    expect(
      instructions.filter((l) => /^FROM\s/i.test(l)).every((l) => l.startsWith("FROM ${NODE_IMAGE} AS ")),
    ).toBe(true);
  });

  it("the build stage installs everything, typechecks and compiles", () => {
    const runs = stage("build").filter((l) => l.startsWith("RUN "));
    expect(runs.some((l) => /npm ci\b/.test(l) && !/--omit=dev/.test(l))).toBe(true);
    expect(runs.some((l) => /tsc -p tsconfig\.build\.json --noEmit/.test(l))).toBe(true);
    expect(runs.some((l) => /npm run build\b/.test(l))).toBe(true);
  });

  it("the runtime stage carries the bundle and production dependencies, never sources, tsx or esbuild", () => {
    const runtime = stage("runtime");
    const copies = runtime.filter((l) => l.startsWith("COPY "));
    expect(copies).toContain("COPY --from=build /app/dist/bundle ./dist/bundle");
    expect(copies.filter((l) => l.includes("/app/dist") && !l.includes("/app/dist/bundle "))).toEqual([]);
    expect(copies).toContain("COPY --from=deps /app/node_modules ./node_modules");
    expect(copies.filter((l) => /\b(src|test|bench|scripts|tsconfig[\w.]*)\b/.test(l))).toEqual([]);
    expect(runtime.join("\n")).not.toMatch(/tsx|esbuild|typescript/);
    const entrypoint = imageEntrypoint();
    expect(entrypoint[0]).toBe("node");
    expect(entrypoint.at(-1)).toBe("bin/keygate.js");
    expect(runtime.filter((l) => l.startsWith("ENTRYPOINT "))).toEqual([
      `ENTRYPOINT ${JSON.stringify(entrypoint)}`.replace(/","/g, '", "'),
    ]);
    expect(stage("deps").some((l) => /npm ci --omit=dev\b/.test(l))).toBe(true);
  });

  it("production dependencies, as locked, include neither tsx nor esbuild nor TypeScript", () => {
    const lock = JSON.parse(readFileSync(join(ROOT, "package-lock.json"), "utf8")) as {
      packages: Record<string, { dev?: boolean; devOptional?: boolean }>;
    };
    const toolchain = Object.entries(lock.packages).filter(([path]) =>
      /^node_modules\/(tsx|esbuild|@esbuild\/[^/]+|typescript)$/.test(path),
    );
    expect(toolchain.map(([p]) => p)).toEqual(
      expect.arrayContaining(["node_modules/tsx", "node_modules/esbuild"]),
    );
    expect(toolchain.filter(([, entry]) => entry.dev !== true).map(([p]) => p)).toEqual([]);
  });

  it("copies only paths that exist and that .dockerignore lets into the build context", () => {
    const admitted = dockerignore
      .split("\n")
      .filter((l) => l.startsWith("!"))
      .map((l) => l.slice(1));
    const sources = instructions
      .filter((l) => l.startsWith("COPY ") && !l.includes("--from="))
      .flatMap((l) => l.split(/\s+/).slice(1, -1));
    expect(sources.length).toBeGreaterThan(5);
    for (const src of sources) {
      expect(existsSync(join(ROOT, src)), `${src} exists`).toBe(true);
      const ok = admitted.some((a) => a === src || (a.endsWith("/**") && src.startsWith(a.slice(0, -3))));
      expect(ok, `${src} is admitted by .dockerignore`).toBe(true);
    }
  });
});

describe("Dockerfile metadata and examples", () => {
  it("pins the Node major of package.json's engines and of the Node running CI", () => {
    const image = /^ARG NODE_IMAGE=node:(\d+)\.\d+\.\d+-[\w-]+$/m.exec(dockerfile);
    expect(image, "ARG NODE_IMAGE=node:<major>.<minor>.<patch>-<variant>").not.toBeNull();
    const imageMajor = Number(image?.[1]);
    expect(imageMajor).toBe(major(pkg.engines.node));
    expect(imageMajor).toBe(major(process.versions.node));
  });

  it("labels the image with the OCI version, revision and source", () => {
    const labels = stage("runtime")
      .filter((l) => l.startsWith("LABEL "))
      .join(" ");
    for (const key of ["version", "revision", "source", "title", "licenses"]) {
      expect(labels).toContain(`org.opencontainers.image.${key}=`);
    }
    expect(dockerfile).toMatch(new RegExp(`^ARG VERSION=${pkg.version.replace(/\./g, "\\.")}$`, "m"));
  });

  it("its emulator example binds all interfaces, so -p reaches it", () => {
    const examples = dockerfile.split("\n").filter((l) => /^#\s+docker run .* emulator\b/.test(l));
    expect(examples.length).toBeGreaterThan(0);
    for (const e of examples) expect(e).toContain("-e KEYGATE_HOST=0.0.0.0");
  });
});

describe("deploy/ runs what the image runs", () => {
  it("every keygate container's command is the image's ENTRYPOINT (compiled, same node flags)", () => {
    const files = ["deploy/base/deployment.yaml", "deploy/overlays/dev/emulator.yaml"];
    for (const file of files) {
      const doc = parse(readFileSync(join(ROOT, file), "utf8").split(/^---$/m)[0] ?? "") as {
        spec: { template: { spec: { containers: { image: string; command?: string[] }[] } } };
      };
      const containers = doc.spec.template.spec.containers.filter((c) => c.image === "keygate");
      expect(containers.length, file).toBeGreaterThan(0);
      for (const c of containers) expect(c.command, file).toEqual(imageEntrypoint());
    }
  });
});
