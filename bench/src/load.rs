//! The load a benchmark puts on a real API server: Nodes in the regions gz, sz and hz (label
//! `topology.kubernetes.io/region`), namespaces, and for contract `i` of [`fixtures`] its three Services
//! (headless, selector-less) with an EndpointSlice each whose endpoints sit on Nodes of their regions,
//! and the ChannelContract itself. Everything carries the label `csp-bench-run=<run id>`; namespaces are
//! `<run id>-NN`, Nodes `<run id>-node-<region>-<k>`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crds::ChannelContract;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::fixtures;

/// The label on everything a run creates.
pub const RUN_LABEL: &str = "csp-bench-run";

/// A Kubernetes object from JSON.
pub fn typed<T: DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).context("build a Kubernetes object")
}

/// How the load is laid out and created.
#[derive(Clone)]
pub struct Load {
    /// The API server.
    pub client: Client,
    /// A name for the run: prefixes namespaces and Nodes, value of [`RUN_LABEL`].
    pub run_id: String,
    /// The contracts are spread over this many namespaces.
    pub namespaces: usize,
    /// Nodes per region.
    pub nodes_per_region: usize,
    /// Creates in flight.
    pub concurrency: usize,
    /// An object that already exists counts as created (a control plane kept from an earlier run).
    pub tolerate_existing: bool,
    /// Who logs.
    pub who: &'static str,
}

impl std::fmt::Debug for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Load").field("run_id", &self.run_id).field("namespaces", &self.namespaces).finish()
    }
}

impl Load {
    /// The namespace of contract `i`.
    pub fn namespace(&self, i: usize) -> String {
        format!("{}-{:02}", self.run_id, i % self.namespaces)
    }

    /// Node `k` of `region`.
    pub fn node_name(&self, region: &str, k: usize) -> String {
        format!("{}-node-{region}-{k}", self.run_id)
    }

    /// The Node of endpoint `e` of contract `i`: in the endpoint's region, spread over its Nodes.
    pub fn node(&self, i: usize, e: usize) -> String {
        self.node_name(fixtures::region(e), (i + e) % self.nodes_per_region)
    }

    /// `<namespace>/<name>` of contract `i`.
    pub fn key(&self, i: usize) -> String {
        format!("{}/{}", self.namespace(i), fixtures::contract_name(i))
    }

    /// The run's labels.
    pub fn labels(&self) -> Value {
        json!({RUN_LABEL: self.run_id})
    }

    /// Creates everything with `concurrency` requests in flight; fails on the first error.
    pub async fn create_all<T>(&self, what: &str, objects: Vec<(Api<T>, T)>) -> Result<Duration>
    where
        T: kube::Resource + Clone + serde::Serialize + DeserializeOwned + std::fmt::Debug,
    {
        let n = objects.len();
        let start = Instant::now();
        let pp = PostParams::default();
        let tolerate = self.tolerate_existing;
        let mut results = stream::iter(objects)
            .map(|(api, object)| {
                let pp = pp.clone();
                async move {
                    match api.create(&pp, &object).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(status)) if tolerate && status.is_already_exists() => Ok(()),
                        Err(e) => Err(anyhow::Error::new(e).context(format!("create {}", object.name_any()))),
                    }
                }
            })
            .buffer_unordered(self.concurrency);
        while let Some(r) = results.next().await {
            r?;
        }
        let took = start.elapsed();
        crate::log(
            self.who,
            format!("created {n} {what} in {:.1} s ({:.0}/s)", took.as_secs_f64(), n as f64 / took.as_secs_f64()),
        );
        Ok(took)
    }

    /// Creates the Nodes, the namespaces, and the Services and EndpointSlices of `contracts` contracts.
    pub async fn setup(&self, contracts: usize) -> Result<Value> {
        let labels = self.labels();
        let nodes: Vec<(Api<Node>, Node)> = fixtures::REGIONS
            .iter()
            .flat_map(|region| (0..self.nodes_per_region).map(move |k| (*region, k)))
            .map(|(region, k)| {
                let node = typed(json!({"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": self.node_name(region, k),
                        "labels": {RUN_LABEL: self.run_id, crds::REGION_LABEL: region}}}))?;
                Ok((Api::all(self.client.clone()), node))
            })
            .collect::<Result<_>>()?;
        let t_nodes = self.create_all("Nodes", nodes).await?;
        let namespaces: Vec<(Api<Namespace>, Namespace)> = (0..self.namespaces)
            .map(|k| {
                let ns = typed(json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": self.namespace(k), "labels": labels}}))?;
                Ok((Api::all(self.client.clone()), ns))
            })
            .collect::<Result<_>>()?;
        let t_ns = self.create_all("namespaces", namespaces).await?;

        let mut services = Vec::with_capacity(contracts * 3);
        let mut slices = Vec::with_capacity(contracts * 3);
        for i in 0..contracts {
            let ns = self.namespace(i);
            let name = fixtures::contract_name(i);
            for (c, channel) in fixtures::CHANNELS.iter().enumerate() {
                let svc = fixtures::service_name(&name, channel);
                // Headless and selector-less: the API server allocates no ClusterIP and no controller
                // writes EndpointSlices for it; the slices below are the endpoints.
                let service: Service = typed(json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": svc, "namespace": ns, "labels": labels},
                    "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": fixtures::SERVICE_PORT,
                        "targetPort": fixtures::TARGET_PORT, "protocol": "TCP"}]}}))?;
                services.push((Api::namespaced(self.client.clone(), &ns), service));
                let endpoints: Vec<Value> = (0..fixtures::ENDPOINTS_PER_CHANNEL)
                    .map(|e| {
                        json!({"addresses": [fixtures::address(i, c, e)], "conditions": {"ready": true},
                            "nodeName": self.node(i, e)})
                    })
                    .collect();
                let slice: EndpointSlice = typed(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("{svc}-1"), "namespace": ns,
                        "labels": {RUN_LABEL: self.run_id, operator::watch::cache::SERVICE_NAME_LABEL: svc}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": fixtures::TARGET_PORT, "protocol": "TCP"}],
                    "endpoints": endpoints}))?;
                slices.push((Api::namespaced(self.client.clone(), &ns), slice));
            }
        }
        let t_services = self.create_all("Services", services).await?;
        let t_slices = self.create_all("EndpointSlices", slices).await?;
        Ok(json!({
            "nodes": fixtures::REGIONS.len() * self.nodes_per_region, "nodes_s": t_nodes.as_secs_f64(),
            "namespaces": self.namespaces, "namespaces_s": t_ns.as_secs_f64(),
            "services": contracts * 3, "services_s": t_services.as_secs_f64(),
            "endpoint_slices": contracts * 3, "endpoint_slices_s": t_slices.as_secs_f64(),
        }))
    }

    /// ChannelContract `i`.
    pub fn contract(&self, i: usize) -> Result<ChannelContract> {
        typed(json!({
            "apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ChannelContract",
            "metadata": {"name": fixtures::contract_name(i), "namespace": self.namespace(i), "labels": self.labels()},
            "spec": fixtures::spec(i),
        }))
    }
}
