# The llmesh image, for machines that reach a registry with base images. Offline (as in
# this project's CI), scripts/image builds the same image from scratch with buildah.
#
#   docker build -t llmesh:0.1.0 .

# 1. The release binary.
FROM docker.io/library/rust:1.95-bookworm AS rust
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release -p llmesh \
 && objcopy --strip-debug target/release/llmesh /llmesh \
 && mkdir /state

# 2. The web UI (it imports the TypeScript SDK, generated from proto/).
FROM docker.io/library/node:20-bookworm AS web
WORKDIR /src
COPY . .
RUN npm install --no-audit --no-fund --loglevel=error && npm run build

# 3. The runtime: glibc, libgcc and CA certificates, a non-root user, no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=rust /llmesh /opt/llmesh/llmesh
COPY --from=web /src/web/dist /opt/llmesh/web
COPY --from=rust --chown=65532:65532 /state /var/lib/llmesh
WORKDIR /var/lib/llmesh
USER 65532:65532
EXPOSE 7700
VOLUME /var/lib/llmesh
ENTRYPOINT ["/opt/llmesh/llmesh"]
CMD ["serve", "--bind", "0.0.0.0:7700"]
