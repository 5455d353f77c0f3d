//! Where a contract's configuration goes: the ConfigMap `<contract>-envoy` ([`configmap`]: what it holds,
//! and whether the operator may write it) and its writing ([`write_config_map`]).

pub mod configmap;
pub mod xds;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

/// What became of a ConfigMap write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The ConfigMap holds the desired configuration.
    Published,
    /// Someone else's ConfigMap has the name: nothing was written ([`configmap::Write::Conflict`]).
    Conflict {
        /// Its controller, if any.
        controller: Option<String>,
    },
    /// The API server refused it as too large ([`configmap::refused_as_too_large`]).
    TooLarge,
}

/// Writes the ConfigMap if the operator may ([`configmap::write`]): created with a plain POST when the
/// cache has none (JSON that the API server decodes cheaply; most ConfigMaps are written once); updated
/// with server-side apply (forced: the operator owns these fields) when it is the contract's own. When
/// the POST finds a ConfigMap the cache does not show (one without the operator's label), its owners are
/// read before anything is written. An apply body is parsed as YAML, which on ~10 KiB of files costs the
/// API server several times a JSON create.
pub async fn write_config_map(
    client: &Client,
    namespace: &str,
    config_map: &ConfigMap,
    cached_owners: Option<Vec<OwnerReference>>,
) -> Result<Written, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let uid = config_map.owner_references().first().map(|o| o.uid.clone()).unwrap_or_default();
    let too_large = |e: kube::Error| match e {
        kube::Error::Api(status) if configmap::refused_as_too_large(status.code, &status.message) => {
            Ok(Written::TooLarge)
        }
        other => Err(other),
    };
    let mut decision = configmap::write(cached_owners.as_deref(), &uid);
    // A ConfigMap deleted between the POST and the read is created again by a second POST.
    for _ in 0..2 {
        if decision != configmap::Write::Create {
            break;
        }
        let params = PostParams { dry_run: false, field_manager: Some(configmap::MANAGER.to_owned()) };
        match api.create(&params, config_map).await {
            Ok(_) => return Ok(Written::Published),
            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(e) => return too_large(e),
        }
        let existing = api.get_metadata_opt(&config_map.name_any()).await?;
        decision = configmap::write(existing.as_ref().map(|m| m.owner_references()), &uid);
    }
    match decision {
        // Created and deleted by someone else twice in a row: the back-off tries again.
        configmap::Write::Create => Err(kube::Error::Api(Box::new(
            kube::core::Status::failure(
                "the ConfigMap was created and deleted by someone else while it was being written",
                "Conflict",
            )
            .with_code(409),
        ))),
        configmap::Write::Conflict { controller } => Ok(Written::Conflict { controller }),
        configmap::Write::Update => {
            let params = PatchParams::apply(configmap::MANAGER).force();
            match api.patch(&config_map.name_any(), &params, &Patch::Apply(config_map)).await {
                Ok(_) => Ok(Written::Published),
                Err(e) => too_large(e),
            }
        }
    }
}
