//! The commands that talk to a cluster: `status` and `drill`. They use the kubeconfig as kubectl does
//! (`$KUBECONFIG`, `~/.kube/config`, in-cluster), with `--kubeconfig`, `--context` and `-n` like kubectl's.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crds::{ChannelContract, ContractDrill, ContractDrillSpec, ContractPolicy, DrillPhase};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config, ResourceExt};
use serde::Serialize;

/// How to reach the cluster, as kubectl's flags say it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// The kubeconfig file. Default: $KUBECONFIG, else ~/.kube/config, else the pod's service account.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context. Default: its current context.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace. Default: the context's namespace, else `default`.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// Why a cluster command failed before it could say anything about the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig.
    #[error("cannot use the kubeconfig: {0}")]
    Config(String),
    /// An API call.
    #[error("{what}: {source}")]
    Api {
        /// What was asked.
        what: String,
        /// The answer.
        #[source]
        source: kube::Error,
    },
    /// The CRDs are not there.
    #[error(
        "the cluster does not serve {0} (csp.contracts.dev/v1alpha1): Channel Contracts is not installed there; install it with `helm install channel-contracts charts/channel-contracts`"
    )]
    NotInstalled(&'static str),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The wait ended before the drill did.
    #[error("{0}")]
    Timeout(String),
}

fn api_error<'a>(what: &'a str, kind: &'static str) -> impl Fn(kube::Error) -> ClusterError + 'a {
    move |source| match &source {
        kube::Error::Api(status) if status.code == 404 => ClusterError::NotInstalled(kind),
        _ => ClusterError::Api { what: what.to_owned(), source },
    }
}

/// A client and the namespace to use.
pub async fn connect(args: &ClusterArgs) -> Result<(Client, String), ClusterError> {
    let options = KubeConfigOptions { context: args.context.clone(), ..KubeConfigOptions::default() };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| ClusterError::Config(e.to_string()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| ClusterError::Config(e.to_string()))?
        }
        None if args.context.is_some() => {
            Config::from_kubeconfig(&options).await.map_err(|e| ClusterError::Config(e.to_string()))?
        }
        None => Config::infer().await.map_err(|e| ClusterError::Config(e.to_string()))?,
    };
    let namespace = args.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| ClusterError::Config(e.to_string()))?;
    Ok((client, namespace))
}

/// Arguments of `status`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:
  # Contracts in every namespace, policies, and the fleet when this cluster is a hub
  kubectl contracts status

  # One namespace, as JSON
  kubectl contracts status -n payments -o json")]
pub struct StatusArgs {
    /// The cluster; with -n, only that namespace's contracts (policies are cluster-scoped: always all).
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// table or json.
    #[arg(short = 'o', long, value_enum, default_value_t = StatusOutput::Table)]
    pub output: StatusOutput,
}

/// How `status` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusOutput {
    /// Tables for people.
    Table,
    /// One JSON document.
    Json,
}

/// One contract at a glance.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ContractRow {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// spec.service.
    pub service: String,
    /// The Ready condition: True, False or Unknown.
    pub ready: String,
    /// Why not Ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// status.proxies.summary.
    pub proxies: String,
    /// The last configuration a proxy refused, and Envoy's words, while some proxy still refuses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejection: Option<String>,
    /// status.channelSummary.
    pub channels: String,
    /// The last drill: phase and switchover.
    pub last_drill: String,
}

/// One policy at a glance.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PolicyRow {
    /// Name.
    pub name: String,
    /// Deny, Warn or Audit.
    pub action: String,
    /// Objects matched at the last audit.
    pub matched: i64,
    /// Of them, falling short.
    pub violations: i64,
    /// The share that complies.
    pub compliance: String,
    /// status.fleet.summary, when a hub rolls it up.
    pub fleet: String,
    /// A few violations.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<String>,
}

/// One member cluster of a policy's fleet.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FleetRow {
    /// The policy.
    pub policy: String,
    /// The member.
    pub cluster: String,
    /// Reachable, in sync, compliant.
    pub reachable: bool,
    /// Its copy is the hub's.
    pub in_sync: bool,
    /// Compliant.
    pub compliant: bool,
    /// Its violations.
    pub violations: i64,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Everything `status` shows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct Status {
    /// Contracts.
    pub contracts: Vec<ContractRow>,
    /// Policies.
    pub policies: Vec<PolicyRow>,
    /// The fleet, when this cluster is a hub.
    pub fleet: Vec<FleetRow>,
}

