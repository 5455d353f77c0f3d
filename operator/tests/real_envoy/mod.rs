//! The real Envoy for tests: where it is, `--mode validate`, a running proxy that is always stopped,
//! loopback backends and a small HTTP client. Nothing here is mocked.
#![allow(dead_code, clippy::unwrap_used)] // each test crate uses part of it

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The Envoy binary: `$CSP_E2E_BIN/envoy`, else `e2e/.bin/envoy` of the workspace. A missing binary fails
/// the test (it is never skipped).
pub fn envoy_binary() -> PathBuf {
    let dir = std::env::var_os("CSP_E2E_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/.bin"));
    let bin = dir.join("envoy");
    assert!(
        bin.is_file(),
        "Envoy is not at {}: run `make tools` (it installs e2e/.bin/envoy), or set CSP_E2E_BIN to a folder with an envoy binary",
        bin.display()
    );
    bin
}

/// Runs `cmd`, killing it after `timeout`; returns (success, stdout + stderr).
fn run_bounded(mut cmd: Command, timeout: Duration) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.log");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = cmd.stdout(out.try_clone().unwrap()).stderr(out).stdin(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    match status {
        Some(s) => (s.success(), output),
        None => (false, format!("timed out after {timeout:?}\n{output}")),
    }
}

/// `envoy --mode validate` on a bootstrap; Err with Envoy's words when it refuses it.
pub fn validate(bootstrap_yaml: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bootstrap.yaml");
    std::fs::write(&path, bootstrap_yaml).unwrap();
    let mut cmd = Command::new(envoy_binary());
    cmd.args(["--mode", "validate", "--disable-hot-restart", "-l", "error", "-c"]).arg(&path);
    let (ok, output) = run_bounded(cmd, Duration::from_secs(60));
    if ok { Ok(()) } else { Err(output) }
}

/// A running Envoy, killed when dropped (also when a test fails).
pub struct RunningEnvoy {
    child: Child,
    log: PathBuf,
}

impl RunningEnvoy {
    /// Starts Envoy on a bootstrap file, logging into `log`.
    pub fn start(bootstrap: &Path, log: &Path) -> Self {
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new(envoy_binary())
            .args(["--disable-hot-restart", "-l", "info", "-c"])
            .arg(bootstrap)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, log: log.to_owned() }
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if Envoy has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("envoy exited with {status}:\n{}", self.log());
        }
    }
}

impl Drop for RunningEnvoy {
    fn drop(&mut self) {
        if thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- last lines of the Envoy log ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on `ip` (bound and released).
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// Polls `probe` every 50 ms until it gives a value, failing after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// GET `path` from `addr` over HTTP/1.1 (one connection per request).
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(stream, "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n{extra}\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Response { status, headers, body: body.to_owned() })
}

/// A loopback HTTP backend that answers every request with its status (changeable) and its name.
pub struct Backend {
    pub addr: SocketAddr,
    status: Arc<AtomicU16>,
}

impl Backend {
    pub fn start(ip: &str, name: &str, status: u16) -> Self {
        let listener = TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let (shared, name) = (status.clone(), name.to_owned());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (status, name) = (shared.clone(), name.clone());
                thread::spawn(move || serve(stream, &status, &name));
            }
        });
        Self { addr, status }
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

fn serve(mut stream: TcpStream, status: &AtomicU16, name: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let status = status.load(Ordering::SeqCst);
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
        name.len()
    );
    let _ = stream.flush();
}
