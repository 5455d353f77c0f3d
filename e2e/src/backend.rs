//! A backend process (`src/bin/backend.rs`) in the test's network namespace: a pod behind a Service,
//! whose behaviour the test changes through its mode file and whose requests it counts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::netns::NetworkNamespace;
use crate::{Tied, wait_until};

/// The port every backend listens on (the EndpointSlices' port; Services map their port to it).
pub const PORT: u16 = 8080;

/// A running backend, stopped when dropped.
#[derive(Debug)]
pub struct Backend {
    /// Its name (`x-backend`).
    pub name: String,
    /// Its address, 10.77.0.x.
    pub address: String,
    process: Tied,
    mode_file: PathBuf,
    count_file: PathBuf,
}

impl Backend {
    /// Starts `binary` as backend `name` on `address`:[`PORT`] inside `netns`, its files in `dir`, and
    /// waits until it listens.
    pub fn start(binary: &Path, netns: &NetworkNamespace, name: &str, address: &str, dir: &Path) -> Self {
        Self::start_on(binary, netns, name, address, PORT, dir)
    }

    /// Like [`Backend::start`], on another port.
    pub fn start_on(binary: &Path, netns: &NetworkNamespace, name: &str, address: &str, port: u16, dir: &Path) -> Self {
        let mode_file = dir.join(format!("{name}.mode"));
        let count_file = dir.join(format!("{name}.count"));
        std::fs::write(&mode_file, "ok").expect("write the mode file");
        let _ = std::fs::remove_file(&count_file);
        let args: Vec<String> = [
            "netns",
            "exec",
            &netns.name,
            &binary.to_string_lossy(),
            "--listen",
            &format!("{address}:{port}"),
            "--name",
            name,
            "--mode-file",
            &mode_file.to_string_lossy(),
            "--count-file",
            &count_file.to_string_lossy(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut process = Tied::spawn(Path::new("ip"), &args, &[], &dir.join(format!("{name}.log")));
        wait_until(&format!("backend {name} to listen"), Duration::from_secs(20), || {
            assert!(process.running(), "backend {name} exited:\n{}", process.log_tail());
            count_file.exists().then_some(())
        });
        Self { name: name.to_owned(), address: address.to_owned(), process, mode_file, count_file }
    }

    /// Sets its behaviour: `ok`, `slow 500ms`, `status 503`, `flaky 2`.
    pub fn set_mode(&self, mode: &str) {
        let tmp = self.mode_file.with_extension("tmp");
        std::fs::write(&tmp, mode).expect("write the mode");
        std::fs::rename(&tmp, &self.mode_file).expect("swap the mode");
    }

    /// The requests it has received.
    pub fn requests(&self) -> u64 {
        std::fs::read_to_string(&self.count_file).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}
