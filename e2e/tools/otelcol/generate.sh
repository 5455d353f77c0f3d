#!/usr/bin/env bash
# Regenerates the collector's sources (main.go, components.go, ...), go.mod and go.sum in this directory
# from builder-config.yaml with the official collector builder at OTELCOL_VERSION (../versions.env).
# Not part of the build: run it by hand after changing builder-config.yaml, then commit what changed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../versions.env
source "$here/../versions.env"
gobin="$(mktemp -d)"
trap 'rm -rf "$gobin"' EXIT
GOBIN="$gobin" go install "go.opentelemetry.io/collector/cmd/builder@$OTELCOL_VERSION"
cd "$here"
"$gobin/builder" --config builder-config.yaml --skip-compilation
