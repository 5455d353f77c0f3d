# Channel Contracts: the commands users and CI run.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export KUBECONFIG_LOCAL := $(CURDIR)/e2e/.run/kubeconfig

.PHONY: help tools image cluster-up cluster-down cluster-status crds fmt lint deny unit chart-test e2e test demo demo-down fuzz-webhook bench-webhook bench-operator bench-xds bench-drills bench-fleet peers bench-peers chaos soak dashboard-screenshot

help: ## this list
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

tools: ## build the test tools into e2e/.bin (control plane, node, helm, otelcol, prometheus/promtool, envoy) and the node's pause and Envoy images
	@bash e2e/tools/build.sh
	@bash e2e/images.sh pause
	@bash e2e/images.sh envoy

# The image `make image` builds: override to tag it for your registry.
IMAGE ?= ghcr.io/channel-contracts/channel-contracts:$(shell sed -n 's/^appVersion: *"*\([^"]*\)"*/\1/p' charts/channel-contracts/Chart.yaml)
IMAGE_ARCHIVE ?= dist/channel-contracts-image.tar
image: ## the product image (release build, the repository's Dockerfile, buildah, no daemon) as IMAGE, saved to IMAGE_ARCHIVE
	@bash e2e/images.sh project --release --tag $(IMAGE) --output $(IMAGE_ARCHIVE)

cluster-up: tools ## start the local cluster (control plane and a node; CSP_NODE=0: control plane only); kubeconfig in e2e/.run/kubeconfig
	@bash e2e/cluster.sh up

cluster-down: ## stop the local cluster
	@bash e2e/cluster.sh down

cluster-status: ## say whether the local cluster runs
	@bash e2e/cluster.sh status

crds: ## regenerate crds/manifests from the types
	cargo run -q -p channel-contracts-crds --bin crdgen

fmt: ## check formatting
	cargo fmt --all -- --check

lint: ## clippy, warnings are errors
	cargo clippy --workspace --all-targets --locked -- -D warnings

deny: tools ## cargo deny: the dependency graph's licenses, bans and sources (deny.toml)
	PATH="$(CURDIR)/e2e/.bin:$$PATH" cargo deny --locked check licenses bans sources

unit: tools ## unit tests and the CRD drift test (no cluster; the operator's tests run the real envoy)
	cargo test --workspace --locked --exclude channel-contracts-e2e

e2e: tools ## end-to-end tests against the real control plane (brings it up and down)
	@bash e2e/run-e2e.sh

test: fmt lint deny unit chart-test e2e ## everything CI runs

demo: tools ## the main job locally: cluster with a node, image, helm install + test, policy, contract, traffic through the gateway, fallback (CSP_DEMO_MODE=process: local processes)
	@bash e2e/demo.sh

demo-down: ## stop what `make demo` started
	@bash e2e/demo-down.sh

FUZZ_SECONDS ?= 300
fuzz-webhook: ## fuzz the webhook's request decoding and evaluation for FUZZ_SECONDS (not in CI)
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	@mkdir -p webhook/fuzz/.corpus && cp -n webhook/fuzz/corpus/review/* webhook/fuzz/.corpus/
	cd webhook/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run review --sanitizer none -- -max_total_time=$(FUZZ_SECONDS) .corpus

chart-test: tools ## helm lint --strict, golden helm template tests, chart CRDs == crds/manifests, gateway bootstrap validated
	@bash charts/test.sh

bench-webhook: ## benchmarks of the webhook (not in CI): criterion, 30 s TLS load, latency through the API server vs a ValidatingAdmissionPolicy
	@bash bench/webhook.sh

bench-operator: ## benchmarks of the operator (not in CI): render time, time to Programmed for 1k/5k contracts, peak RSS, edit-to-ConfigMap latency
	@bash bench/operator.sh

bench-xds: ## benchmarks of the xDS server (not in CI): 5k contracts, 10 Envoys + 1k simulated proxies, edit -> all ACKed, memory per proxy
	@bash bench/xds.sh

bench-drills: ## ContractDrill switchovers (not in CI): 20 drills in a row against real Envoys, switchover p50/p99/max, share within the promise
	@bash bench/drills.sh

peers: ## build OPA Gatekeeper and Kyverno from their Go modules into e2e/.bin/peers (benchmarks only, never CI; versions in e2e/tools/versions.env)
	@bash e2e/tools/peers/build.sh

bench-peers: ## side by side with Gatekeeper, Kyverno and a hand-written VAP (not in CI; own control plane, ~5 min after the builds): create Service latency at c=1 and c=16, throughput, CPU, RSS; audit of 50k Services
	@bash bench/peers.sh

bench-fleet: ## the fleet hub (not in CI): as many real member control planes as memory holds, violation -> hub status time, hub memory per member
	@bash bench/fleet.sh

chaos: ## chaos at the long scale (not in CI; CI runs the short one in make e2e): kill -9 of kube-apiserver and etcd under 1,000 reconciling contracts, of the webhook under a create load, of the operator leader during churn, operator restarts under proxy traffic; report in bench/results/chaos-*.md
	@bash bench/chaos.sh

soak: ## 30 minutes of churn (not in CI; own control plane; CSP_SOAK_MINUTES): operator and webhook RSS and open fds must stay flat (slope per hour), errors must not grow; report in bench/results/soak-*.md
	@bash bench/soak.sh

dashboard-screenshot: ## the chart's Grafana dashboard drawn with real data (own control plane, operator, 2 Envoys, Prometheus, ~6 min) into docs/dashboard.svg, raw data in bench/results/dashboard.json; no Grafana (AGPL) here
	@bash bench/dashboard.sh
