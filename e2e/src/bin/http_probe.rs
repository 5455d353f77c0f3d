//! The client pod of the in-cluster e2e tests: sends HTTP/1.1 GETs to a URL with a `Host` header and prints
//! one JSON line per request, then a summary line, so that a test reads the pod's log.
//!
//! ```text
//! http-probe --url http://csp-channel-contracts-gateway.csp-system:8080/ --host echo.team:8080 --count 20
//! ```
//!
//! Each line: `{"n":1,"status":200,"backend":"echo-7d9c-abcde","ms":3}` (`backend` is the answer's
//! `x-backend` header) or `{"n":2,"error":"..."}`. Summary: `{"summary":{"ok":19,"failed":1,"backends":{...}}}`.
//! Exits 0 when every request got a 2xx answer, 1 otherwise.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "http-probe", about = "GETs a URL with a Host header, one JSON line per request")]
struct Args {
    /// The URL (http only).
    #[arg(long)]
    url: String,
    /// The Host header (`<service>.<namespace>:<port>` routes a contract at the gateway).
    #[arg(long)]
    host: Option<String>,
    /// How many requests.
    #[arg(long, default_value_t = 20)]
    count: u32,
    /// Pause between requests, in milliseconds.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Timeout of each request, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let (mut ok, mut failed) = (0u32, 0u32);
    let mut backends: BTreeMap<String, u32> = BTreeMap::new();
    for n in 1..=args.count {
        let mut request = hyper::Request::get(args.url.as_str());
        if let Some(host) = &args.host {
            request = request.header(hyper::header::HOST, host.as_str());
        }
        let request = match request.body(Empty::new()) {
            Ok(r) => r,
            Err(e) => {
                println!("{}", json!({"n": n, "error": format!("bad request: {e}")}));
                std::process::exit(2);
            }
        };
        let started = Instant::now();
        let answer = tokio::time::timeout(Duration::from_millis(args.timeout_ms), async {
            let response = client.request(request).await.map_err(|e| format!("{e:?}"))?;
            let status = response.status().as_u16();
            let backend =
                response.headers().get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            response.into_body().collect().await.map_err(|e| format!("body: {e}"))?;
            Ok::<_, String>((status, backend))
        })
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {} ms", args.timeout_ms)));
        let ms = started.elapsed().as_millis() as u64;
        match answer {
            Ok((status, backend)) => {
                if (200..300).contains(&status) {
                    ok += 1;
                } else {
                    failed += 1;
                }
                *backends.entry(backend.clone()).or_default() += 1;
                println!("{}", json!({"n": n, "status": status, "backend": backend, "ms": ms}));
            }
            Err(error) => {
                failed += 1;
                println!("{}", json!({"n": n, "error": error, "ms": ms}));
            }
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    println!("{}", json!({"summary": {"ok": ok, "failed": failed, "backends": backends}}));
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
