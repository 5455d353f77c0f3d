//! A network namespace of a test's own, where backends and Envoy run and traffic flows.
//!
//! The API server refuses EndpointSlice addresses in 127.0.0.0/8, so the pods' addresses are 10.77.0.x:
//! inside the namespace, `10.77.0.1/24` on its loopback makes every 10.77.0.x address local. Nothing
//! outside the namespace can reach them, and nothing inside can reach anything else, so traffic never
//! leaves it. Needs root (`ip netns`).
//!
//! Namespaces are named `csp-e2e-<pid>-<n>`; those of earlier test processes that are gone are removed
//! when a new one is made.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::run;

/// The prefix of the namespaces' names.
pub const PREFIX: &str = "csp-e2e-";
/// The network whose addresses are local inside the namespace.
pub const NETWORK: &str = "10.77.0";

/// A network namespace, deleted when dropped (drop the processes in it first).
#[derive(Debug)]
pub struct NetworkNamespace {
    /// Its name.
    pub name: String,
}

fn ip(args: &[&str]) -> crate::Run {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run(cmd, None)
}

/// Whether a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes the `csp-e2e-<pid>-…` namespaces of processes that are gone.
pub fn remove_stale() {
    let listed = ip(&["netns", "list"]);
    for line in listed.stdout.lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok_and(|pid| !alive(pid)) {
            let _ = ip(&["netns", "delete", name]);
        }
    }
}

impl NetworkNamespace {
    /// Makes a namespace with loopback up and 10.77.0.1/24 on it.
    pub fn create() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let name = format!("{PREFIX}{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]).ok();
        let ns = Self { name };
        ns.run("ip", &["link", "set", "lo", "up"]).ok();
        ns.run("ip", &["addr", "add", &format!("{NETWORK}.1/24"), "dev", "lo"]).ok();
        ns
    }

    /// `ip netns exec <name> <program> <args…>`.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        cmd
    }

    /// Runs a program inside the namespace.
    pub fn run(&self, program: &str, args: &[&str]) -> crate::Run {
        run(self.command(program, args), None)
    }

    /// The address `10.77.0.<host>`.
    pub fn address(host: u8) -> String {
        format!("{NETWORK}.{host}")
    }
}

impl Drop for NetworkNamespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.name]);
    }
}
