# syntax=docker/dockerfile:1
# vmforge operator image.
#   docker build -t ghcr.io/vmforge/vmforge:0.1.0 .   (the release workflow builds and pushes it)
# Both stages use the same Node 24 base; the runtime stage has only the bundled JavaScript
# (dist/: the operator and the CLI with their dependencies, see scripts/bundle.mjs) and runs as an
# unprivileged numeric user.

# BASE: Debian bookworm with Node 24 and npm. `npm run image` builds one locally (no registry
# needed) and passes it here; a normal build uses the official image.
ARG BASE=node:24-bookworm-slim

FROM ${BASE} AS build
WORKDIR /src
ENV NODE_ENV=development \
    npm_config_fund=false \
    npm_config_audit=false \
    npm_config_update_notifier=false
# Dependencies first, so source edits reuse this layer.
COPY package.json package-lock.json ./
RUN npm ci
COPY tsconfig.json tsconfig.build.json ./
COPY scripts ./scripts
COPY src ./src
RUN npm run build

FROM ${BASE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
# The image's own Node 24 runs the operator. No node_modules: the bundles hold every dependency
# (package.json stays for "type": "module").
COPY --from=build --chown=0:0 /src/package.json ./package.json
COPY --from=build --chown=0:0 /src/dist ./dist
# Files stay owned by root and read-only for the process; matches readOnlyRootFilesystem.
USER 65532:65532
EXPOSE 8080
# Memory and CPU: a 1 MiB young generation and V8's size-over-speed mode keep its RSS near what it
# holds; code is compiled by Sparkplug, V8's baseline tier, and no further (--max-opt=1: no Maglev
# or Turbofan: with Maglev, RSS reached 150 and 151 MiB at 10,000 Runs), so a burst
# of Runs does not run interpreted as under --lite-mode (figures in README "Performance"; the
# bench runs it with these same options).
CMD ["node", "--max-semi-space-size=1", "--optimize-for-size", "--max-opt=1", "dist/main.js"]
