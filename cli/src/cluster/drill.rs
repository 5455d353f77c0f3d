//! `kubectl contracts drill`: a ContractDrill created, followed, and its result as the exit code.

use std::time::Duration;

use crds::{ChannelContract, ContractDrill, ContractDrillSpec, DrillPhase};
use futures::StreamExt;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use super::{ClusterArgs, ClusterError, api_error};

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
