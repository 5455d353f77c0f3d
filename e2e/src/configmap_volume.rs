//! A ConfigMap volume as the kubelet keeps it, for a proxy with no kubelet around: a thread watches one
//! ConfigMap and writes each version of its data into a directory exactly as the kubelet's AtomicWriter
//! does:
//!
//! ```text
//! dir/..2026_11_26_04_38_37.123456789/cds.yaml   the files of one version, in a timestamped folder
//! dir/..data -> ..2026_11_26_04_38_37.123456789  the current version (swapped by one rename)
//! dir/cds.yaml -> ..data/cds.yaml                the names the proxy reads (made once)
//! ```
//!
//! An update writes a new timestamped folder, points a new symlink `..data_tmp` at it and renames that
//! over `..data` (one atomic step: a reader sees the old files or the new ones, never a mix), then removes
//! the old folder. The top-level names never change, so a watch on them sees nothing: Envoy's
//! `path_config_source.watched_directory` (which the operator's configuration sets) watches the folder
//! for moves, and the rename of `..data` is one.
//!
//! When the ConfigMap is deleted the files stay, as the kubelet leaves a mounted volume.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config};
use tokio::sync::oneshot;

/// The symlink to the current version's folder.
pub const DATA_DIR: &str = "..data";
const DATA_DIR_TMP: &str = "..data_tmp";

/// Writes `files` into `dir` as one atomic update, the kubelet's way (see the module docs).
pub fn write_atomically(dir: &Path, files: &BTreeMap<String, String>) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let version_dir = format!("..{}.{:09}", since.as_secs(), since.subsec_nanos());
    std::fs::create_dir(dir.join(&version_dir))?;
    for (name, text) in files {
        std::fs::write(dir.join(&version_dir).join(name), text)?;
    }
    let old = std::fs::read_link(dir.join(DATA_DIR)).ok();
    let _ = std::fs::remove_file(dir.join(DATA_DIR_TMP));
    symlink(&version_dir, dir.join(DATA_DIR_TMP))?;
    std::fs::rename(dir.join(DATA_DIR_TMP), dir.join(DATA_DIR))?;
    for name in files.keys() {
        let visible = dir.join(name);
        if std::fs::symlink_metadata(&visible).is_err() {
            symlink(Path::new(DATA_DIR).join(name), &visible)?;
        }
    }
    // Names that the new version no longer has.
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !files.contains_key(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != version_dir.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// One version written into the folder.
#[derive(Debug, Clone)]
pub struct Written {
    /// When.
    pub at: Instant,
    /// Its `csp.contracts.dev/config-version` annotation.
    pub config_version: Option<String>,
}

/// A folder that follows a ConfigMap; the following stops when dropped.
#[derive(Debug)]
pub struct ConfigMapVolume {
    /// The folder.
    pub dir: PathBuf,
    written: Arc<Mutex<Vec<Written>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn client() -> Result<Client, String> {
    let kubeconfig = Kubeconfig::read_from(crate::kubeconfig()).map_err(|e| e.to_string())?;
    let config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.map_err(|e| e.to_string())?;
    Client::try_from(config).map_err(|e| e.to_string())
}

impl ConfigMapVolume {
    /// Follows the ConfigMap `namespace/name` into `dir`.
    pub fn follow(namespace: &str, name: &str, dir: &Path) -> Self {
        let written = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = oneshot::channel::<()>();
        let (namespace, name, target, log) = (namespace.to_owned(), name.to_owned(), dir.to_owned(), written.clone());
        let thread = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => return eprintln!("configmap volume: no runtime: {e}"),
            };
            runtime.block_on(async move {
                let client = match client().await {
                    Ok(c) => c,
                    Err(e) => return eprintln!("configmap volume: no client: {e}"),
                };
                let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
                let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
                let mut updates = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
                let mut stopped = stopped;
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        next = updates.next() => match next {
                            Some(Ok(cm)) => {
                                let files = cm.data.clone().unwrap_or_default();
                                if let Err(e) = write_atomically(&target, &files) {
                                    eprintln!("configmap volume: cannot write {}: {e}", target.display());
                                    continue;
                                }
                                let config_version = cm
                                    .metadata
                                    .annotations
                                    .as_ref()
                                    .and_then(|a| a.get("csp.contracts.dev/config-version"))
                                    .cloned();
                                log.lock().unwrap_or_else(PoisonError::into_inner).push(Written { at: Instant::now(), config_version });
                            }
                            Some(Err(e)) => eprintln!("configmap volume: watch failed (retrying): {e}"),
                            None => return,
                        },
                    }
                }
            });
        });
        Self { dir: dir.to_owned(), written, stop: Some(stop), thread: Some(thread) }
    }

    /// Every version written so far.
    pub fn written(&self) -> Vec<Written> {
        self.written.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits until the version `config_version` has been written; returns when it was.
    pub fn wait_for(&self, config_version: &str, timeout: Duration) -> Instant {
        crate::wait_until(&format!("ConfigMap version {config_version} in {}", self.dir.display()), timeout, || {
            self.written().into_iter().find(|w| w.config_version.as_deref() == Some(config_version)).map(|w| w.at)
        })
    }
}

impl Drop for ConfigMapVolume {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn updates_swap_the_data_symlink_and_keep_the_visible_names() {
        let dir = std::env::temp_dir().join(format!("csp-volume-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_atomically(&dir, &files(&[("cds.yaml", "v1"), ("old.yaml", "x")])).expect("first");
        let first = std::fs::read_link(dir.join(DATA_DIR)).expect("..data");
        assert_eq!(std::fs::read_link(dir.join("cds.yaml")).expect("link"), Path::new("..data/cds.yaml"));
        assert_eq!(std::fs::read_to_string(dir.join("cds.yaml")).expect("read"), "v1");

        write_atomically(&dir, &files(&[("cds.yaml", "v2")])).expect("second");
        assert_eq!(std::fs::read_to_string(dir.join("cds.yaml")).expect("read"), "v2");
        assert_ne!(std::fs::read_link(dir.join(DATA_DIR)).expect("..data"), first);
        assert!(!dir.join(&first).exists(), "the old version's folder is gone");
        assert!(std::fs::symlink_metadata(dir.join("old.yaml")).is_err(), "a dropped name is gone");
        let entries: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries.len(), 3, "{entries:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
