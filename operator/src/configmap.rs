//! The ConfigMap a contract publishes: `<contract>-envoy` in the contract's namespace, owned by the contract
//! (a controller owner reference, so that it is garbage-collected with it), holding the filesystem-xDS
//! files (`cds.yaml`, `lds.yaml`, `rds.yaml`) and, as an annotation, their config version. Pure.

use std::collections::BTreeMap;

use crds::ChannelContract;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::translate::EnvoyResources;

/// The suffix of the ConfigMap's name.
pub const NAME_SUFFIX: &str = "-envoy";
/// The annotation with the configuration's version (`sha256:<hex>`, too long for a label value).
pub const CONFIG_VERSION_ANNOTATION: &str = "csp.contracts.dev/config-version";
/// The label that names the contract (when the name fits in a label value).
pub const CONTRACT_LABEL: &str = "csp.contracts.dev/contract";
/// The standard label saying who manages the object; the operator watches only ConfigMaps with it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value, which is also the operator's field manager.
pub const MANAGER: &str = "channel-contracts-operator";

/// The ConfigMap's name for a contract name.
pub fn name(contract: &str) -> String {
    format!("{contract}{NAME_SUFFIX}")
}

/// Why the ConfigMap cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigMapError {
    /// The contract has no uid yet (it was never stored): it cannot be an owner.
    #[error("the ChannelContract has no metadata.uid; it cannot own its ConfigMap")]
    NoUid,
    /// `<name>-envoy` is longer than an object name may be.
    #[error("metadata.name is too long: the ConfigMap {0:?} would exceed 253 characters; use a shorter name")]
    NameTooLong(String),
}

/// The ConfigMap for a contract's resources.
pub fn desired(contract: &ChannelContract, resources: &EnvoyResources) -> Result<ConfigMap, ConfigMapError> {
    let name = name(&contract.name_any());
    if name.len() > 253 {
        return Err(ConfigMapError::NameTooLong(name));
    }
    let owner = contract.controller_owner_ref(&()).ok_or(ConfigMapError::NoUid)?;
    let mut labels = BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned())]);
    if contract.name_any().len() <= 63 {
        labels.insert(CONTRACT_LABEL.to_owned(), contract.name_any());
    }
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: contract.namespace(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                CONFIG_VERSION_ANNOTATION.to_owned(),
                resources.config_version.clone(),
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        data: Some(resources.files.clone()),
        ..ConfigMap::default()
    })
}

