//! The HTTPS server: `POST /validate`, `/healthz`, `/readyz`, `/metrics`. TLS credentials are read from
//! files and reloaded when they change (new handshakes use the new pair; connections in flight keep
//! theirs, so no request fails during a swap). A plain-HTTP request on the TLS port gets a 400.
//!
//! Memory is bounded ([`Limits`]): a body over the size limit gets 413 before it is read, and the reviews
//! in flight share a budget, each charged [`PARSE_FACTOR`] times its body (what reading it may take); a
//! review that finds no room within the queue timeout gets 429. The API server applies the
//! failurePolicy to both, so an overload is never an allow.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client, ResourceExt};
use lifecycle::admin::Readiness;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::admission::{self, Settings};
use crate::index::{Caches, View};
use crate::metrics::{Metrics, ReasonLabels, RequestLabels, VerdictLabels};

/// The largest AdmissionReview body accepted by default (Kubernetes objects are at most ~1.5 MiB; a review
/// holds the object and the old object).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// How many times its body a review is charged against the in-flight budget: what reading it into typed
/// objects may take at worst (measured with bodies made of many small labels).
pub const PARSE_FACTOR: usize = 16;

/// The bounds on what requests in flight may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest body accepted; larger ones get 413 before they are read.
    pub max_body_bytes: usize,
    /// The memory that reviews in flight may take together, each charged [`PARSE_FACTOR`] × its body.
    pub inflight_bytes: usize,
    /// How long a review waits for room in the budget before it gets 429.
    pub queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_body_bytes: MAX_BODY_BYTES, inflight_bytes: 64 * 1024 * 1024, queue_timeout: Duration::from_secs(1) }
    }
}

/// The in-flight budget, in bytes.
#[derive(Debug, Clone)]
pub struct Budget {
    limits: Limits,
    room: Arc<Semaphore>,
}

impl Budget {
    /// A budget of `limits.inflight_bytes`; at least one maximum-size review always fits.
    pub fn new(limits: Limits) -> Self {
        let total =
            limits.inflight_bytes.max(limits.max_body_bytes.saturating_mul(PARSE_FACTOR)).min(Semaphore::MAX_PERMITS);
        Self { limits, room: Arc::new(Semaphore::new(total)) }
    }

    /// What a review with a body of `len` bytes (unknown: the maximum) is charged.
    fn cost(&self, len: Option<usize>) -> u32 {
        let body = len.unwrap_or(self.limits.max_body_bytes).clamp(1024, self.limits.max_body_bytes);
        u32::try_from(body.saturating_mul(PARSE_FACTOR)).unwrap_or(u32::MAX)
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The caches.
    pub caches: Caches,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Evaluation settings.
    pub settings: Arc<Settings>,
    /// Ready once the caches have synced.
    pub ready: Readiness,
    /// For namespaces that the cache does not have yet (None: unknown namespaces stay unknown).
    pub client: Option<Client>,
    /// The bounds on requests in flight.
    pub budget: Budget,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("caches", &self.caches).field("ready", &self.ready).finish()
    }
}

/// The routes: `POST /validate`, and the admin routes every binary serves ([`lifecycle::admin`]:
/// `/healthz`, `/readyz` until the caches have synced, `/metrics`), here on the TLS port.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    let admin = lifecycle::admin::router(state.ready.clone(), move || metrics.encode());
    Router::new()
        .route("/validate", post(validate))
        .route_layer(middleware::from_fn_with_state(state.clone(), within_budget))
        .layer(DefaultBodyLimit::max(state.budget.limits.max_body_bytes))
        .with_state(state)
        .merge(admin)
}

fn too_large(state: &AppState) -> Response {
    state.metrics.bad_requests.get_or_create(&ReasonLabels { reason: "too-large".to_owned() }).inc();
    let max = state.budget.limits.max_body_bytes;
    let message = if max.is_multiple_of(1024 * 1024) {
        format!("the request body exceeds {} MiB", max / (1024 * 1024))
    } else {
        format!("the request body exceeds {max} bytes")
    };
    (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(serde_json::json!({"error": message}))).into_response()
}

