# The pod sandbox image (containerd's pinned `registry.k8s.io/pause`), from the pause.c of the pinned
# Kubernetes module, compiled static by e2e/images.sh. Nothing is pulled.
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
