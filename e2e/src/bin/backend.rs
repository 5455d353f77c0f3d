//! A backend for the end-to-end tests: a tiny HTTP server that plays one pod behind a Service.
//!
//! ```text
//! backend --listen 10.77.0.10:8080 --name gz-1 --mode-file DIR/mode --count-file DIR/count
//! ```
//!
//! Every request re-reads the mode file (missing or empty: `ok`):
//! - `ok`: 200;
//! - `slow <duration>`: 200 after the duration (e.g. `slow 500ms`);
//! - `status <code>`: that status (e.g. `status 503`);
//! - `flaky <n>`: 503 for the first `n` of every `n + 1` requests, counted from when the mode was written
//!   (`flaky 2`: fail, fail, succeed, fail, fail, succeed, …).
//!
//! Every answer carries `x-backend: <name>`, `x-backend-count: <requests so far>` and
//! `x-seen-channel-priority`: the request's `x-channel-priority` header as it arrived (what a backend that
//! relaxes its checks on the degraded path reads; empty if none), and the body
//! `<name>`. The count is also written (atomically) to the count file before the answer is sent, and
//! `0` is written there once the server listens, so that a test knows when the backend is up.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use clap::Parser;

/// A test backend.
#[derive(Parser, Debug)]
#[command(name = "backend", about = "An HTTP backend for the e2e tests, driven by a mode file")]
struct Args {
    /// Where to listen.
    #[arg(long)]
    listen: SocketAddr,
    /// Its name, in the x-backend header and the body.
    #[arg(long)]
    name: String,
    /// The mode file, re-read on every request.
    #[arg(long)]
    mode_file: PathBuf,
    /// Where the request count is written.
    #[arg(long)]
    count_file: PathBuf,
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Status(u16),
    After(Duration),
}

/// Requests so far, and in the current mode.
#[derive(Debug, Default)]
struct Counts {
    total: u64,
    mode: String,
    in_mode: u64,
}

struct Shared {
    name: String,
    mode_file: PathBuf,
    count_file: PathBuf,
    counts: Mutex<Counts>,
}

/// The answer to the `n`-th request (1-based) in `mode`.
fn answer(mode: &str, n: u64) -> Answer {
    let mut words = mode.split_whitespace();
    match (words.next(), words.next()) {
        (Some("slow"), Some(d)) => Answer::After(crds::duration::parse(d).unwrap_or(Duration::from_secs(1))),
        (Some("status"), Some(code)) => Answer::Status(code.parse().unwrap_or(500)),
        (Some("flaky"), Some(fails)) => {
            let fails: u64 = fails.parse().unwrap_or(1);
            if (n.saturating_sub(1)) % (fails + 1) < fails { Answer::Status(503) } else { Answer::Status(200) }
        }
        _ => Answer::Status(200),
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request_headers: axum::http::HeaderMap) -> Response {
    let mode = tokio::fs::read_to_string(&shared.mode_file).await.unwrap_or_default().trim().to_owned();
    let (total, in_mode) = {
        let mut counts = shared.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total += 1;
        if counts.mode != mode {
            counts.mode = mode.clone();
            counts.in_mode = 0;
        }
        counts.in_mode += 1;
        write_atomically(&shared.count_file, &counts.total.to_string());
        (counts.total, counts.in_mode)
    };
    let status = match answer(&mode, in_mode) {
        Answer::Status(code) => code,
        Answer::After(delay) => {
            tokio::time::sleep(delay).await;
            200
        }
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, format!("{}\n", shared.name)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&shared.name) {
        headers.insert("x-backend", v);
    }
    headers.insert("x-backend-count", HeaderValue::from(total));
    let priority =
        request_headers.get_all("x-channel-priority").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>();
    if let Ok(v) = HeaderValue::from_str(&priority.join(",")) {
        headers.insert("x-seen-channel-priority", v);
    }
    response
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let shared = Arc::new(Shared {
        name: args.name,
        mode_file: args.mode_file,
        count_file: args.count_file,
        counts: Mutex::default(),
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    write_atomically(&shared.count_file, "0");
    eprintln!("backend {} listening on {}", shared.name, args.listen);
    // SIGTERM (a pod being deleted; as PID 1 nothing else would stop it) or SIGINT: finish in-flight requests
    // and exit.
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let sigterm = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            () = sigterm => {},
        }
    };
    axum::serve(listener, Router::new().fallback(handle).with_state(shared)).with_graceful_shutdown(stop).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(answer("", 1), Answer::Status(200));
        assert_eq!(answer("ok", 7), Answer::Status(200));
        assert_eq!(answer("status 503", 1), Answer::Status(503));
        assert_eq!(answer("slow 250ms", 1), Answer::After(Duration::from_millis(250)));
        let flaky: Vec<Answer> = (1..=6).map(|n| answer("flaky 2", n)).collect();
        let s = Answer::Status;
        assert_eq!(flaky, [s(503), s(503), s(200), s(503), s(503), s(200)]);
    }
}
