//! `kubectl contracts status`: contracts with their proxies, policies with their compliance, the fleet.

use std::fmt::Write as _;

use crds::{ChannelContract, ContractPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use super::{ClusterArgs, ClusterError, api_error};

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
