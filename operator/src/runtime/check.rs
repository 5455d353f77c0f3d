//! `operator check`: proves an installation works, in a throwaway namespace of its own: the admission
//! webhook denies a Service that falls short of a ContractPolicy (with the message that says what to fix),
//! admits one that meets it, and the operator programs a ChannelContract. What the chart's `helm test` runs.
//!
//! ```text
//! operator check [--timeout 120s] [--keep]
//! ```
//!
//! Everything it makes (the namespace `csp-check-*` and the ContractPolicy of the same name, which matches only
//! that namespace) is deleted at the end, pass or fail, unless `--keep`. Exit status 0: passed.

use std::collections::BTreeMap;
use std::time::Duration;

use crds::{ChannelContract, ContractPolicy};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};

/// Arguments of `operator check`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// How long each step may take (the webhook learning of the new policy, the contract being programmed).
    #[arg(long, default_value = "120s", value_parser = crds::duration::parse_flag)]
    pub timeout: Duration,
    /// Leave the namespace and the policy behind (to look at them after a failure).
    #[arg(long)]
    pub keep: bool,
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The API server refused or failed a request.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The error.
        source: kube::Error,
    },
    /// A step did not happen in time.
    #[error("{0}")]
    Failed(String),
}

/// The regions the check's policy requires (names of its own: nothing in the cluster needs to have them).
const REGIONS: [&str; 2] = ["check-a", "check-b"];
const ANNOTATION: &str = "csp.contracts.dev/failover-regions";

fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> CheckError {
    let what = what.into();
    move |source| CheckError::Api { what, source }
}

fn service(name: &str, regions: &[&str]) -> Result<Service, CheckError> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "annotations": {ANNOTATION: regions.join(",")}},
        "spec": {"ports": [{"port": 8080}], "clusterIP": "None"},
    }))
    .map_err(|e| CheckError::Failed(format!("building the Service: {e}")))
}

/// Runs the check with the client's credentials (in a pod: its ServiceAccount). Prints each step.
pub async fn run(args: &CheckArgs, client: Client, out: &mut impl std::io::Write) -> Result<(), CheckError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            generate_name: Some("csp-check-".into()),
            labels: Some(BTreeMap::from([("csp.contracts.dev/check".to_owned(), "true".to_owned())])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let created = namespaces.create(&PostParams::default(), &namespace).await.map_err(api("creating a namespace"))?;
    let ns = created.metadata.name.unwrap_or_default();
    let _ = writeln!(out, "namespace {ns} created");
    let result = steps(args, &client, &ns, out).await;
    if args.keep {
        let _ = writeln!(out, "kept namespace {ns} and ContractPolicy {ns} (--keep)");
    } else {
        let policies: Api<ContractPolicy> = Api::all(client.clone());
        // An API error answers for a policy the check never made (it failed before); anything else is told.
        match policies.delete(&ns, &DeleteParams::default()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => {
                let _ = writeln!(out, "could not delete ContractPolicy {ns}: {e}");
            }
        }
        match namespaces.delete(&ns, &DeleteParams::default()).await {
            Ok(_) => {
                let _ = writeln!(out, "deleted ContractPolicy {ns} and namespace {ns}");
            }
            Err(e) => {
                let _ = writeln!(out, "could not delete namespace {ns}: {e}");
            }
        }
    }
    result
}

async fn steps(args: &CheckArgs, client: &Client, ns: &str, out: &mut impl std::io::Write) -> Result<(), CheckError> {
    // A policy that governs only this namespace.
    let policies: Api<ContractPolicy> = Api::all(client.clone());
    let policy: ContractPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "csp.contracts.dev/v1alpha1",
        "kind": "ContractPolicy",
        "metadata": {"name": ns},
        "spec": {
            "enforcementAction": "Deny",
            "match": {"namespaces": [ns]},
            "failover": {"requiredRegions": REGIONS},
        },
    }))
    .map_err(|e| CheckError::Failed(format!("building the ContractPolicy: {e}")))?;
    policies.create(&PostParams::default(), &policy).await.map_err(api("creating the ContractPolicy"))?;
    let _ = writeln!(out, "ContractPolicy {ns} created: namespace {ns} must declare failover regions {REGIONS:?}");

    // The webhook denies a Service that declares one of the two regions. Until it has seen the policy, the
    // Service may be admitted: delete it and try again.
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let short = service("falls-short", &REGIONS[..1])?;
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut last;
    let denied = loop {
        match services.create(&PostParams::default(), &short).await {
            Ok(_) => {
                last = "admitted (the webhook had not seen the policy yet)".into();
                let _ = services.delete("falls-short", &DeleteParams::default()).await;
            }
            Err(kube::Error::Api(status)) if status.message.contains("missing failover regions") => {
                break status.message;
            }
            Err(e) => last = e.to_string(),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CheckError::Failed(format!(
                "the webhook did not deny a Service missing a required region within {:?}; last answer: {last}",
                args.timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let want = format!("missing failover regions [{}]", REGIONS[1]);
    if !denied.contains(&want) {
        return Err(CheckError::Failed(format!("the webhook denied the Service, but not saying {want:?}: {denied}")));
    }
    let _ = writeln!(out, "webhook: denied Service {ns}/falls-short: {denied}");

    // A Service that meets the policy is admitted, and a contract for it is programmed.
    services
        .create(&PostParams::default(), &service("check", &REGIONS)?)
        .await
        .map_err(api("creating a Service that meets the policy (the webhook should admit it)"))?;
    let _ = writeln!(out, "webhook: admitted Service {ns}/check");
    let contracts: Api<ChannelContract> = Api::namespaced(client.clone(), ns);
    let contract: ChannelContract = serde_json::from_value(serde_json::json!({
        "apiVersion": "csp.contracts.dev/v1alpha1",
        "kind": "ChannelContract",
        "metadata": {"name": "check"},
        "spec": {"service": "check", "port": 8080, "sla": {"maxLatency": "1s"}, "failover": {"regions": REGIONS}},
    }))
    .map_err(|e| CheckError::Failed(format!("building the ChannelContract: {e}")))?;
    contracts.create(&PostParams::default(), &contract).await.map_err(api("creating the ChannelContract"))?;
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        let c = contracts.get("check").await.map_err(api("reading the ChannelContract"))?;
        let generation = c.metadata.generation;
        let programmed = c.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Programmed"));
        match programmed {
            Some(p) if p.status == "True" && p.observed_generation == generation => {
                let version = c.status.as_ref().and_then(|s| s.config_version.clone()).unwrap_or_default();
                let _ = writeln!(out, "operator: ChannelContract {ns}/check Programmed (configVersion {version})");
                return Ok(());
            }
            _ if tokio::time::Instant::now() >= deadline => {
                let seen = programmed.map(|p| format!("{} {}: {}", p.status, p.reason, p.message)).unwrap_or_default();
                return Err(CheckError::Failed(format!(
                    "the operator did not program ChannelContract {ns}/check within {:?} (Programmed: {seen}); \
                     is the operator running? kubectl logs -n <release namespace> deploy/<release>-operator",
                    args.timeout
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
