# syntax=docker/dockerfile:1
# keygate container image. No build step: tsx (a runtime dependency) runs the TypeScript sources directly.
#   docker build -t keygate:dev .
#   docker run --rm -p 8080:8080 -p 9090:9090 -e KEYGATE_POLICY_FILE=... keygate:dev          # keygate serve
#   docker run --rm -p 9000:9000 keygate:dev emulator --port 9000                              # the CVM emulator
# Node 24 is the LTS line this image pins; bump the tag (or pin a digest) deliberately, never float it.
ARG NODE_IMAGE=node:24.11.1-bookworm-slim

# --- deps: production dependencies only, exactly as locked --------------------------------------------------
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
# --omit=dev keeps tsx (a runtime dependency). --ignore-scripts: no dependency runs code at install time;
# esbuild's platform binary still arrives as an optional package. Build on the target platform (no
# --platform=$BUILDPLATFORM here) so that it is the right binary.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm cache clean --force

# --- runtime: what runs, owned by root and read-only to the process ------------------------------------------
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
# npm, npx and corepack are not needed to run keygate; leave less to exploit.
RUN rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack \
      /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack
COPY --from=deps /app/node_modules ./node_modules
COPY package.json tsconfig.json ./
COPY bin ./bin
COPY src ./src
# A numeric, non-root user (Kubernetes can only verify runAsNonRoot against a numeric UID). It owns nothing
# in the image; tsx writes its cache to /tmp (an emptyDir when the root filesystem is read-only).
USER 10001:10001
EXPOSE 8080 9090
# Exec form: no shell at runtime, and SIGTERM reaches node directly so it can drain.
ENTRYPOINT ["node", "--import", "tsx", "src/cli/main.ts"]
CMD ["serve"]
