# syntax=docker/dockerfile:1
# meshca container image: a release build of the `meshca` binary on a distroless runtime.
#
#   docker build -t meshca/meshca:0.1.0 .
#   docker run --rm meshca/meshca:0.1.0 --help
#
# The binary uses rustls over ring (no OpenSSL), so the runtime needs only glibc, libgcc and
# the CA certificates distroless/cc ships. It runs as the distroless `nonroot` user (65532),
# matching the Helm chart's securityContext (runAsNonRoot, read-only root filesystem).

# ---- build ---------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole workspace (see .dockerignore): Cargo resolves every member and target.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin meshca \
 && install -D -m 0755 target/release/meshca /out/meshca

# ---- runtime -------------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="meshca" \
      org.opencontainers.image.description="Certificate authority for service meshes: SPIFFE X.509 certificates over Envoy SDS"
COPY --from=builder /out/meshca /usr/local/bin/meshca
USER 65532:65532
# SDS gRPC and the admin listener (/healthz, /readyz, /metrics); the chart sets both to
# 0.0.0.0 in the config it mounts at /etc/meshca/config.yaml.
EXPOSE 15010 15014
ENTRYPOINT ["/usr/local/bin/meshca"]
CMD ["serve"]
