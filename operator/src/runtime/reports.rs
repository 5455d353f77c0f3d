//! How the replicas tell the leader what their proxies did: every replica serves xDS to the proxies
//! that connect to it, and writes a [`Report`] of them into a ConfigMap of its own,
//! `<lease>-xds-<identity>` in the leader election namespace (label [`REPORT_LABEL`]`: <lease>`), at most
//! every [`REPORT_EVERY`] when it changes and every [`HEARTBEAT`] regardless. Every replica reads the
//! others' reports every [`REPORT_EVERY`]; the leader adds them to its own proxies' counts when it writes
//! status. A report not renewed for [`STALE_AFTER`] (a replica that died) no longer counts; a replica that
//! stops cleanly empties its report. A replica that runs in a Pod makes the Pod its report's owner, so that
//! the report goes with the Pod (a deleted replica, `helm uninstall`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::publish::configmap::MANAGER;
use crate::publish::xds::{Report, Xds};

/// The label of the report ConfigMaps (value: the Lease name).
pub const REPORT_LABEL: &str = "csp.contracts.dev/xds-report";
/// The annotation with the time a report was last written.
pub const RENEWED_ANNOTATION: &str = "csp.contracts.dev/renewed";
const REPORT_KEY: &str = "report.json";
/// How often reports are written (when changed) and read.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How often a report is written even if unchanged.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// A report older than this no longer counts.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// Where the reports live.
#[derive(Debug, Clone)]
pub struct ReportPlace {
    /// The namespace (the leader election's).
    pub namespace: String,
    /// The Lease name: the reports' label value and name prefix.
    pub lease: String,
    /// This replica.
    pub identity: String,
    /// The report's owner: this replica's Pod (None outside a Pod).
    pub owner: Option<OwnerReference>,
}

/// This replica's Pod as an owner, when it runs in one: `$POD_NAME` in `namespace` (the chart's Downward
/// API). None, with the reason logged, when there is no such Pod or it cannot be read.
pub async fn own_pod(client: Client, namespace: &str) -> Option<OwnerReference> {
    let name = std::env::var("POD_NAME").ok().filter(|n| !n.is_empty())?;
    match Api::<Pod>::namespaced(client, namespace).get_opt(&name).await {
        Ok(Some(pod)) => Some(OwnerReference {
            api_version: "v1".to_owned(),
            kind: "Pod".to_owned(),
            name,
            uid: pod.metadata.uid?,
            controller: None,
            block_owner_deletion: None,
        }),
        Ok(None) => {
            tracing::info!(pod = %name, %namespace, "not running in a Pod of this name: the xDS report has no owner");
            None
        }
        Err(e) => {
            tracing::warn!(pod = %name, %namespace, error = %e, "cannot read this replica's Pod: the xDS report has no owner");
            None
        }
    }
}

impl ReportPlace {
    fn name(&self) -> String {
        let name = format!("{}-xds-{}", self.lease, self.identity.to_lowercase());
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' })
            .take(253)
            .collect()
    }
}

/// Writes this replica's report until `cancel`, then empties it.
pub async fn write_reports(client: Client, xds: Arc<Xds>, place: ReportPlace, cancel: CancellationToken) {
    let api: Api<ConfigMap> = Api::namespaced(client, &place.namespace);
    let mut last: Option<Report> = None;
    let mut written_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(REPORT_EVERY) => {},
            () = cancel.cancelled() => break,
        }
        let report = xds.report(&place.identity);
        if last.as_ref() == Some(&report) && written_at.elapsed() < HEARTBEAT {
            continue;
        }
        match write(&api, &place, &report).await {
            Ok(()) => {
                last = Some(report);
                written_at = tokio::time::Instant::now();
            }
            Err(e) => {
                tracing::warn!(error = %e, config_map = %place.name(), "cannot write this replica's xDS report; retrying")
            }
        }
    }
    let empty = Report { replica: place.identity.clone(), contracts: BTreeMap::new(), drills: BTreeMap::new() };
    if let Err(e) = write(&api, &place, &empty).await {
        tracing::warn!(error = %e, "cannot empty this replica's xDS report on the way out");
    }
}

async fn write(api: &Api<ConfigMap>, place: &ReportPlace, report: &Report) -> Result<(), kube::Error> {
    let body = serde_json::to_string(report).unwrap_or_default();
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(place.name()),
            labels: Some(BTreeMap::from([(REPORT_LABEL.to_owned(), place.lease.clone())])),
            owner_references: place.owner.clone().map(|o| vec![o]),
            annotations: Some(BTreeMap::from([(RENEWED_ANNOTATION.to_owned(), Timestamp::now().to_string())])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(REPORT_KEY.to_owned(), body)])),
        ..ConfigMap::default()
    };
    let params = PatchParams::apply(MANAGER).force();
    api.patch(&place.name(), &params, &Patch::Apply(&config_map)).await.map(|_| ())
}

/// Reads the other replicas' reports until `cancel`.
pub async fn read_reports(client: Client, xds: Arc<Xds>, place: ReportPlace, cancel: CancellationToken) {
    let api: Api<ConfigMap> = Api::namespaced(client, &place.namespace);
    let list = ListParams::default().labels(&format!("{REPORT_LABEL}={}", place.lease));
    loop {
        tokio::select! {
            () = tokio::time::sleep(REPORT_EVERY) => {},
            () = cancel.cancelled() => return,
        }
        match api.list(&list).await {
            Ok(found) => xds.peer_reports(peers(&found.items, &place.identity, Timestamp::now())),
            Err(e) => tracing::warn!(error = %e, "cannot read the other replicas' xDS reports; retrying"),
        }
    }
}

/// The fresh reports of the other replicas.
fn peers(items: &[ConfigMap], identity: &str, now: Timestamp) -> Vec<Report> {
    items
        .iter()
        .filter(|cm| {
            let renewed = cm.metadata.annotations.as_ref().and_then(|a| a.get(RENEWED_ANNOTATION));
            renewed
                .and_then(|t| t.parse::<Timestamp>().ok())
                .is_some_and(|t| now.duration_since(t).unsigned_abs() < STALE_AFTER)
        })
        .filter_map(|cm| serde_json::from_str::<Report>(cm.data.as_ref()?.get(REPORT_KEY)?).ok())
        .filter(|r| r.replica != identity)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report_map(replica: &str, renewed: &str) -> ConfigMap {
        let report = Report { replica: replica.into(), contracts: BTreeMap::new(), drills: BTreeMap::new() };
        ConfigMap {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(RENEWED_ANNOTATION.to_owned(), renewed.to_owned())])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(REPORT_KEY.to_owned(), serde_json::to_string(&report).expect("json"))])),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn only_the_other_replicas_fresh_reports_count() {
        let now: Timestamp = "2026-11-27T12:00:40Z".parse().expect("time");
        let items = [
            report_map("me", "2026-11-27T12:00:39Z"),
            report_map("b", "2026-11-27T12:00:35Z"),
            report_map("dead", "2026-11-27T12:00:00Z"),
            report_map("garbled", "yesterday"),
        ];
        let found: Vec<String> = peers(&items, "me", now).into_iter().map(|r| r.replica).collect();
        assert_eq!(found, ["b"]);
    }

    #[test]
    fn report_names_are_valid_object_names() {
        let place = ReportPlace {
            namespace: "ns".into(),
            lease: "csp-operator".into(),
            identity: "Op_7:x".into(),
            owner: None,
        };
        assert_eq!(place.name(), "csp-operator-xds-op-7-x");
    }
}
