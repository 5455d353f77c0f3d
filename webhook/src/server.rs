//! The HTTPS server: `POST /validate`, `/healthz`, `/readyz`, `/metrics`. TLS credentials are read from
//! files and reloaded when they change (new handshakes use the new pair; connections in flight keep
//! theirs, so no request fails during a swap). A plain-HTTP request on the TLS port gets a 400.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client, ResourceExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::admission::{self, Settings};
use crate::index::{Caches, View};
use crate::metrics::{Metrics, ReasonLabels, RequestLabels, VerdictLabels};

/// The largest AdmissionReview body accepted (Kubernetes objects are at most ~1.5 MiB; a review holds
/// the object and the old object).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The caches.
    pub caches: Caches,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Evaluation settings.
    pub settings: Arc<Settings>,
    /// Set once the caches have synced.
    pub ready: Arc<AtomicBool>,
    /// For namespaces that the cache does not have yet.
    pub client: Client,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("caches", &self.caches).field("ready", &self.ready).finish()
    }
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches of ContractPolicies, ChannelContracts and Namespaces not synced yet")
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
        .into_response()
}

fn bad_request(state: &AppState, reason: &str, message: String) -> Response {
    state.metrics.bad_requests.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc();
    tracing::warn!(reason, %message, "bad admission request");
    (StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({"error": message}))).into_response()
}

async fn validate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let start = Instant::now();
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            state.metrics.bad_requests.get_or_create(&ReasonLabels { reason: "too-large".to_owned() }).inc();
            let message = format!("the request body exceeds {} MiB", MAX_BODY_BYTES / (1024 * 1024));
            return (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(serde_json::json!({"error": message}))).into_response();
        }
        Err(e) => return bad_request(&state, "unreadable-body", format!("the request body cannot be read: {e}")),
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return bad_request(
            &state,
            "content-type",
            format!("expected Content-Type application/json, got {content_type:?}"),
        );
    }
    if !state.ready.load(Ordering::Acquire) {
        // Not an allow: the API server applies the failurePolicy (Fail by default).
        return (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet").into_response();
    }
    let value = match admission::parse(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(&state, "malformed", e.to_string()),
    };
    // A namespace the cache has not seen yet (just created) is looked up directly.
    let mut fetched = BTreeMap::new();
    if let Some(ns) = value.pointer("/request/namespace").and_then(|n| n.as_str())
        && state.caches.cached_namespace_labels(ns).is_none()
    {
        match Api::<Namespace>::all(state.client.clone()).get_metadata_opt(ns).await {
            Ok(Some(n)) => {
                fetched.insert(ns.to_owned(), n.labels().clone());
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(namespace = %ns, error = %e, "namespace lookup failed; judging it as unknown (policies with a namespaceSelector apply)")
            }
        }
    }
    let view = View { caches: &state.caches, fetched };
    let (answer, outcome) = match admission::review_value(&value, &view, &state.settings) {
        Ok(r) => r,
        Err(e) => return bad_request(&state, "malformed", e.to_string()),
    };
    let m = &state.metrics;
    m.requests
        .get_or_create(&RequestLabels {
            kind: outcome.kind.to_owned(),
            operation: outcome.operation.to_owned(),
            decision: outcome.decision.to_owned(),
        })
        .inc();
    if let Some(decision) = &outcome.evaluation {
        for v in &decision.verdicts {
            m.verdicts
                .get_or_create(&VerdictLabels {
                    policy: v.policy.clone(),
                    kind: outcome.kind.to_owned(),
                    action: format!("{:?}", v.action),
                })
                .inc();
        }
    }
    m.duration.observe(start.elapsed().as_secs_f64());
    tracing::debug!(
        kind = outcome.kind,
        operation = outcome.operation,
        decision = outcome.decision,
        reason = outcome.reason,
        "admission"
    );
    axum::Json(answer).into_response()
}

/// Answers a plain-HTTP request on the TLS port with a 400 instead of a silent hang-up.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainHttpGuard;

const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: 48\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

impl<S: Send + 'static> Accept<TcpStream, S> for PlainHttpGuard {
    type Stream = TcpStream;
    type Service = S;
    type Future = Pin<Box<dyn Future<Output = io::Result<(TcpStream, S)>> + Send>>;

    fn accept(&self, mut stream: TcpStream, service: S) -> Self::Future {
        Box::pin(async move {
            let mut first = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no data within 10s"))??;
            // A TLS handshake starts with a handshake record (0x16).
            if n == 1 && first[0] != 0x16 {
                let _ = stream.write_all(PLAIN_HTTP_ANSWER).await;
                let _ = stream.shutdown().await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, "plain HTTP on the TLS port"));
            }
            Ok((stream, service))
        })
    }
}

/// Reads the certificate and key files every `every` and swaps them in when they change. A pair that
/// does not load (half-written, mismatched) is skipped and the previous one stays in use.
pub async fn reload_tls(config: RustlsConfig, cert: PathBuf, key: PathBuf, every: Duration, cancel: CancellationToken) {
    let read = || async { (tokio::fs::read(&cert).await, tokio::fs::read(&key).await) };
    let mut current = match read().await {
        (Ok(c), Ok(k)) => Some((c, k)),
        _ => None,
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {},
        }
        let (Ok(c), Ok(k)) = read().await else { continue };
        if current.as_ref().is_some_and(|(oc, ok)| *oc == c && *ok == k) {
            continue;
        }
        match config.reload_from_pem(c.clone(), k.clone()).await {
            Ok(()) => {
                tracing::info!(cert = %cert.display(), "serving certificate reloaded");
                current = Some((c, k));
            }
            Err(e) => {
                tracing::warn!(cert = %cert.display(), error = %e, "new certificate files do not load; keeping the previous pair")
            }
        }
    }
}

/// Serves the router over TLS on `addr` until `cancel`, then drains in-flight requests for at most
/// `drain`.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    tls: RustlsConfig,
    drain: Duration,
    cancel: CancellationToken,
) -> io::Result<()> {
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        cancel.cancelled().await;
        tracing::info!(drain_secs = drain.as_secs(), "shutting down: draining in-flight requests");
        h.graceful_shutdown(Some(drain));
    });
    let acceptor = RustlsAcceptor::new(tls).handshake_timeout(Duration::from_secs(10)).acceptor(PlainHttpGuard);
    axum_server::bind(addr).acceptor(acceptor).handle(handle).serve(app.into_make_service()).await
}
