# syntax=docker/dockerfile:1
#
# One image with both binaries: /usr/local/bin/operator and /usr/local/bin/webhook (the Helm chart sets the
# command of each Deployment). Build: docker build -t ghcr.io/channel-contracts/channel-contracts:0.1.0 .
#
# glibc, not musl: the binaries run multi-threaded tokio runtimes that allocate on every request, and musl's
# allocator serializes that (admission latency is what the API server waits for). Rust binaries built on
# Debian 12 need only glibc and libgcc_s, which distroless/cc-debian12 carries (same glibc 2.36 as the
# builder); TLS is rustls (ring), so no OpenSSL is linked.
#
# Build arguments:
#   RUST_IMAGE     the toolchain image of the `build` stage
#   RUNTIME_IMAGE  the base of the final image
#   BINARIES       the stage or image the binaries come from (its /out/operator and /out/webhook): `build`
#                  compiles them here; an image name takes binaries built elsewhere (`make image` builds
#                  them on the host and uses a Debian-package base, with buildah and no daemon)

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARIES=build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The whole workspace (.dockerignore keeps out target/, the test tools and their caches): cargo needs every
# member's manifest and targets even to build two packages.
COPY . .
# Registry and target directory are BuildKit cache mounts, so rebuilds after a source change only
# recompile the workspace crates; the binaries are copied out of the cache within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin operator --bin webhook \
 && mkdir -p /out \
 && cp target/release/operator target/release/webhook /out/ \
 && /out/operator --version && /out/webhook --version

FROM ${BINARIES} AS binaries

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="channel-contracts" \
      org.opencontainers.image.description="Channel Contracts operator and admission webhook" \
      org.opencontainers.image.source="https://github.com/channel-contracts/channel-contracts" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=binaries --chown=0:0 --chmod=0755 /out/operator /out/webhook /usr/local/bin/
# distroless: no shell, no package manager. nonroot = 65532, the user the chart's securityContext expects.
USER 65532:65532
# No ENTRYPOINT: choose the binary, e.g. `docker run IMAGE /usr/local/bin/webhook --help`.
CMD ["/usr/local/bin/operator", "--help"]
