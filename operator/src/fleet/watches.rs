//! The hub's own watches: the propagated ContractPolicies and the member Secrets, each published whole
//! (through a [`watch`] channel) once listed and after every change.

use std::collections::BTreeMap;
use std::sync::Arc;

use crds::ContractPolicy;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::sync::Desired;

/// Follows the propagated policies: publishes the whole set after the first list and after every change.
pub async fn follow_policies(
    api: Api<ContractPolicy>,
    selector: String,
    out: watch::Sender<Desired>,
    cancel: CancellationToken,
) {
    let (reader, writer) = kube::runtime::reflector::store();
    let stream = kube::runtime::reflector(writer, watcher(api, watcher::Config::default().labels(&selector)))
        .default_backoff()
        .boxed();
    // Published when the set, a spec or labels change; not for status writes (the hub's own among them),
    // which would wake a pass over every member for nothing.
    follow(stream, cancel, || {
        let set: BTreeMap<String, ContractPolicy> =
            reader.state().iter().map(|p| (p.name_any(), (**p).clone())).collect();
        out.send_if_modified(|current| {
            let same = current.as_ref().is_some_and(|c| {
                c.len() == set.len()
                    && c.iter().zip(set.iter()).all(|((n1, p1), (n2, p2))| {
                        n1 == n2
                            && p1.spec == p2.spec
                            && p1.labels() == p2.labels()
                            && p1.metadata.generation == p2.metadata.generation
                    })
            });
            if !same {
                *current = Some(Arc::new(set));
            }
            !same
        });
    })
    .await;
}

/// Follows Secrets: publishes them all after the first list and after every change.
pub async fn follow_secrets(
    api: Api<Secret>,
    config: watcher::Config,
    out: watch::Sender<Option<Vec<Arc<Secret>>>>,
    cancel: CancellationToken,
) {
    let (reader, writer) = kube::runtime::reflector::store();
    let stream = kube::runtime::reflector(writer, watcher(api, config)).default_backoff().boxed();
    follow(stream, cancel, || {
        out.send_replace(Some(reader.state()));
    })
    .await;
}

/// Drives a reflector's stream; calls `publish` once it has listed, then after every change.
async fn follow<K: std::fmt::Debug>(
    mut stream: futures::stream::BoxStream<'_, Result<watcher::Event<K>, watcher::Error>>,
    cancel: CancellationToken,
    publish: impl Fn(),
) {
    let mut listed = false;
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            e = stream.next() => match e { Some(e) => e, None => return },
        };
        match event {
            Ok(watcher::Event::InitDone) => {
                listed = true;
                publish();
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) if listed => publish(),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "a hub watch failed; retrying"),
        }
    }
}
