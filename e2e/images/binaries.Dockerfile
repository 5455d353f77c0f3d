# The operator and webhook built on this machine (e2e/images.sh), as the stage the repository's Dockerfile
# takes its binaries from (`--build-arg BINARIES=...`) when it does not compile them itself.
FROM scratch
COPY operator webhook /out/
