//! The admin server, plain HTTP: `/healthz` (the process serves), `/readyz` (every watch has listed once),
//! `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// Set once the watches have synced.
    pub ready: Arc<AtomicBool>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// The routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the watches of ChannelContracts, Services, EndpointSlices, Nodes and ConfigMaps have not synced yet",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
        .into_response()
}

/// Binds the admin address (so that a taken port fails the start, not the shutdown).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves the routes on `listener` until `cancel`.
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
    async fn readyz_follows_the_sync_and_metrics_are_prefixed() {
        let state = AdminState { ready: Arc::new(AtomicBool::new(false)), metrics: Arc::new(Metrics::new()) };
        let app = router(state.clone());
        assert_eq!(get_status(app.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(get_status(app.clone(), "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        state.ready.store(true, Ordering::Release);
        assert_eq!(get_status(app.clone(), "/readyz").await.0, StatusCode::OK);
        let (status, text) = get_status(app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("csp_operator_reconciles_total"), "{text}");
        assert!(text.contains("csp_operator_reconcile_duration_seconds"), "{text}");
        assert!(text.contains("csp_operator_contracts"), "{text}");
    }
}
