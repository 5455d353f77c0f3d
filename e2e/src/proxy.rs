//! A real Envoy as a pod would run it: inside the test's network namespace, with the contract's
//! ConfigMap volume mounted where the operator says proxies mount it (`--proxy-config-dir`).
//!
//! The mount is a bind mount in a private mount namespace of Envoy's own (`unshare --mount`), so several
//! Envoys each see their own ConfigMap at the same path, as pods do. The bootstrap is the operator's
//! ([`operator::envoy::bootstrap::filesystem`]): CDS and LDS from `<dir>/cds.yaml` and `<dir>/lds.yaml`
//! with `watched_directory: <dir>`, and the listener's routes from `<dir>/rds.yaml`, likewise watched.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::netns::NetworkNamespace;
use crate::{Tied, tool};

/// A running Envoy, stopped when dropped.
#[derive(Debug)]
pub struct Envoy {
    /// The process.
    pub process: Tied,
    /// Its admin interface, inside the network namespace.
    pub admin: SocketAddr,
    pid_file: PathBuf,
    netns: String,
}

/// The script that becomes Envoy (each step `exec`s the next, so `$$` is Envoy's pid):
/// `$1` pid file, `$2` volume, `$3` mount point, `$4` network namespace, `$5` envoy, `$6` bootstrap.
const LAUNCH: &str = r#"echo $$ > "$1"; exec unshare --mount --propagation private sh -c 'mount --bind "$1" "$2" && exec ip netns exec "$3" "$4" --disable-hot-restart --concurrency 1 -l info -c "$5"' envoy "$2" "$3" "$4" "$5" "$6""#;

impl Envoy {
    /// Starts Envoy in `netns` with `volume` mounted at `mount_point`, its admin interface on
    /// 127.0.0.1:`admin_port` inside the namespace; its files go to `dir`.
    pub fn start(netns: &NetworkNamespace, volume: &Path, mount_point: &Path, admin_port: u16, dir: &Path) -> Self {
        let admin: SocketAddr = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let bootstrap = operator::envoy::bootstrap::filesystem(&mount_point.to_string_lossy(), admin, "csp-e2e");
        let yaml = operator::envoy::bootstrap::to_yaml(&bootstrap).expect("the bootstrap writes as YAML");
        let bootstrap_file = dir.join("envoy.yaml");
        std::fs::write(&bootstrap_file, yaml).expect("write the bootstrap");
        let pid_file = dir.join("envoy.pid");
        let _ = std::fs::remove_file(&pid_file);
        let args: Vec<String> = vec![
            "-c".into(),
            LAUNCH.into(),
            "launch".into(),
            pid_file.to_string_lossy().into_owned(),
            volume.to_string_lossy().into_owned(),
            mount_point.to_string_lossy().into_owned(),
            netns.name.clone(),
            tool("envoy").to_string_lossy().into_owned(),
            bootstrap_file.to_string_lossy().into_owned(),
        ];
        let process = Tied::spawn(Path::new("sh"), &args, &[], &dir.join("envoy.log"));
        Self { process, admin, pid_file, netns: netns.name.clone() }
    }

    /// Envoy's pid (the launcher's `exec`s keep it), once it has been written.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file).ok()?.trim().parse().ok()
    }

    /// The command name of the process with Envoy's pid (`envoy` while it runs).
    pub fn command_name(&self) -> Option<String> {
        let pid = self.pid()?;
        Some(std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim().to_owned())
    }

    /// Panics with the log unless Envoy runs.
    pub fn assert_running(&mut self) {
        assert!(self.process.running(), "Envoy exited:\n{}", self.process.log_tail());
    }

    /// GET an admin path (inside the namespace); the body if it answered 200.
    pub fn admin_get(&self, path: &str) -> Option<String> {
        let url = format!("http://{}{path}", self.admin);
        let out = crate::run(
            {
                let mut cmd = std::process::Command::new("ip");
                cmd.args(["netns", "exec", &self.netns, "curl", "-sS", "--max-time", "5", "-f", &url]);
                cmd
            },
            None,
        );
        out.success.then_some(out.stdout)
    }

    /// The value of a counter or gauge from `/stats`, e.g. `cluster.x.upstream_rq_retry`.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let stats = self.admin_get(&format!("/stats?filter=^{}$", name.replace('~', "%7E")))?;
        stats.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))?.trim().parse().ok())
    }
}
