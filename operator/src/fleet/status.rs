//! The roll-up's writer: each propagated policy's `status.fleet` (server-side apply of that field alone,
//! field manager [`super::sync::FIELD_MANAGER`]), and the metrics of the roll-up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crds::ContractPolicy;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::metrics::FleetMetrics;
use super::rollup;
use super::sync::{self, Board, Desired};

/// Writes each propagated policy's `status.fleet` whenever what the hub knows changes; removes it from
/// a policy that is no longer propagated.
pub async fn roll_up(
    api: Api<ContractPolicy>,
    mut desired: watch::Receiver<Desired>,
    board: Arc<Board>,
    metrics: Arc<FleetMetrics>,
    cancel: CancellationToken,
) {
    let mut written: BTreeMap<String, crds::FleetStatus> = BTreeMap::new();
    let params = PatchParams::apply(sync::FIELD_MANAGER).force();
    loop {
        let snapshot = desired.borrow_and_update().clone();
        if let Some(policies) = snapshot {
            let observations = board.snapshot();
            let mut all = BTreeMap::new();
            for (name, policy) in policies.iter() {
                let fleet = rollup::fleet_status(policy, &observations);
                let current = policy.status.as_ref().and_then(|s| s.fleet.as_ref());
                if current != Some(&fleet) && written.get(name) != Some(&fleet) {
                    let patch = serde_json::json!({
                        "apiVersion": format!("{}/{}", crds::GROUP, crds::VERSION),
                        "kind": "ContractPolicy",
                        "status": {"fleet": fleet},
                    });
                    match api.patch_status(name, &params, &Patch::Apply(&patch)).await {
                        Ok(_) => {
                            tracing::debug!(policy = %name, fleet = %fleet.summary, "wrote the fleet's status");
                            written.insert(name.clone(), fleet.clone());
                        }
                        Err(e) => {
                            tracing::warn!(policy = %name, error = %e, "writing the policy's fleet status failed")
                        }
                    }
                } else if current == Some(&fleet) {
                    written.insert(name.clone(), fleet.clone());
                }
                all.insert(name.clone(), fleet);
            }
            // A policy no longer propagated (label removed): the hub's field goes. A deleted one is gone.
            let dropped: Vec<String> = written.keys().filter(|n| !policies.contains_key(*n)).cloned().collect();
            for name in dropped {
                written.remove(&name);
                let patch = serde_json::json!({
                    "apiVersion": format!("{}/{}", crds::GROUP, crds::VERSION),
                    "kind": "ContractPolicy",
                    "status": {},
                });
                match api.patch_status(&name, &params, &Patch::Apply(&patch)).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => tracing::warn!(policy = %name, error = %e, "removing the policy's fleet status failed"),
                }
            }
            metrics.record_rollup(&all);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = desired.changed() => if r.is_err() { return },
            () = board.changed.notified() => {}
        }
        // Coalesce a burst of member updates into one write per policy.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
