//! The ConfigMap a contract publishes: `<contract>-envoy` in the contract's namespace, owned by the contract
//! (a controller owner reference, so that it is garbage-collected with it), holding the filesystem-xDS
//! files (`cds.yaml`, `lds.yaml`, `rds.yaml`) and, as an annotation, their config version. Pure.

use std::collections::BTreeMap;

use crds::ChannelContract;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::model::EnvoyResources;

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

/// What the operator may do with the ConfigMap `<contract>-envoy`, given what exists under that name.
///
/// The operator writes only a ConfigMap that it creates or whose controller owner reference is the contract
/// (same uid): never one that someone else made, even under the operator's name. Taking such an object
/// over would also make it the contract's child, to be garbage-collected with the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Nothing exists under the name: create it.
    Create,
    /// It is the contract's own: update it.
    Update,
    /// It is someone else's: write nothing (status `Programmed=False`, reason `ConfigMapConflict`).
    Conflict {
        /// Its controller (`Kind "name"`), if it has one.
        controller: Option<String>,
    },
}

/// Decides [`Write`] from the owner references of the existing ConfigMap (None: there is none) and the
/// contract's uid.
pub fn write(existing_owners: Option<&[OwnerReference]>, contract_uid: &str) -> Write {
    let Some(owners) = existing_owners else { return Write::Create };
    let controller = owners.iter().find(|o| o.controller == Some(true));
    match controller {
        Some(c) if !contract_uid.is_empty() && c.uid == contract_uid => Write::Update,
        Some(c) => Write::Conflict { controller: Some(format!("{} {:?}", c.kind, c.name)) },
        None => Write::Conflict { controller: None },
    }
}

/// The message of `Programmed=False` reason `ConfigMapConflict`: which ConfigMap is in the way, whose it
/// is, and what to do.
pub fn conflict_message(namespace: &str, name: &str, controller: Option<&str>) -> String {
    let whose = match controller {
        Some(c) => format!("it is controlled by {c}"),
        None => "it has no controller owner reference".to_owned(),
    };
    format!(
        "ConfigMap {namespace}/{name} already exists and is not this ChannelContract's ({whose}); the operator \
         does not take over objects it does not own. Rename or delete that ConfigMap (or rename the contract): \
         the contract is programmed once the name is free"
    )
}

/// The most a ConfigMap's data may hold: the API server refuses a ConfigMap whose data (keys and values)
/// exceed 1 MiB.
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

/// The size of a ConfigMap's data as the API server counts it (keys and values), if it exceeds
/// [`MAX_DATA_BYTES`].
pub fn too_large(config_map: &ConfigMap) -> Option<usize> {
    let size: usize = config_map.data.iter().flatten().map(|(k, v)| k.len() + v.len()).sum();
    (size > MAX_DATA_BYTES).then_some(size)
}

/// Whether an API server's refusal of a write says the object is too large: 413 (Request entity too
/// large: the request body exceeds the server's limit) or a 422/500 whose message says "too long" or "too
/// large" (the ConfigMap's 1 MiB validation, etcd's request limit).
pub fn refused_as_too_large(code: u16, message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    code == 413 || (matches!(code, 422 | 500) && (message.contains("too long") || message.contains("too large")))
}

/// The message of `Programmed=False` reason `ConfigTooLarge`.
pub fn too_large_message(namespace: &str, name: &str, size: Option<usize>) -> String {
    let size = size.map(|s| format!(" ({s} bytes)")).unwrap_or_default();
    format!(
        "the proxy configuration{size} does not fit in ConfigMap {namespace}/{name}: the API server takes at \
         most {MAX_DATA_BYTES} bytes of data. Reduce the contract's channels or the endpoints of their Services; \
         the contract is looked at again when they change"
    )
}

/// The files a ConfigMap carries (its `data` keys), as [`crate::translate`] names them.
pub const FILES: [&str; 3] = ["cds.yaml", "lds.yaml", "rds.yaml"];