/// Lets a review in once its share of the in-flight budget is free: before its body is read, so that
/// waiting reviews hold nothing but their connection.
async fn within_budget(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > state.budget.limits.max_body_bytes) {
        return too_large(&state);
    }
    let cost = state.budget.cost(declared);
    let acquired = tokio::time::timeout(state.budget.limits.queue_timeout, state.budget.room.acquire_many(cost)).await;
    let Ok(Ok(_permit)) = acquired else {
        state.metrics.bad_requests.get_or_create(&ReasonLabels { reason: "overloaded".to_owned() }).inc();
        tracing::warn!(body_bytes = declared, "too many reviews in flight: answering 429");
        let message = "too many admission reviews in flight; the API server applies the failurePolicy";
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            axum::Json(serde_json::json!({"error": message})),
        )
            .into_response();
    };
    next.run(request).await
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
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return too_large(&state),
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
    if !state.ready.is_ready() {
        // Not an allow: the API server applies the failurePolicy (Fail by default).
        return (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet").into_response();
    }
    let (answer, outcome) = match admission::read(&body) {
        Ok(request) => {
            drop(body);
            let view = View { caches: &state.caches, fetched: fetch_unknown_namespace(&state, &request).await };
            let (response, outcome) = admission::decide(request, &view, &state.settings);
            (response.into_review(), outcome)
        }
        // A review with a uid is answered (a denial that says what is wrong), and counted like any other.
        Err(unreadable) => match admission::answer_unreadable(unreadable) {
            Ok(answered) => answered,
            Err(e) => return bad_request(&state, "malformed", e.to_string()),
        },
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

/// The labels of the request's namespace when the cache has not seen it yet (just created), looked up
/// directly; empty when the cache has it, or the lookup fails (then it is judged as unknown).
async fn fetch_unknown_namespace(
    state: &AppState,
    request: &admission::Request,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut fetched = BTreeMap::new();
    if let (Some(ns), Some(client)) = (request.namespace.as_deref(), &state.client)
        && state.caches.cached_namespace_labels(ns).is_none()
    {
        match Api::<Namespace>::all(client.clone()).get_metadata_opt(ns).await {
            Ok(Some(n)) => {
                fetched.insert(ns.to_owned(), n.labels().clone());
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(namespace = %ns, error = %e, "namespace lookup failed; judging it as unknown (policies with a namespaceSelector apply)")
            }
        }
    }
    fetched
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
/// The serving TLS configuration: a PEM certificate chain and key, offering (ALPN) HTTP/1.1 only, or HTTP/2
/// first when `http2`. The API server speaks what is offered; over HTTP/1.1 it keeps a pool of connections
/// and a request costs it less than an HTTP/2 stream.
pub fn tls_config(cert: &[u8], key: &[u8], http2: bool) -> io::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let certs = CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>().map_err(|e| invalid(&e))?;
    if certs.is_empty() {
        return Err(invalid(&"no certificate in the PEM"));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid(&e))?;
    let mut config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(&e))?;
    config.alpn_protocols = if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    Ok(Arc::new(config))
}

/// Re-reads the certificate files every `every` and swaps a new pair in when both load.
pub async fn reload_tls(
    config: RustlsConfig,
    cert: PathBuf,
    key: PathBuf,
    http2: bool,
    every: Duration,
    cancel: CancellationToken,
) {
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
        match tls_config(&c, &k, http2) {
            Ok(new) => {
                config.reload_from_config(new);
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use kube::runtime::reflector;
    use tower::ServiceExt;

    use super::*;
    use crate::index::ContractsByNamespace;

    #[test]
    fn the_api_server_is_offered_http1_unless_http2_is_asked_for() {
        let (_, serving) = crate::certs::ca_and_serving(
            "test",
            &["localhost".to_owned()],
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        )
        .expect("certificates");
        let (cert, key) = (serving.cert.as_bytes(), serving.key.as_bytes());
        let http1 = tls_config(cert, key, false).expect("loads");
        assert_eq!(http1.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let both = tls_config(cert, key, true).expect("loads");
        assert_eq!(both.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        let no_cert = tls_config(b"", key, false).expect_err("no certificate");
        assert!(no_cert.to_string().contains("no certificate"), "{no_cert}");
        assert!(tls_config(cert, b"not a key", false).is_err());
    }

    fn state(ready: bool, limits: Limits) -> AppState {
        let caches = Caches {
            policies: reflector::store().0,
            unreadable_policies: crate::index::UnreadablePolicies::default(),
            contracts: reflector::store().0,
            contracts_by_namespace: ContractsByNamespace::default(),
            namespaces: reflector::store().0,
            services: reflector::store().0,
        };
        AppState {
            caches,
            metrics: Arc::new(Metrics::new()),
            settings: Arc::new(Settings::default()),
            ready: {
                let r = Readiness::new("caches not synced");
                if ready {
                    r.set_ready();
                }
                r
            },
            client: None,
            budget: Budget::new(limits),
        }
    }

    fn review_body() -> String {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Service"},
                "resource": {"group": "", "version": "v1", "resource": "services"},
                "name": "s", "namespace": "ns", "operation": "CREATE", "userInfo": {},
                "object": {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "ns"}},
            }
        })
        .to_string()
    }

    async fn post(app: Router, content_type: &str, body: impl Into<Body>) -> (StatusCode, serde_json::Value) {
        let request = Request::post("/validate").header(header::CONTENT_TYPE, content_type).body(body.into());
        let response = app.oneshot(request.expect("request")).await.expect("answered");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    #[tokio::test]
    async fn a_review_is_answered_with_its_uid() {
        let (status, answer) = post(router(state(true, Limits::default())), "application/json", review_body()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (answer["response"]["uid"].as_str(), answer["response"]["allowed"].as_bool()),
            (Some("u-1"), Some(true))
        );
    }

    #[tokio::test]
    async fn bad_bodies_and_content_types_get_400_with_a_reason() {
        let app = router(state(true, Limits::default()));
        let (status, answer) = post(app.clone(), "application/json", "{not json").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(answer["error"].as_str().is_some_and(|e| e.contains("not JSON")), "{answer}");
        let (status, answer) = post(app.clone(), "text/plain", review_body()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(answer["error"].as_str().is_some_and(|e| e.contains("Content-Type")), "{answer}");
        let (status, answer) = post(
            app,
            "application/json",
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(answer["error"].as_str().is_some_and(|e| e.contains("uid")), "{answer}");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_gets_413_whether_or_not_it_says_its_length() {
        let limits = Limits { max_body_bytes: 4096, ..Limits::default() };
        let big = "x".repeat(5000);
        let (status, _) = post(router(state(true, limits)), "application/json", big.clone()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        // Streamed (no Content-Length): refused by the body limit while reading.
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(big))]);
        let (status, _) = post(router(state(true, limits)), "application/json", Body::from_stream(stream)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn before_the_caches_sync_the_answer_is_503_never_an_allow() {
        let (status, answer) = post(router(state(false, Limits::default())), "application/json", review_body()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.is_null(), "no AdmissionReview is answered: {answer}");
        let app = router(state(false, Limits::default()));
        let readyz =
            app.oneshot(Request::get("/readyz").body(Body::empty()).expect("request")).await.expect("answered");
        assert_eq!(readyz.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_review_that_finds_no_room_in_the_budget_gets_429() {
        let limits = Limits { max_body_bytes: 4096, inflight_bytes: 0, queue_timeout: Duration::from_millis(50) };
        let state = state(true, limits);
        // Everything in flight: the whole budget is held by reviews that are still being answered.
        let held = state.budget.room.clone().try_acquire_many_owned(4096 * PARSE_FACTOR as u32).expect("budget");
        let (status, answer) = post(router(state.clone()), "application/json", review_body()).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(answer["error"].as_str().is_some_and(|e| e.contains("in flight")), "{answer}");
        drop(held);
        let (status, _) = post(router(state), "application/json", review_body()).await;
        assert_eq!(status, StatusCode::OK, "room again once the reviews in flight are answered");
    }
}
