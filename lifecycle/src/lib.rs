//! How the operator and the webhook start and stop, the same way: `tracing` logs in JSON (production)
//! or text, one cancellation token that SIGTERM or Ctrl-C cancels (a second signal exits at once), and
//! leader election on a Lease ([`leader`]) where only one replica may write, and the admin server
//! ([`admin`]: `/healthz`, `/readyz`, `/metrics`).

pub mod admin;
pub mod layering;
pub mod leader;
pub mod ready;

use tokio_util::sync::CancellationToken;

/// Log format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Text,
}

/// Sets up `tracing` (RUST_LOG filters; info by default).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Cancels `token` on SIGTERM or Ctrl-C; a second signal exits at once.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: shutting down (a second signal exits at once)");
        token.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
