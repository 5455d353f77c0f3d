//! What the end-to-end tests share: the real tools in `e2e/.bin`, the local control plane's kubeconfig,
//! a namespace of its own per test, and waiting on conditions instead of sleeping.
//!
//! Tests drive the cluster with `kubectl` exactly as a user would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Where `make tools` put the real binaries.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("CSP_E2E_BIN").map(PathBuf::from).unwrap_or_else(|| repo_root().join("e2e/.bin"))
}

/// A real tool from `e2e/.bin`.
pub fn tool(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The admin kubeconfig of the local control plane.
pub fn kubeconfig() -> PathBuf {
    let path = repo_root().join("e2e/.run/kubeconfig");
    assert!(
        path.exists(),
        "{} is missing: the e2e tests need the local control plane (`make cluster-up`, or run them with `make e2e`)",
        path.display()
    );
    path
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Run {
    /// The command line, for failure messages.
    pub command: String,
    /// Whether it exited 0.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(command: String, out: Output) -> Self {
        Self {
            command,
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with everything printed unless the command succeeded; returns stdout.
    pub fn ok(self) -> String {
        assert!(self.success, "`{}` failed:\nstdout: {}\nstderr: {}", self.command, self.stdout, self.stderr);
        self.stdout
    }

    /// Panics unless the command failed; returns stderr.
    pub fn failed(self) -> String {
        assert!(!self.success, "`{}` should have failed but succeeded:\nstdout: {}", self.command, self.stdout);
        self.stderr
    }
}

/// Runs kubectl against the local control plane, with `stdin` as its input if given.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(tool("kubectl"));
    cmd.arg("--kubeconfig").arg(kubeconfig()).args(args);
    run(cmd, stdin)
}

/// Runs a command, feeding `stdin`, and collects what it printed.
pub fn run(mut cmd: Command, stdin: Option<&str>) -> Run {
    let line = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {line}: {e} (run `make tools`)"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{line}: {e}"));
    Run::from(line, out)
}

/// Applies the CRD manifests once per test binary and waits until both are established.
pub fn ensure_crds() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = repo_root().join("crds/manifests");
        kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &dir.to_string_lossy()], None).ok();
        kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/channelcontracts.csp.contracts.dev",
                "crd/contractpolicies.csp.contracts.dev",
            ],
            None,
        )
        .ok();
    });
}

/// A unique name: `prefix-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A namespace of the test's own, deleted when dropped.
#[derive(Debug)]
pub struct TestNamespace {
    /// Its name.
    pub name: String,
}

impl TestNamespace {
    /// Creates a namespace named after the test with the given labels (`k=v`).
    pub fn new(test: &str, labels: &[&str]) -> Self {
        let name = unique(&format!("e2e-{test}"));
        kubectl(&["create", "namespace", &name], None).ok();
        let mut args = vec!["label", "namespace", name.as_str(), "csp-e2e=true"];
        args.extend_from_slice(labels);
        kubectl(&args, None).ok();
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false", "--ignore-not-found"], None);
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}
