//! The watches' side of the controller: what the caches keep of each object, and the contracts that a
//! watch's changes concern (the controller's triggers).

use crds::ChannelContract;
use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};

use crate::watch::index::ContractKey;

/// The contracts that a watch's changes concern, as the controller's triggers: `concerns(object, deleted)`
/// says which; the list markers concern none, and a failed watch is logged (it retries with back-off).
pub fn triggers<K>(
    kind: &'static str,
    events: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    mut concerns: impl FnMut(&K, bool) -> Vec<ContractKey>,
) -> impl Stream<Item = ObjectRef<ChannelContract>> {
    events
        .map(move |event| {
            let keys = match event {
                Ok(Event::Apply(object) | Event::InitApply(object)) => concerns(&object, false),
                Ok(Event::Delete(object)) => concerns(&object, true),
                Ok(Event::Init | Event::InitDone) => Vec::new(),
                Err(e) => {
                    watch_failed(kind, &e);
                    Vec::new()
                }
            };
            stream::iter(keys.into_iter().map(|k| k.object_ref()))
        })
        .flatten()
}

/// kubectl's copy of what was last applied with client-side apply.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the caches keep of an object: all but `metadata.managedFields` and kubectl's last-applied
/// configuration, which nothing here reads and which are most of a small object's memory once parsed (the
/// managed fields of one Service take several KiB); with every Service and EndpointSlice of a cluster
/// cached, that is most of the operator's memory.
pub fn slim<K: ResourceExt>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

/// The watcher has taken the resourceVersion it resumes from by the time an object reaches `modify`;
/// nothing downstream reads it, and the cache would keep it twice (in the object and in its key).
pub fn forget_resource_version<K: ResourceExt>(object: &mut K) {
    object.meta_mut().resource_version = None;
}

/// What the cache keeps of a Node: its name and region label (a Node has dozens of labels and
/// annotations, and a cluster thousands of Nodes).
pub fn slim_node(node: &mut PartialObjectMeta<Node>) {
    let meta = &mut node.metadata;
    let region = meta.labels.take().unwrap_or_default().remove_entry(crds::REGION_LABEL);
    meta.labels = region.map(|entry| std::iter::once(entry).collect());
    meta.annotations = None;
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
}

pub fn watch_failed(kind: &'static str, error: &watcher::Error) {
    tracing::warn!(kind, %error, "watch failed; retrying with back-off");
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    #[test]
    fn the_caches_keep_no_managed_fields_and_no_last_applied_configuration() {
        let mut config_map: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "pv-envoy", "namespace": "ns",
                "labels": {"app": "pv"},
                "annotations": {LAST_APPLIED_ANNOTATION: "{\"big\": true}", "keep": "me"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:data": {"f:cds.yaml": {}}}}],
            },
            "data": {"cds.yaml": "resources: []"},
        }))
        .expect("config map");
        let before = config_map.clone();
        slim(&mut config_map);
        assert_eq!(config_map.metadata.managed_fields, None);
        assert_eq!(config_map.annotations().keys().collect::<Vec<_>>(), ["keep"]);
        assert_eq!((config_map.labels(), &config_map.data), (before.labels(), &before.data));
    }

    #[test]
    fn the_node_cache_keeps_only_the_region_label() {
        let node = |labels: serde_json::Value| -> PartialObjectMeta<Node> {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": "n1", "resourceVersion": "9", "labels": labels,
                    "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
                    "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
            }))
            .expect("node metadata")
        };
        let mut n = node(serde_json::json!({crds::REGION_LABEL: "gz", "kubernetes.io/hostname": "n1",
            "node.kubernetes.io/instance-type": "m5.large"}));
        slim_node(&mut n);
        assert_eq!(n.labels().iter().collect::<Vec<_>>(), [(&crds::REGION_LABEL.to_owned(), &"gz".to_owned())]);
        assert_eq!((n.annotations().len(), n.metadata.managed_fields.as_ref()), (0, None));
        assert_eq!((n.name_any(), n.resource_version()), ("n1".to_owned(), Some("9".to_owned())));
        let mut n = node(serde_json::json!({"kubernetes.io/hostname": "n1"}));
        slim_node(&mut n);
        assert!(n.labels().is_empty());
    }
}
