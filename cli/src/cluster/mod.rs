//! The commands that talk to a cluster: `status` and `drill`. They use the kubeconfig as kubectl does
//! (`$KUBECONFIG`, `~/.kube/config`, in-cluster), with `--kubeconfig`, `--context` and `-n` like kubectl's.

mod drill;
mod status;

pub use drill::{DrillArgs, Progress, drill, drill_object};
pub use status::{ContractRow, FleetRow, PolicyRow, Status, StatusArgs, StatusOutput, status, summarize, table};

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// How to reach the cluster, as kubectl's flags say it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// The kubeconfig file. Default: $KUBECONFIG, else ~/.kube/config, else the pod's service account.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context. Default: its current context.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace. Default: the context's namespace, else `default`.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// Why a cluster command failed before it could say anything about the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig.
    #[error("cannot use the kubeconfig: {0}")]
    Config(String),
    /// An API call.
    #[error("{what}: {source}")]
    Api {
        /// What was asked.
        what: String,
        /// The answer.
        #[source]
        source: kube::Error,
    },
    /// The CRDs are not there.
    #[error(
        "the cluster does not serve {0} (csp.contracts.dev/v1alpha1): Channel Contracts is not installed there; install it with `helm install channel-contracts charts/channel-contracts`"
    )]
    NotInstalled(&'static str),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The wait ended before the drill did.
    #[error("{0}")]
    Timeout(String),
}

pub(crate) fn api_error<'a>(what: &'a str, kind: &'static str) -> impl Fn(kube::Error) -> ClusterError + 'a {
    move |source| match &source {
        kube::Error::Api(status) if status.code == 404 => ClusterError::NotInstalled(kind),
        _ => ClusterError::Api { what: what.to_owned(), source },
    }
}

/// A client and the namespace to use.
pub async fn connect(args: &ClusterArgs) -> Result<(Client, String), ClusterError> {
    let options = KubeConfigOptions { context: args.context.clone(), ..KubeConfigOptions::default() };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| ClusterError::Config(e.to_string()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| ClusterError::Config(e.to_string()))?
        }
        None if args.context.is_some() => {
            Config::from_kubeconfig(&options).await.map_err(|e| ClusterError::Config(e.to_string()))?
        }
        None => Config::infer().await.map_err(|e| ClusterError::Config(e.to_string()))?,
    };
    let namespace = args.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| ClusterError::Config(e.to_string()))?;
    Ok((client, namespace))
}

#[cfg(test)]
mod tests;
