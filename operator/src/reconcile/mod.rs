//! One reconcile of a contract: a pure [`plan`] from the contract and the caches (validate the spec and
//! resolve its channels once, gather the endpoints, translate, make the ConfigMap), the [`status`] it
//! leads to, and the small [`executor`] that carries the plan out (writes the ConfigMap, the status and
//! the Event) and records [`metrics`].
//!
//! Every reason not to publish is one [`Hold`], made from the error of the step that stopped.

pub mod executor;
pub mod metrics;
pub mod status;

use crds::{ChannelContract, ChannelStatus};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use crate::model::{ChannelEndpoints, ProxyOptions};
use crate::publish::configmap::{self, ConfigMapError};
use crate::reconcile::status::reason;
use crate::translate::{self, TranslateError, ValidContract};
use crate::watch::endpoints::{ClusterView, GatherError, gather};

pub use self::executor::{
    CONFLICT_RECHECK, Context, INVALID_INPUT_REQUEUE, MAX_BACKOFF, RESYNC, ReconcileError, WRITTEN_TRUST,
    backoff_delay, error_policy, reconcile,
};

/// Why a contract is not published: a condition reason, a message for users, and whether the spec is at
/// fault (then `Accepted=False` too). The one mapping from each step's error to a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// One of [`reason`].
    pub reason: &'static str,
    /// What is wrong and what to do.
    pub message: String,
    /// Whether the spec itself is invalid.
    pub invalid_spec: bool,
}

impl Hold {
    fn new(reason: &'static str, message: String) -> Self {
        Self { reason, message, invalid_spec: reason == reason::INVALID_SPEC }
    }
}

impl From<TranslateError> for Hold {
    fn from(e: TranslateError) -> Self {
        match e {
            // The spec's own rules, as the API states them.
            TranslateError::InvalidSpec { source, .. } => Self::new(reason::INVALID_SPEC, source.to_string()),
            TranslateError::MissingMetadata(_) | TranslateError::Duration { .. } => {
                Self::new(reason::INVALID_SPEC, e.to_string())
            }
            TranslateError::InvalidEndpoint { .. } => Self::new(reason::INVALID_ENDPOINT, e.to_string()),
            TranslateError::UnknownChannel { .. } | TranslateError::Json(_) | TranslateError::Yaml { .. } => {
                Self::new(reason::INTERNAL_ERROR, format!("{e} (a bug of the operator: please report it)"))
            }
        }
    }
}

impl From<GatherError> for Hold {
    fn from(e: GatherError) -> Self {
        match e {
            GatherError::ServiceNotFound { .. } => Self::new(reason::SERVICE_NOT_FOUND, e.to_string()),
            GatherError::ServicePortNotFound { .. } => Self::new(reason::SERVICE_PORT_NOT_FOUND, e.to_string()),
        }
    }
}

impl From<ConfigMapError> for Hold {
    fn from(e: ConfigMapError) -> Self {
        match e {
            ConfigMapError::NameTooLong(_) => Self::new(reason::INVALID_SPEC, e.to_string()),
            ConfigMapError::NoUid => Self::new(reason::INTERNAL_ERROR, e.to_string()),
        }
    }
}

impl From<Hold> for Plan {
    fn from(hold: Hold) -> Self {
        Plan::Hold {
            invalid_spec: hold.invalid_spec.then(|| hold.message.clone()),
            reason: hold.reason,
            message: hold.message,
        }
    }
}

/// What a reconcile does, decided from the contract and the caches alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Publish this ConfigMap (if it is not already what is published).
    Publish {
        /// The ConfigMap (when the ConfigMap path is on).
        config_map: Option<Box<ConfigMap>>,
        /// Its configuration's version.
        config_version: String,
        /// What each channel resolved to.
        channels: Vec<ChannelStatus>,
        /// The endpoints of each channel (what the xDS server translates per region).
        endpoints: ChannelEndpoints,
    },
    /// Publish nothing, and say why.
    Hold {
        /// Why the spec is invalid, if that is the reason.
        invalid_spec: Option<String>,
        /// One of [`reason`].
        reason: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

/// Decides what to publish for a contract, reading Services, EndpointSlices and Nodes through `view`.
pub fn plan(contract: &ChannelContract, view: &impl ClusterView, proxy: &ProxyOptions) -> Plan {
    plan_for(contract, view, proxy, true)
}

/// [`plan`], with the ConfigMap made only when `config_map` (the ConfigMap path is on).
pub fn plan_for(contract: &ChannelContract, view: &impl ClusterView, proxy: &ProxyOptions, config_map: bool) -> Plan {
    publication(contract, view, proxy, config_map).unwrap_or_else(Plan::from)
}

fn publication(
    contract: &ChannelContract,
    view: &impl ClusterView,
    proxy: &ProxyOptions,
    with_config_map: bool,
) -> Result<Plan, Hold> {
    let valid = ValidContract::new(contract)?;
    let gathered = gather(valid.namespace, valid.spec, &valid.channels, view)?;
    let resources = translate::translate(&valid, &gathered, proxy)?;
    let config_map = if with_config_map {
        let config_map = configmap::desired(contract, &resources)?;
        if let Some(size) = configmap::too_large(&config_map) {
            let message = configmap::too_large_message(valid.namespace, &config_map.name_any(), Some(size));
            return Err(Hold::new(reason::CONFIG_TOO_LARGE, message));
        }
        Some(Box::new(config_map))
    } else {
        None
    };
    Ok(Plan::Publish {
        config_map,
        config_version: resources.config_version,
        channels: resources.channels,
        endpoints: gathered,
    })
}

#[cfg(test)]
mod tests;
