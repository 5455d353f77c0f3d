# The runtime base of the local images, in place of gcr.io/distroless/cc-debian12 (which this machine cannot
# pull): the same Debian 12 packages that distroless/cc carries (libc6, libgcc-s1, base-files, netbase,
# tzdata), unpacked by e2e/images.sh from the machine's own package sources, and the distroless users
# (nonroot 65532) plus Envoy's (101). No shell, no package manager.
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin SSL_CERT_DIR=/etc/ssl/certs
