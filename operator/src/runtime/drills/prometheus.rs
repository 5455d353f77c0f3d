//! The drill trigger's Prometheus: a range query of a contract's SLA breach ratio
//! ([`crate::observe::trigger`] says what the series must show).

use std::path::PathBuf;
use std::time::Duration;

use crate::observe::trigger::{self, Breach};

/// Where the trigger reads the SLA breach ratio.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct PrometheusArgs {
    /// The Prometheus (or Thanos Querier, or any server of the Prometheus HTTP API) that has the chart's
    /// recording rules: ContractDrills with a `trigger` ask it for `csp:contract_sla_breach:ratio_rate1m`.
    /// Without it, a trigger never fires (its condition says so).
    #[arg(long, env = "CSP_OPERATOR_PROMETHEUS_URL", value_name = "URL")]
    pub prometheus_url: Option<String>,
    /// A bearer token file sent to Prometheus (re-read on every query: a projected token rotates).
    #[arg(long, env = "CSP_OPERATOR_PROMETHEUS_TOKEN_FILE", value_name = "FILE", requires = "prometheus_url")]
    pub prometheus_token_file: Option<PathBuf>,
    /// A CA bundle (PEM) that Prometheus's certificate is checked against, besides the public roots.
    #[arg(long, env = "CSP_OPERATOR_PROMETHEUS_CA_FILE", value_name = "FILE", requires = "prometheus_url")]
    pub prometheus_ca_file: Option<PathBuf>,
}

/// What makes the Prometheus client unusable at start.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// The URL cannot be read.
    #[error("--prometheus-url {url:?} is not an http(s) URL: {why}")]
    Url {
        /// The flag's value.
        url: String,
        /// Why.
        why: String,
    },
    /// The CA file cannot be read.
    #[error("--prometheus-ca-file {path}: {why}")]
    Ca {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
}

/// A client of the Prometheus HTTP API.
#[derive(Debug, Clone)]
pub struct Prometheus {
    client: reqwest::Client,
    base: reqwest::Url,
    token_file: Option<PathBuf>,
}

/// How long one query may take.
const TIMEOUT: Duration = Duration::from_secs(10);

impl Prometheus {
    /// The client `args` describe, if they name a Prometheus.
    pub fn new(args: &PrometheusArgs) -> Result<Option<Self>, PrometheusError> {
        let Some(url) = &args.prometheus_url else { return Ok(None) };
        let bad = |why: String| PrometheusError::Url { url: url.clone(), why };
        let mut base = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad(format!("the scheme is {:?}", base.scheme())));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut builder = reqwest::Client::builder().timeout(TIMEOUT).connect_timeout(Duration::from_secs(5));
        if let Some(path) = &args.prometheus_ca_file {
            let ca = |why: String| PrometheusError::Ca { path: path.display().to_string(), why };
            let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca("no certificate in it".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| bad(e.to_string()))?;
        Ok(Some(Self { client, base, token_file: args.prometheus_token_file.clone() }))
    }

    /// Whether a contract's SLA breach ratio stayed above `threshold` over the last `window`: any failure
    /// to ask is a [`Breach::Not`] that says what failed (a trigger never fires on a guess).
    pub async fn breach(&self, namespace: &str, contract: &str, window: Duration, threshold: f64) -> Breach {
        let step = trigger::step(window);
        let end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let start = end - window.as_secs_f64();
        match self.query_range(&trigger::query(namespace, contract), start, end, step).await {
            Ok(answer) => match trigger::samples(&answer) {
                Ok(samples) => trigger::judge(&samples, end, window, step, threshold),
                Err(why) => Breach::Not(why),
            },
            Err(why) => Breach::Not(format!("cannot ask Prometheus at {}: {why}", self.base)),
        }
    }

    async fn query_range(
        &self,
        query: &str,
        start: f64,
        end: f64,
        step: Duration,
    ) -> Result<serde_json::Value, String> {
        let url = self.base.join("api/v1/query_range").map_err(|e| e.to_string())?;
        let form = [
            ("query", query.to_owned()),
            ("start", format!("{start:.3}")),
            ("end", format!("{end:.3}")),
            ("step", format!("{}s", step.as_secs().max(1))),
        ];
        let mut request = self.client.post(url).form(&form);
        if let Some(file) = &self.token_file {
            let token = tokio::fs::read_to_string(file)
                .await
                .map_err(|e| format!("cannot read the token file {}: {e}", file.display()))?;
            request = request.bearer_auth(token.trim());
        }
        let response = request.send().await.map_err(|e| error_chain(&e))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| error_chain(&e))?;
        // Prometheus answers errors (400 bad_data, 422 execution, 503 timeout) with the same JSON.
        serde_json::from_str(&body).map_err(|_| {
            format!("HTTP {status}: {}", body.chars().take(200).collect::<String>().trim().replace('\n', " "))
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_are_taken_and_the_path_is_kept() {
        let args = |url: &str| PrometheusArgs { prometheus_url: Some(url.into()), ..PrometheusArgs::default() };
        assert!(Prometheus::new(&PrometheusArgs::default()).expect("none").is_none());
        let p = Prometheus::new(&args("http://prometheus.monitoring:9090")).expect("ok").expect("some");
        assert_eq!(
            p.base.join("api/v1/query_range").expect("join").as_str(),
            "http://prometheus.monitoring:9090/api/v1/query_range"
        );
        let p = Prometheus::new(&args("https://thanos.example/prom")).expect("ok").expect("some");
        assert_eq!(
            p.base.join("api/v1/query_range").expect("join").as_str(),
            "https://thanos.example/prom/api/v1/query_range"
        );
        let err = Prometheus::new(&args("ftp://x")).expect_err("ftp");
        assert!(err.to_string().contains("not an http(s) URL"), "{err}");
        let err = Prometheus::new(&args("prometheus:9090")).expect_err("no scheme");
        assert!(err.to_string().contains("--prometheus-url"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_prometheus_is_no_breach_and_says_so() {
        // A port nothing listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let args = PrometheusArgs { prometheus_url: Some(format!("http://127.0.0.1:{port}")), ..Default::default() };
        let p = Prometheus::new(&args).expect("ok").expect("some");
        let Breach::Not(why) = p.breach("payments", "pay", Duration::from_secs(60), 0.05).await else {
            panic!("no breach without Prometheus")
        };
        assert!(why.contains("cannot ask Prometheus at http://127.0.0.1"), "{why}");
    }
}