/// Whether `existing` already carries everything `desired` says (so that applying it would change
/// nothing): the files, the version annotation, the labels and the owner reference. What others added
/// (more keys, labels) does not count: server-side apply would leave it anyway.
pub fn is_current(existing: &ConfigMap, desired: &ConfigMap) -> bool {
    let has_all = |have: &Option<BTreeMap<String, String>>, want: &Option<BTreeMap<String, String>>| {
        want.iter().flatten().all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    has_all(&existing.data, &desired.data)
        && has_all(&existing.metadata.labels, &desired.metadata.labels)
        && has_all(&existing.metadata.annotations, &desired.metadata.annotations)
        && desired
            .metadata
            .owner_references
            .iter()
            .flatten()
            .all(|o| existing.metadata.owner_references.iter().flatten().any(|e| e == o))
}

/// Replaces every value of `data` by `sha256:<hex>` of it, and drops `binaryData`: what the operator's
/// cache of its ConfigMaps keeps. A contract's files take ~10 KiB; their digests are all that
/// [`is_published`] needs to tell whether they are current.
pub fn digest_data(config_map: &mut ConfigMap) {
    for value in config_map.data.iter_mut().flat_map(|d| d.values_mut()) {
        *value = digest(value);
    }
    config_map.binary_data = None;
}

fn digest(value: &str) -> String {
    let hash = Sha256::digest(value.as_bytes());
    let mut out = String::with_capacity(7 + 2 * hash.len());
    out.push_str("sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A fingerprint of what the operator publishes in a ConfigMap whose data went through [`digest_data`]:
/// the files' digests, the version annotation and the owners. Two ConfigMaps with the same fingerprint
/// need no reconcile between them: the watch event of the operator's own write (its echo) is recognised
/// by it ([`crate::controller::Context::is_own_echo`]), while any edit of the files, the annotation or the
/// owner is not.
pub fn fingerprint(digested: &ConfigMap) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    digested.data.hash(&mut hasher);
    digested.metadata.annotations.as_ref().and_then(|a| a.get(CONFIG_VERSION_ANNOTATION)).hash(&mut hasher);
    for owner in digested.metadata.owner_references.iter().flatten() {
        (&owner.uid, &owner.kind, &owner.name, owner.controller).hash(&mut hasher);
    }
    hasher.finish()
}

/// [`is_current`] for a ConfigMap from the operator's cache, whose data went through [`digest_data`].
pub fn is_published(cached: &ConfigMap, desired: &ConfigMap) -> bool {
    let mut want = desired.clone();
    digest_data(&mut want);
    is_current(cached, &want)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::translate::{ChannelEndpoints, ProxyOptions};

    fn contract(name: &str, uid: Option<&str>) -> ChannelContract {
        let mut c: ChannelContract = serde_json::from_value(json!({
            "apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ChannelContract",
            "metadata": {"name": name, "namespace": "payments"},
            "spec": {"service": "pv", "port": 8080, "sla": {"maxLatency": "1s"}},
        }))
        .expect("contract");
        c.metadata.uid = uid.map(Into::into);
        c
    }

    fn resources(c: &ChannelContract) -> EnvoyResources {
        crate::desired(c, &ChannelEndpoints::default(), &ProxyOptions::default()).expect("translates")
    }

    #[test]
    fn the_config_map_is_owned_by_the_contract_and_carries_the_files_and_version() {
        let c = contract("payment-verify", Some("uid-1"));
        let r = resources(&c);
        let cm = desired(&c, &r).expect("config map");
        assert_eq!(cm.metadata.name.as_deref(), Some("payment-verify-envoy"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("payments"));
        let owner = &cm.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("ChannelContract", "payment-verify", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(cm.data.as_ref().expect("data").keys().collect::<Vec<_>>(), ["cds.yaml", "lds.yaml", "rds.yaml"]);
        assert_eq!(cm.metadata.annotations.as_ref().expect("annotations")[CONFIG_VERSION_ANNOTATION], r.config_version);
        assert_eq!(cm.metadata.labels.as_ref().expect("labels")[CONTRACT_LABEL], "payment-verify");
        assert!(is_current(&cm, &cm));
    }

    #[test]
    fn a_contract_without_uid_or_with_a_huge_name_cannot_publish() {
        let c = contract("pv", None);
        assert_eq!(desired(&c, &resources(&c)), Err(ConfigMapError::NoUid));
        let c = contract(&"a".repeat(250), Some("u"));
        assert!(matches!(desired(&c, &resources(&c)), Err(ConfigMapError::NameTooLong(_))));
    }

    #[test]
    fn is_current_notices_data_and_metadata_drift_but_not_extra_fields() {
        let c = contract("pv", Some("u"));
        let want = desired(&c, &resources(&c)).expect("config map");
        let mut have = want.clone();
        have.metadata.labels.get_or_insert_default().insert("extra".into(), "x".into());
        have.metadata.resource_version = Some("42".into());
        assert!(is_current(&have, &want), "extra labels and server fields do not matter");
        let mut drift = have.clone();
        drift.data.get_or_insert_default().insert("cds.yaml".into(), "edited".into());
        assert!(!is_current(&drift, &want));
        let mut drift = have.clone();
        drift.metadata.annotations = None;
        assert!(!is_current(&drift, &want));
        let mut drift = have;
        drift.metadata.owner_references = None;
        assert!(!is_current(&drift, &want));
    }

    #[test]
    fn a_cached_config_map_keeps_digests_and_still_tells_drift() {
        let c = contract("pv", Some("u"));
        let want = desired(&c, &resources(&c)).expect("config map");
        let mut cached = want.clone();
        digest_data(&mut cached);
        let data = cached.data.as_ref().expect("data");
        assert!(data.values().all(|v| v.starts_with("sha256:") && v.len() == 7 + 64), "{data:?}");
        assert_eq!(data.keys().collect::<Vec<_>>(), ["cds.yaml", "lds.yaml", "rds.yaml"]);
        assert!(is_published(&cached, &want));
        assert!(!is_current(&cached, &want), "digests are not the files");

        let mut drift = want.clone();
        drift.data.get_or_insert_default().insert("cds.yaml".into(), "edited".into());
        digest_data(&mut drift);
        assert!(!is_published(&drift, &want));
        let mut missing = want.clone();
        missing.data.get_or_insert_default().remove("rds.yaml");
        digest_data(&mut missing);
        assert!(!is_published(&missing, &want));
        let mut other = desired(&contract("pv", Some("other-uid")), &resources(&c)).expect("config map");
        digest_data(&mut other);
        assert!(!is_published(&other, &want), "another owner");
    }

    #[test]
    fn the_fingerprint_tells_the_operators_own_write_from_an_edit() {
        let c = contract("pv", Some("u"));
        let mut published = desired(&c, &resources(&c)).expect("config map");
        digest_data(&mut published);
        let mut echo = published.clone();
        echo.metadata.resource_version = Some("42".into());
        echo.metadata.labels.get_or_insert_default().insert("team".into(), "x".into());
        assert_eq!(fingerprint(&echo), fingerprint(&published), "server fields and extra labels do not count");

        let mut edited = published.clone();
        edited.data.get_or_insert_default().insert("cds.yaml".into(), "sha256:other".into());
        assert_ne!(fingerprint(&edited), fingerprint(&published));
        let mut unannotated = published.clone();
        unannotated.metadata.annotations = None;
        assert_ne!(fingerprint(&unannotated), fingerprint(&published));
        let mut orphaned = published.clone();
        orphaned.metadata.owner_references = None;
        assert_ne!(fingerprint(&orphaned), fingerprint(&published));
    }
}
