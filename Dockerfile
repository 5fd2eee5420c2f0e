# syntax=docker/dockerfile:1
# keygate container image: TypeScript is typechecked and compiled in the build stage; the runtime stage runs the
# bundled dist/bundle/ with production dependencies only (no tsx, no esbuild, no TypeScript). See docs/decisions/deploy.md.
#   docker build -t keygate:dev \
#     --build-arg REVISION="$(git rev-parse HEAD)" --build-arg SOURCE=<URL of your keygate repository> .
#   docker run --rm -p 8080:8080 -p 9090:9090 -e KEYGATE_POLICY_FILE=... keygate:dev           # keygate serve
#   docker run --rm -p 9000:9000 -e KEYGATE_HOST=0.0.0.0 keygate:dev emulator --port 9000       # the CVM emulator
# (serve binds 0.0.0.0 by default; the emulator binds loopback unless KEYGATE_HOST says otherwise, and a
# container's loopback is unreachable through -p.)
# Node 20, the major CI runs and package.json's engines names (test/deploy-manifests.test.ts checks they agree).
# Bump the tag (or pin a digest) deliberately, never float it.
ARG NODE_IMAGE=node:20.20.2-bookworm-slim

# --- build: every dependency, then typecheck and compile src/ to dist/ -----------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
# --ignore-scripts: no dependency runs code at install time (the platform binaries of esbuild and buf arrive
# as optional packages anyway).
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/build.mjs ./scripts/build.mjs
COPY src ./src
# Typecheck src/ (src/gen included) on its own, then compile it, copy the Lua scripts next to their modules and
# bundle the result with esbuild into dist/bundle/ (what the runtime stage carries).
RUN npx tsc -p tsconfig.build.json --noEmit \
 && npm run build

# --- deps: production dependencies only, exactly as locked (tsx and esbuild are dev-only) ---------------------
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm cache clean --force

# --- runtime: what runs, owned by root and read-only to the process ------------------------------------------
FROM ${NODE_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="keygate" \
      org.opencontainers.image.description="Policy-guarded, rate-limited gateway for Tencent Cloud CVM AssociateInstancesKeyPairs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
# The revision reaches `keygate --version` and the keygate_build_info metric.
ENV NODE_ENV=production \
    KEYGATE_BUILD_REVISION=${REVISION}
WORKDIR /app
# npm, npx and corepack are not needed to run keygate; leave less to exploit.
RUN rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack \
      /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
# Only the bundle (dist/bundle/: a few files esbuild made from dist/ in the build stage); tsc's per-module output
# stays behind. node_modules stays for the OpenTelemetry SDK, which the bundle loads from there when tracing is on.
COPY --from=build /app/dist/bundle ./dist/bundle
# A numeric, non-root user (Kubernetes can only verify runAsNonRoot against a numeric UID). It owns nothing
# in the image and writes nothing at run time: compiled code needs no cache, so a read-only root filesystem
# and a read-only temp directory both work.
USER 10001:10001
EXPOSE 8080 9090
# Exec form: no shell at runtime, and SIGTERM reaches node directly so it can drain. bin/keygate.js runs
# dist/bundle/main.js, i.e. `keygate`. One V8 helper thread, as the pod has one core. No flags that trade speed for
# idle memory: a 1 MB young generation and size-optimised code more than doubled the CPU a request costs once
# replicas merge hundreds of requests a second (docs/decisions/deploy.md). deploy/ gives the same command.
ENTRYPOINT ["node", "--v8-pool-size=1", "bin/keygate.js"]
CMD ["serve"]