/// A fingerprint of what the operator publishes in a ConfigMap: the files, the version annotation, its two
/// labels and the owners. Two ConfigMaps with the same fingerprint are the same publication: a cached
/// ConfigMap ([`CachedConfigMap`](crate::watch::cache::CachedConfigMap), which keeps only this of the ~10 KiB of files) is current
/// when its fingerprint is the desired one's, and the watch event of the operator's own write (its echo)
/// is recognised by it ([`Context::is_own_echo`](crate::reconcile::Context::is_own_echo)). What others add (more keys,
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
    use crate::model::{ChannelEndpoints, ProxyOptions};

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
        crate::translate::desired(c, &ChannelEndpoints::default(), &ProxyOptions::default()).expect("translates")
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

    fn owner(uid: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: "csp.contracts.dev/v1alpha1".into(),
            kind: "ChannelContract".into(),
            name: "pv".into(),
            uid: uid.into(),
            controller,
            ..OwnerReference::default()
        }
    }

    #[test]
    fn only_a_config_map_that_is_missing_or_controlled_by_this_contract_is_written() {
        assert_eq!(write(None, "u"), Write::Create);
        assert_eq!(write(Some(&[owner("u", Some(true))]), "u"), Write::Update);
        let other = owner("other", None);
        assert_eq!(write(Some(&[other.clone(), owner("u", Some(true))]), "u"), Write::Update);
        let conflicts: Vec<(&str, Vec<OwnerReference>, Option<&str>)> = vec![
            ("a user's ConfigMap, no owners", vec![], None),
            ("owned but not controlled by this contract", vec![owner("u", None)], None),
            ("owned by this contract, controller=false", vec![owner("u", Some(false))], None),
            (
                "controlled by a deleted contract of the same name",
                vec![owner("old", Some(true))],
                Some("ChannelContract \"pv\""),
            ),
        ];
        for (what, owners, controller) in conflicts {
            assert_eq!(write(Some(&owners), "u"), Write::Conflict { controller: controller.map(Into::into) }, "{what}");
        }
        assert_eq!(
            write(Some(&[owner("", Some(true))]), ""),
            Write::Conflict { controller: Some("ChannelContract \"pv\"".into()) }
        );
    }

    #[test]
    fn the_conflict_message_names_the_config_map_and_what_to_do() {
        let m = conflict_message("payments", "pv-envoy", None);
        assert!(m.starts_with("ConfigMap payments/pv-envoy already exists"), "{m}");
        assert!(m.contains("no controller owner reference") && m.contains("Rename or delete that ConfigMap"), "{m}");
        let m = conflict_message("payments", "pv-envoy", Some("Deployment \"x\""));
        assert!(m.contains("controlled by Deployment \"x\""), "{m}");
    }

    #[test]
    fn a_config_map_over_one_mebibyte_of_data_is_too_large() {
        let c = contract("pv", Some("u"));
        let mut cm = desired(&c, &resources(&c)).expect("config map");
        assert_eq!(too_large(&cm), None);
        let used: usize = cm.data.iter().flatten().map(|(k, v)| k.len() + v.len()).sum();
        let pad = |n: usize| "x".repeat(n);
        cm.data.get_or_insert_default().insert("pad".into(), pad(MAX_DATA_BYTES - used - 3));
        assert_eq!(too_large(&cm), None, "exactly 1 MiB fits");
        cm.data.get_or_insert_default().insert("pad".into(), pad(MAX_DATA_BYTES - used - 2));
        assert_eq!(too_large(&cm), Some(MAX_DATA_BYTES + 1));
        let m = too_large_message("payments", "pv-envoy", Some(MAX_DATA_BYTES + 1));
        assert!(m.contains("(1048577 bytes)") && m.contains("payments/pv-envoy"), "{m}");
    }

    #[test]
    fn the_api_servers_too_large_answers_are_recognised() {
        assert!(refused_as_too_large(413, "Request entity too large: limit is 3145728"));
        assert!(refused_as_too_large(
            422,
            "ConfigMap \"pv-envoy\" is invalid: []: Too long: may not be more than 1048576 bytes"
        ));
        assert!(refused_as_too_large(500, "etcdserver: request is too large"));
        assert!(!refused_as_too_large(422, "metadata.name: Invalid value"));
        assert!(!refused_as_too_large(409, "too large"));
        assert!(!refused_as_too_large(500, "etcdserver: leader changed"));
    }
}