fn condition<'a>(conditions: &'a [Condition], kind: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == kind)
}

/// Reads the cluster.
pub async fn status(client: &Client, namespace: Option<&str>) -> Result<Status, ClusterError> {
    let contracts: Api<ChannelContract> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let contracts = contracts
        .list(&ListParams::default())
        .await
        .map_err(api_error("cannot list the ChannelContracts", "ChannelContracts"))?;
    let policies = Api::<ContractPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(api_error("cannot list the ContractPolicies", "ContractPolicies"))?;
    Ok(summarize(&contracts.items, &policies.items))
}

/// The rows of what was read. Pure.
pub fn summarize(contracts: &[ChannelContract], policies: &[ContractPolicy]) -> Status {
    let mut out = Status::default();
    for c in contracts {
        let status = c.status.clone().unwrap_or_default();
        let ready = condition(&status.conditions, "Ready");
        let last_drill = status.last_drill.as_ref().map_or_else(
            || "-".to_owned(),
            |d| match &d.switchover {
                Some(s) => format!("{:?} {s}", d.phase),
                None => format!("{:?}", d.phase),
            },
        );
        out.contracts.push(ContractRow {
            namespace: c.namespace().unwrap_or_default(),
            name: c.name_any(),
            service: c.spec.service.clone(),
            ready: ready.map_or_else(|| "Unknown".to_owned(), |r| r.status.clone()),
            reason: ready.filter(|r| r.status != "True").map(|r| format!("{}: {}", r.reason, r.message)),
            proxies: status.proxies.as_ref().map_or_else(|| "-".to_owned(), |p| p.summary.clone()),
            rejection: status
                .proxies
                .as_ref()
                .filter(|p| p.rejected > 0)
                .and_then(|p| p.last_rejection.as_ref())
                .map(|r| format!("proxy {} refused {}: {}", r.proxy, r.config_version, r.message)),
            channels: status.channel_summary.clone().unwrap_or_else(|| "-".to_owned()),
            last_drill,
        });
    }
    out.contracts.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for p in policies {
        let name = p.name_any();
        let status = p.status.clone().unwrap_or_default();
        let audited = status.audit_time.is_some();
        out.policies.push(PolicyRow {
            name: name.clone(),
            action: format!("{:?}", p.spec.enforcement_action),
            matched: status.matched,
            violations: status.violations,
            compliance: status
                .compliance
                .clone()
                .unwrap_or_else(|| if audited { "-".into() } else { "not audited yet".into() }),
            fleet: status.fleet.as_ref().map_or_else(|| "-".to_owned(), |f| f.summary.clone()),
            samples: status
                .violation_samples
                .iter()
                .take(3)
                .map(|s| format!("{} {}/{}: {}", s.kind, s.namespace, s.name, s.message))
                .collect(),
        });
        for m in status.fleet.iter().flat_map(|f| &f.members) {
            out.fleet.push(FleetRow {
                policy: name.clone(),
                cluster: m.cluster.clone(),
                reachable: m.reachable,
                in_sync: m.in_sync,
                compliant: m.compliant,
                violations: m.violations,
                message: m.message.clone(),
            });
        }
    }
    out.policies.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The tables.
pub fn table(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "CONTRACTS ({})", status.contracts.len());
    let rows: Vec<Vec<String>> = status
        .contracts
        .iter()
        .map(|c| {
            vec![
                c.namespace.clone(),
                c.name.clone(),
                c.service.clone(),
                c.ready.clone(),
                c.proxies.clone(),
                c.channels.clone(),
                c.last_drill.clone(),
            ]
        })
        .collect();
    out.push_str(&columns(&["NAMESPACE", "NAME", "SERVICE", "READY", "PROXIES", "CHANNELS", "LAST DRILL"], &rows));
    for c in &status.contracts {
        if let Some(reason) = &c.reason {
            let _ = writeln!(out, "  {}/{} is not ready: {reason}", c.namespace, c.name);
        }
        if let Some(rejection) = &c.rejection {
            let _ = writeln!(out, "  {}/{}: {rejection}", c.namespace, c.name);
        }
    }
    let _ = writeln!(out, "\nPOLICIES ({})", status.policies.len());
    let rows: Vec<Vec<String>> = status
        .policies
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.action.clone(),
                p.matched.to_string(),
                p.violations.to_string(),
                p.compliance.clone(),
                p.fleet.clone(),
            ]
        })
        .collect();
    out.push_str(&columns(&["NAME", "ACTION", "MATCHED", "VIOLATIONS", "COMPLIANCE", "FLEET"], &rows));
    for p in &status.policies {
        for s in &p.samples {
            let _ = writeln!(out, "  {}: {s}", p.name);
        }
    }
    if !status.fleet.is_empty() {
        let _ =
            writeln!(out, "\nFLEET ({} member{})", status.fleet.len(), if status.fleet.len() == 1 { "" } else { "s" });
        let yes = |b: bool| if b { "yes" } else { "no" }.to_owned();
        let rows: Vec<Vec<String>> = status
            .fleet
            .iter()
            .map(|f| {
                vec![
                    f.policy.clone(),
                    f.cluster.clone(),
                    yes(f.reachable),
                    yes(f.in_sync),
                    yes(f.compliant),
                    f.violations.to_string(),
                    f.message.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&columns(
            &["POLICY", "CLUSTER", "REACHABLE", "IN SYNC", "COMPLIANT", "VIOLATIONS", "MESSAGE"],
            &rows,
        ));
    }
    out
}

/// Left-aligned columns, three spaces apart, as kubectl prints them.
fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    if rows.is_empty() {
        return out + "(none)\n";
    }
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Arguments of `drill`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:
  # Region gz goes down for 60s; wait for the verdict (exit 0 Passed, 1 Failed or Aborted)
  kubectl contracts drill payment-verify -n payments --region gz --within 2s --wait

  # The primary channel answers 2s late for 30s
  kubectl contracts drill payment-verify --channel primary --delay 2s --duration 30s --within 3s --wait")]
pub struct DrillArgs {
    /// The cluster and the contract's namespace.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The ChannelContract under test.
    pub contract: String,
    /// The region whose endpoints fail.
    #[arg(long)]
    pub region: Option<String>,
    /// The channel whose endpoints fail.
    #[arg(long)]
    pub channel: Option<String>,
    /// They answer with this HTTP status (the default when --delay is not given: 503).
    #[arg(long, value_name = "STATUS", num_args = 0..=1, default_missing_value = "503")]
    pub abort: Option<i32>,
    /// They answer this late (e.g. 2s).
    #[arg(long, value_name = "DURATION")]
    pub delay: Option<String>,
    /// How long the fault lasts.
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub duration: String,
    /// The promise under test: the switchover must take at most this long. Default: the promise of the
    /// contract's last drill.
    #[arg(long, value_name = "DURATION")]
    pub within: Option<String>,
    /// The drill's name. Default: <contract>-drill-<random>.
    #[arg(long)]
    pub name: Option<String>,
    /// Follow the drill until it ends and exit by its result.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits. Default: the fault's duration and two minutes more.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
}

/// The ContractDrill that `drill` creates.
pub fn drill_object(
    args: &DrillArgs,
    namespace: &str,
    last_promise: Option<&str>,
) -> Result<ContractDrill, ClusterError> {
    if args.region.is_none() && args.channel.is_none() {
        return Err(ClusterError::Usage("say where the outage is: --region, --channel or both".into()));
    }
    let within = args.within.clone().or_else(|| last_promise.map(str::to_owned)).ok_or_else(|| {
        ClusterError::Usage(format!(
            "say what the contract promises with --within (e.g. --within 2s): {} has no earlier drill to take the promise from",
            args.contract
        ))
    })?;
    let abort = match (args.abort, &args.delay) {
        (None, Some(_)) => None,
        (status, _) => Some(serde_json::json!({ "httpStatus": status.unwrap_or(503) })),
    };
    let delay = args.delay.as_ref().map(|d| serde_json::json!({ "duration": d }));
    let spec: ContractDrillSpec = serde_json::from_value(serde_json::json!({
        "contract": args.contract,
        "fault": { "region": args.region, "channel": args.channel, "abort": abort, "delay": delay },
        "duration": args.duration,
        "expect": { "failoverWithin": within },
    }))
    .map_err(|e| ClusterError::Usage(format!("not a drill: {e}")))?;
    let metadata = ObjectMeta {
        name: args.name.clone(),
        generate_name: args.name.is_none().then(|| format!("{}-drill-", args.contract)),
        namespace: Some(namespace.to_owned()),
        ..ObjectMeta::default()
    };
    Ok(ContractDrill { metadata, spec, status: None })
}

/// Creates the drill and, with `--wait`, follows it. Returns its final phase (None without --wait).
pub async fn drill(
    client: &Client,
    namespace: &str,
    args: &DrillArgs,
    out: &mut (dyn FnMut(&str) + Send),
) -> Result<Option<DrillPhase>, ClusterError> {
    let contracts: Api<ChannelContract> = Api::namespaced(client.clone(), namespace);
    let contract =
        contracts.get_opt(&args.contract).await.map_err(api_error("cannot read the contract", "ChannelContracts"))?;
    let Some(contract) = contract else {
        return Err(ClusterError::Usage(format!("there is no ChannelContract {namespace}/{}", args.contract)));
    };
    let last_promise = contract.status.as_ref().and_then(|s| s.last_drill.as_ref()).and_then(|d| d.promised.clone());
    let object = drill_object(args, namespace, last_promise.as_deref())?;
    let drills: Api<ContractDrill> = Api::namespaced(client.clone(), namespace);
    let created = drills
        .create(&PostParams::default(), &object)
        .await
        .map_err(api_error("the API server refused the drill", "ContractDrills"))?;
    let name = created.name_any();
    out(&format!(
        "contractdrill.csp.contracts.dev/{name} created: {} for {}, promise {}",
        created.spec.fault.summary(),
        created.spec.duration,
        created.spec.expect.failover_within
    ));
    if !args.wait {
        return Ok(None);
    }
    let timeout = match &args.timeout {
        Some(t) => crds::duration::parse(t).map_err(|e| ClusterError::Usage(format!("--timeout: {e}")))?,
        None => {
            crds::duration::parse(&created.spec.duration).unwrap_or(Duration::from_secs(60)) + Duration::from_secs(120)
        }
    };
    let follow = async {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = watcher(drills.clone(), config).default_backoff().applied_objects().boxed();
        let mut seen = Progress::default();
        while let Some(next) = stream.next().await {
            let Ok(drill) = next else { continue };
            for line in seen.lines(&drill) {
                out(&line);
            }
            if let Some(phase) = drill.status.as_ref().and_then(|s| s.phase).filter(|p| p.is_finished()) {
                return Some(phase);
            }
        }
        None
    };
    match tokio::time::timeout(timeout, follow).await {
        Ok(Some(phase)) => Ok(Some(phase)),
        Ok(None) => Err(ClusterError::Timeout(format!("the watch of {name} ended before the drill did"))),
        Err(_) => Err(ClusterError::Timeout(format!(
            "{name} did not finish within {}s; it goes on: kubectl get drill {name} -n {namespace}",
            timeout.as_secs()
        ))),
    }
}

/// What was already said about a drill, so that each change is said once.
#[derive(Debug, Default)]
pub struct Progress {
    phase: Option<DrillPhase>,
    conditions: Vec<(String, String, String)>,
    proxies: Vec<(String, Option<String>)>,
}

impl Progress {
    /// The lines for what changed since the last call.
    pub fn lines(&mut self, drill: &ContractDrill) -> Vec<String> {
        let mut lines = Vec::new();
        let Some(status) = &drill.status else { return lines };
        if status.phase != self.phase {
            if let Some(phase) = status.phase {
                lines.push(format!("phase {phase:?}"));
            }
            self.phase = status.phase;
        }
        for c in &status.conditions {
            let key = (c.type_.clone(), c.status.clone(), c.message.clone());
            if !self.conditions.contains(&key) {
                lines.push(format!("{}={} ({}): {}", c.type_, c.status, c.reason, c.message));
                self.conditions.retain(|k| k.0 != c.type_);
                self.conditions.push(key);
            }
        }
        for p in &status.proxies {
            let key = (p.proxy.clone(), p.switchover.clone());
            if p.switchover.is_some() && !self.proxies.contains(&key) {
                lines.push(format!(
                    "proxy {} switched over in {} ({} requests during the fault)",
                    p.proxy,
                    p.switchover.as_deref().unwrap_or_default(),
                    p.requests
                ));
                self.proxies.push(key);
            }
        }
        if status.phase.is_some_and(DrillPhase::is_finished) {
            let served: Vec<String> = status
                .served_by
                .iter()
                .map(|s| {
                    format!("{}/{}{}: {}", s.channel, s.region, if s.faulted { " (faulted)" } else { "" }, s.requests)
                })
                .collect();
            if !served.is_empty() {
                lines.push(format!("served by {}", served.join(", ")));
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests;
