//! The admin server both binaries run, plain HTTP: `/healthz` (the process serves), `/readyz` (unready
//! until the binary says it is ready, e.g. once its watches have listed) and `/metrics` (Prometheus text,
//! from a function the binary gives).
//!
//! ```no_run
//! # async fn example(cancel: tokio_util::sync::CancellationToken) -> std::io::Result<()> {
//! use lifecycle::admin::{self, Readiness};
//! let ready = Readiness::new("not ready: the watches have not synced yet");
//! let app = admin::router(ready.clone(), || "# EOF\n".to_owned());
//! let listener = admin::bind("127.0.0.1:8080".parse().unwrap()).await?;
//! let server = tokio::spawn(admin::serve(listener, app, cancel));
//! ready.set_ready(); // once the caches have synced
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

/// The content type of `/metrics` (OpenMetrics text, as `prometheus-client` encodes it).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the process is ready: `/readyz` answers 503 with `not_ready` until [`Readiness::set_ready`].
/// Clones share the flag.
#[derive(Clone, Debug)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    not_ready: &'static str,
}

impl Readiness {
    /// Not ready yet; `not_ready` is what `/readyz` says meanwhile (say what is awaited).
    pub fn new(not_ready: &'static str) -> Self {
        Self { ready: Arc::new(AtomicBool::new(false)), not_ready }
    }

    /// Marks the process ready.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether it is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The routes: `/healthz`, `/readyz` following `ready`, `/metrics` answering what `metrics` encodes.
pub fn router(ready: Readiness, metrics: impl Fn() -> String + Clone + Send + Sync + 'static) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.is_ready() {
                        (StatusCode::OK, "ready").into_response()
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, ready.not_ready).into_response()
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], metrics()).into_response() }
            }),
        )
}

/// Binds the admin address (so that a taken port fails the start, not the shutdown).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `app` on `listener` until `cancel`.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, cancel: CancellationToken) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin server: /healthz, /readyz, /metrics");
    }
    axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get_status(app: Router, path: &str) -> (StatusCode, String) {
        let response = app.oneshot(Request::get(path).body(Body::empty()).expect("request")).await.expect("response");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_follows_the_flag_and_metrics_serve_the_encoding() {
        let ready = Readiness::new("not ready: waiting");
        let app = router(ready.clone(), || "csp_up 1\n".to_owned());
        assert_eq!(get_status(app.clone(), "/healthz").await, (StatusCode::OK, "ok".to_owned()));
        assert_eq!(
            get_status(app.clone(), "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: waiting".to_owned())
        );
        ready.set_ready();
        assert_eq!(get_status(app.clone(), "/readyz").await.0, StatusCode::OK);
        assert_eq!(get_status(app, "/metrics").await, (StatusCode::OK, "csp_up 1\n".to_owned()));
    }
}
