# Channel Contracts: the commands users and CI run.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export KUBECONFIG_LOCAL := $(CURDIR)/e2e/.run/kubeconfig

.PHONY: help tools cluster-up cluster-down cluster-status crds fmt lint unit e2e test demo demo-down

help: ## this list
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

tools: ## build etcd, kube-apiserver, kube-controller-manager, kubectl, helm and envoy into e2e/.bin
	@bash e2e/tools/build.sh

cluster-up: tools ## start the local control plane; kubeconfig in e2e/.run/kubeconfig
	@bash e2e/cluster.sh up

cluster-down: ## stop the local control plane
	@bash e2e/cluster.sh down

cluster-status: ## say whether the local control plane runs
	@bash e2e/cluster.sh status

crds: ## regenerate crds/manifests from the types
	cargo run -q -p channel-contracts-crds --bin crdgen

fmt: ## check formatting
	cargo fmt --all -- --check

lint: ## clippy, warnings are errors
	cargo clippy --workspace --all-targets --locked -- -D warnings

unit: tools ## unit tests and the CRD drift test (no cluster; the operator's tests run the real envoy)
	cargo test --workspace --locked --exclude channel-contracts-e2e

e2e: tools ## end-to-end tests against the real control plane (brings it up and down)
	@bash e2e/run-e2e.sh

test: fmt lint unit e2e ## everything CI runs

demo: tools ## the main job locally: control plane, CRDs, examples, kubectl get csp
	@bash e2e/demo.sh

demo-down: ## stop what `make demo` started
	@bash e2e/cluster.sh down
