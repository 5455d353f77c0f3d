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

/// The admin kubeconfig of the local control plane: that of `CSP_RUN_DIR` when set (the state folder of
/// `e2e/cluster.sh`, e.g. a benchmark's control plane of its own), else of `e2e/.run`.
pub fn kubeconfig() -> PathBuf {
    let dir = std::env::var_os("CSP_RUN_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("e2e/.run"));
    let path = dir.join("kubeconfig");
    assert!(
        path.exists(),
        "{} is missing: the e2e tests need the local control plane (`make cluster-up`, or run them with `make e2e`)",
        path.display()
    );
    path
}

/// Runs a real tool (`kubectl`, `helm`) against the local control plane, ignoring how it ends and what it
/// prints: for clean-ups in `Drop`, which run while a failed test unwinds and where a second panic (a missing
/// tool or kubeconfig) would abort the whole test binary and hide the first failure.
pub fn quietly(name: &str, args: &[&str]) {
    let dir = std::env::var_os("CSP_RUN_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("e2e/.run"));
    let _ = Command::new(tool(name))
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
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

/// Runs kubectl against the control plane of `kubeconfig` (one of several, e.g. a fleet's members).
pub fn kubectl_at(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(tool("kubectl"));
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    run(cmd, stdin)
}

/// `helm` against the local control plane.
pub fn helm(args: &[&str]) -> Run {
    let mut cmd = Command::new(tool("helm"));
    cmd.arg("--kubeconfig").arg(kubeconfig()).args(args);
    run(cmd, None)
}

/// Every object of a Helm release (from `helm get manifest`) as `Kind/name`, with what shows a change to it:
/// its generation where the API server keeps one (so that controllers writing status do not count); for
/// a Lease its labels and annotations, the chart's part of it (the replicas renew its spec all the time);
/// else its resourceVersion.
pub fn release_objects(release: &str, namespace: &str) -> Vec<(String, String)> {
    let manifest = helm(&["get", "manifest", release, "-n", namespace]).ok();
    let objects = kubectl(&["get", "-n", namespace, "-f", "-", "-o", "json"], Some(&manifest)).ok();
    let v: serde_json::Value = serde_json::from_str(&objects).expect("json");
    let items = v["items"].as_array().cloned().unwrap_or_else(|| vec![v.clone()]);
    let mut out: Vec<(String, String)> = items
        .iter()
        .map(|o| {
            let m = &o["metadata"];
            let kind = o["kind"].as_str().unwrap_or_default();
            let version = if !m["generation"].is_null() {
                format!("generation {}", m["generation"])
            } else if kind == "Lease" {
                format!("labels {} annotations {}", m["labels"], m["annotations"])
            } else {
                format!("resourceVersion {}", m["resourceVersion"])
            };
            (format!("{kind}/{}", m["name"].as_str().unwrap_or_default()), version)
        })
        .collect();
    out.sort();
    out
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
    DONE.get_or_init(|| apply_crds(&kubeconfig()));
}

/// Applies the CRD manifests to the control plane of `kubeconfig` and waits until all are established.
pub fn apply_crds(kubeconfig: &Path) {
    let dir = repo_root().join("crds/manifests");
    kubectl_at(kubeconfig, &["apply", "--server-side", "--force-conflicts", "-f", &dir.to_string_lossy()], None).ok();
    kubectl_at(
        kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/channelcontracts.csp.contracts.dev",
            "crd/contractpolicies.csp.contracts.dev",
            "crd/contractdrills.csp.contracts.dev",
        ],
        None,
    )
    .ok();
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
        // Created with its labels in one request, so that nothing sees it unlabelled.
        let mut yaml =
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    csp-e2e: \"true\"\n");
        for label in labels {
            let (k, v) = label.split_once('=').unwrap_or((label, ""));
            yaml.push_str(&format!("    {k}: \"{v}\"\n"));
        }
        kubectl(&["create", "-f", "-"], Some(&yaml)).ok();
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

/// A product binary built by `cargo build` (run-e2e.sh builds them before the tests).
pub fn product_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let path = target.join("debug").join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --bins` (make e2e does)", path.display());
    path
}

/// A free TCP port (free on every address), for a process the test starts to listen on.
///
/// Not from the kernel's ephemeral range (32768–60999 by default): a port found free there can be taken,
/// before the process binds it, as the source port of any outgoing connection on the machine (a kubectl,
/// a proxy's upstream). The ports come from 20000–32767 instead, starting at a place of this process's own
/// and never handed out twice by it.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_768;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        // One after the other: a listener on 0.0.0.0 still open would make the loopback bind fail.
        let any = std::net::TcpListener::bind(("0.0.0.0", port)).is_ok();
        let loopback = any && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if loopback {
            return port;
        }
    }
    panic!("no free port in {FIRST}-{}", FIRST + SPAN - 1)
}

/// A background process that dies with the test process: it runs under a shell that waits on the
/// test's pipe and kills the process when the pipe closes (when the test binary exits, whatever way).
#[derive(Debug)]
pub struct Tied {
    shell: std::process::Child,
    /// Where its output goes.
    pub log: PathBuf,
    /// The process's own pid (not the shell's).
    pub pid: Option<u32>,
}

impl Tied {
    /// Starts `program args…`, output to `log`.
    pub fn spawn(program: &Path, args: &[String], env: &[(&str, String)], log: &Path) -> Self {
        let quoted: Vec<String> = std::iter::once(program.to_string_lossy().into_owned())
            .chain(args.iter().cloned())
            .map(|a| shell_quote(&a))
            .collect();
        let script = format!(
            "{} >{} 2>&1 </dev/null & pid=$!; echo $pid; cat >/dev/null; kill -TERM $pid 2>/dev/null; wait $pid",
            quoted.join(" "),
            shell_quote(&log.to_string_lossy())
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut shell = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let pid = shell.stdout.take().and_then(|out| {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).ok()?;
            line.trim().parse().ok()
        });
        Self { shell, log: log.to_path_buf(), pid }
    }

    /// Stops it (SIGTERM, then waits) and returns how it exited (the shell passes the exit code on).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        drop(self.shell.stdin.take());
        self.shell.wait().ok()
    }

    /// Whether it still runs: its shell does, and the process itself is not gone or a zombie (the shell
    /// outlives it until the test lets go).
    pub fn running(&mut self) -> bool {
        let process_alive = self.pid.is_none_or(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
                .unwrap_or(false)
        });
        process_alive && matches!(self.shell.try_wait(), Ok(None))
    }

    /// Its peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Tied {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A folder under `e2e/.run/` for a test's files (certificates, logs).
pub fn run_dir(name: &str) -> PathBuf {
    let dir = repo_root().join("e2e/.run/tests").join(unique(name));
    std::fs::create_dir_all(&dir).expect("create the test's run folder");
    dir
}

/// Runs curl (the machine's) with the given arguments; returns (HTTP status, body).
pub fn curl(args: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"]).args(args);
    let out = run(cmd, None);
    let text = out.stdout;
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}
pub mod webhook;

pub mod backend;
pub mod chaos;
pub mod configmap_volume;
pub mod fleet;
pub mod lua;
pub mod netns;
pub mod observability;
pub mod proxy;
pub mod rbac;
pub mod table;
pub mod testbed;
pub mod traffic;
pub mod xds;
