//! `operator bootstrap`: prints the Envoy bootstrap that connects a proxy to the operator's xDS server.
//!
//! ```text
//! operator bootstrap --xds-address csp-operator-xds.csp-system.svc:18000 --ca /etc/csp/xds/ca.crt \
//!     [--node-id POD] [--fleet csp-gateway] [--region gz] [--namespaces payments,orders] \
//!     [--listen-address 0.0.0.0] [--pod-namespace NS] [--admin 127.0.0.1:9901] [--sotw]
//!     [--otlp-address otel-collector.observability.svc:4317 [--trace-sampling 1]]
//! ```

use std::net::{IpAddr, SocketAddr};

use crate::envoy::bootstrap::{AdsBootstrap, AdsTls, BootstrapError, Otlp, ads, to_yaml};

/// Arguments of `operator bootstrap`.
#[derive(clap::Args, Debug, Clone)]
pub struct BootstrapArgs {
    /// The operator's xDS server, `host:port` (the chart's xDS Service).
    #[arg(long, value_name = "HOST:PORT")]
    pub xds_address: String,
    /// `node.id`, the proxy's pod name. Omitted: Envoy's `--service-node` gives it.
    #[arg(long, default_value = "")]
    pub node_id: String,
    /// `node.cluster`: the fleet the proxy belongs to.
    #[arg(long, default_value = "csp-gateway")]
    pub fleet: String,
    /// `node.locality.region`. Omitted: the operator uses the region of the proxy's Pod's Node.
    #[arg(long)]
    pub region: Option<String>,
    /// The namespaces whose contracts the proxy serves (comma-separated). Omitted: all.
    #[arg(long, value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// The address the proxy's gateway listeners bind. Omitted: 0.0.0.0.
    #[arg(long)]
    pub listen_address: Option<IpAddr>,
    /// The namespace of the proxy's Pod, when it is not the operator's.
    #[arg(long)]
    pub pod_namespace: Option<String>,
    /// Envoy's admin interface.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// The CA that signed the xDS server's certificate (a path in the proxy).
    #[arg(long, value_name = "FILE", required_unless_present = "insecure")]
    pub ca: Option<String>,
    /// The name the xDS server's certificate must have. Omitted: the host of --xds-address.
    #[arg(long)]
    pub server_name: Option<String>,
    /// The proxy's certificate for mutual TLS (a path in the proxy).
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<String>,
    /// Its key.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<String>,
    /// Plaintext to the xDS server (local tests only).
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// State-of-the-world xDS instead of delta.
    #[arg(long)]
    pub sotw: bool,
    /// An OpenTelemetry Collector's OTLP gRPC receiver, `host:port`: the proxy exports a span per request
    /// with the attributes csp.contract, csp.channel, csp.region, csp.fallback.used and csp.sla.breached.
    /// Omitted: no tracing.
    #[arg(long, value_name = "HOST:PORT")]
    pub otlp_address: Option<String>,
    /// The share of requests that start a trace, in percent (0 to 100); a request that arrives with a
    /// sampled trace context is traced whatever this says.
    #[arg(long, default_value_t = 1.0, value_name = "PERCENT", requires = "otlp_address")]
    pub trace_sampling: f64,
}

/// Why no bootstrap was printed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapCommandError {
    /// `--xds-address` is not `host:port`.
    #[error("--xds-address {0:?} is not host:port (for example csp-operator-xds.csp-system.svc:18000)")]
    Address(String),
    /// `--otlp-address` is not `host:port`.
    #[error("--otlp-address {0:?} is not host:port (for example otel-collector.observability.svc:4317)")]
    OtlpAddress(String),
    /// `--trace-sampling` is not a percentage.
    #[error("--trace-sampling {0} is not a percentage between 0 and 100")]
    Sampling(f64),
    /// The bootstrap could not be written.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// Standard output failed.
    #[error("cannot write the bootstrap: {0}")]
    Io(#[from] std::io::Error),
}

impl BootstrapArgs {
    /// The bootstrap these arguments describe.
    pub fn options(&self) -> Result<AdsBootstrap, BootstrapCommandError> {
        let (host, port) =
            host_port(&self.xds_address).ok_or_else(|| BootstrapCommandError::Address(self.xds_address.clone()))?;
        let otlp = match &self.otlp_address {
            None => None,
            Some(address) => {
                let (host, port) =
                    host_port(address).ok_or_else(|| BootstrapCommandError::OtlpAddress(address.clone()))?;
                if !(0.0..=100.0).contains(&self.trace_sampling) {
                    return Err(BootstrapCommandError::Sampling(self.trace_sampling));
                }
                Some(Otlp { host, port, sampling: self.trace_sampling })
            }
        };
        Ok(AdsBootstrap {
            node_id: self.node_id.clone(),
            fleet: self.fleet.clone(),
            region: self.region.clone().filter(|r| !r.is_empty()),
            namespaces: self.namespaces.iter().map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect(),
            pod_namespace: self.pod_namespace.clone(),
            listen_address: self.listen_address,
            xds_host: host,
            xds_port: port,
            tls: self.ca.as_ref().map(|ca| AdsTls {
                ca_file: ca.clone(),
                server_name: self.server_name.clone(),
                client_cert: self.client_cert.clone().zip(self.client_key.clone()),
            }),
            admin: self.admin,
            delta: !self.sotw,
            otlp,
        })
    }
}

/// `host:port` (an IPv6 host in brackets) with a host and a port other than 0.
fn host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && port != 0).then(|| (host.to_owned(), port))
}

/// Prints the bootstrap.
pub fn run(args: &BootstrapArgs, out: &mut impl std::io::Write) -> Result<(), BootstrapCommandError> {
    let yaml = to_yaml(&ads(&args.options()?))?;
    out.write_all(yaml.as_bytes())?;
    Ok(())
}
