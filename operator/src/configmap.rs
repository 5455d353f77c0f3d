//! The ConfigMap a contract publishes: `<contract>-envoy` in the contract's namespace, owned by the contract
//! (a controller owner reference, so that it is garbage-collected with it), holding the filesystem-xDS
//! files (`cds.yaml`, `lds.yaml`, `rds.yaml`) and, as an annotation, their config version. Pure.

use std::collections::BTreeMap;

use crds::ChannelContract;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

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

/// The contract whose ConfigMap has this name, if it is one of the operator's names.
pub fn contract_name(config_map: &str) -> Option<&str> {
    config_map.strip_suffix(NAME_SUFFIX).filter(|contract| !contract.is_empty())
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

/// The files a ConfigMap carries (its `data` keys), as [`crate::translate`] names them.
pub const FILES: [&str; 3] = ["cds.yaml", "lds.yaml", "rds.yaml"];

/// A fingerprint of what the operator publishes in a ConfigMap: the files, the version annotation, its two
/// labels and the owners. Two ConfigMaps with the same fingerprint are the same publication: a cached
/// ConfigMap ([`crate::cache::CachedConfigMap`], which keeps only this of the ~10 KiB of files) is current
/// when its fingerprint is the desired one's, and the watch event of the operator's own write (its echo)
/// is recognised by it ([`crate::controller::Context::is_own_echo`]). What others add (more keys,
/// labels, annotations) does not count: server-side apply would leave it anyway.
pub fn fingerprint(config_map: &ConfigMap) -> u64 {
    let meta = &config_map.metadata;
    fingerprint_of(
        config_map.data.as_ref(),
        meta.labels.as_ref(),
        meta.annotations.as_ref(),
        meta.owner_references.as_deref().unwrap_or_default(),
    )
}

/// [`fingerprint`] from the parts of a ConfigMap.
pub fn fingerprint_of(
    data: Option<&BTreeMap<String, String>>,
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
    owners: &[OwnerReference],
) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in FILES {
        data.and_then(|d| d.get(file)).hash(&mut hasher);
    }
    for label in [MANAGED_BY_LABEL, CONTRACT_LABEL] {
        labels.and_then(|l| l.get(label)).hash(&mut hasher);
    }
    annotations.and_then(|a| a.get(CONFIG_VERSION_ANNOTATION)).hash(&mut hasher);
    for owner in owners {
        (&owner.api_version, &owner.kind, &owner.name, &owner.uid, owner.controller).hash(&mut hasher);
    }
    hasher.finish()
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
    }

    #[test]
    fn the_contract_name_comes_back_from_the_config_map_name() {
        assert_eq!(contract_name(&name("payment-verify")), Some("payment-verify"));
        assert_eq!(contract_name("payment-verify"), None);
        assert_eq!(contract_name(NAME_SUFFIX), None);
    }

    #[test]
    fn a_contract_without_uid_or_with_a_huge_name_cannot_publish() {
        let c = contract("pv", None);
        assert_eq!(desired(&c, &resources(&c)), Err(ConfigMapError::NoUid));
        let c = contract(&"a".repeat(250), Some("u"));
        assert!(matches!(desired(&c, &resources(&c)), Err(ConfigMapError::NameTooLong(_))));
    }

    #[test]
    fn the_fingerprint_notices_drift_of_what_the_operator_publishes_but_not_extra_fields() {
        let c = contract("pv", Some("u"));
        let want = desired(&c, &resources(&c)).expect("config map");
        assert_eq!(want.data.as_ref().expect("data").keys().collect::<Vec<_>>(), FILES);
        let mut have = want.clone();
        have.metadata.labels.get_or_insert_default().insert("extra".into(), "x".into());
        have.metadata.annotations.get_or_insert_default().insert("extra".into(), "x".into());
        have.data.get_or_insert_default().insert("extra.txt".into(), "x".into());
        have.metadata.resource_version = Some("42".into());
        assert_eq!(fingerprint(&have), fingerprint(&want), "extra keys, labels and server fields do not matter");

        type Change = Box<dyn Fn(&mut ConfigMap)>;
        let changes: Vec<(&str, Change)> = vec![
            (
                "an edited file",
                Box::new(|cm| drop(cm.data.get_or_insert_default().insert("cds.yaml".into(), "x".into()))),
            ),
            ("a missing file", Box::new(|cm| drop(cm.data.get_or_insert_default().remove("rds.yaml")))),
            ("no version annotation", Box::new(|cm| cm.metadata.annotations = None)),
            (
                "no contract label",
                Box::new(|cm| drop(cm.metadata.labels.get_or_insert_default().remove(CONTRACT_LABEL))),
            ),
            ("no owner", Box::new(|cm| cm.metadata.owner_references = None)),
        ];
        for (what, change) in changes {
            let mut drift = have.clone();
            change(&mut drift);
            assert_ne!(fingerprint(&drift), fingerprint(&want), "{what}");
        }
        let other = desired(&contract("pv", Some("other-uid")), &resources(&c)).expect("config map");
        assert_ne!(fingerprint(&other), fingerprint(&want), "another owner");
    }
}
