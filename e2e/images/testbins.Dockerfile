# The in-cluster e2e tests' own pods: the test backend (e2e/src/bin/backend.rs) and the client
# (e2e/src/bin/http_probe.rs), built on this machine, on the local base image.
ARG BASE=localhost/csp-base:bookworm
FROM ${BASE}
COPY --chown=0:0 --chmod=0755 backend http-probe /usr/local/bin/
USER 65532:65532
