//! Background traffic through a bed's proxy: a thread that sends requests (curl in the bed's network
//! namespace) until dropped, and keeps every reply.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::netns::NetworkNamespace;
use crate::xds::XdsBed;

/// One reply.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When it came back.
    pub at: Instant,
    /// The same, Unix milliseconds (to read next to the proxies' logs).
    pub unix_ms: u128,
    /// The HTTP status (0: no answer).
    pub status: u16,
    /// The backend that answered (`x-backend`), empty if none.
    pub backend: String,
}

/// Requests for `<service>.<bed namespace>:<port>` through a proxy, `batch` every `every`, until dropped.
#[derive(Debug)]
pub struct Traffic {
    /// The proxy it goes through.
    pub proxy: String,
    /// The Service it asks for.
    pub service: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    /// Starts it; panics if the bed has no proxy `proxy`.
    pub fn start(bed: &XdsBed, proxy: &str, service: &str, port: u16, batch: usize, every: Duration) -> Self {
        let spec =
            &bed.proxies.iter().find(|p| p.spec.name == proxy).unwrap_or_else(|| panic!("no proxy {proxy}")).spec;
        let url = format!("http://{}:{port}/", NetworkNamespace::address(spec.host));
        let authority = format!("{service}.{}:{port}", bed.ns.name);
        let netns = bed.netns.name.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, replies) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            // The bed owns (and deletes) the namespace; this is a view of it.
            let netns = std::mem::ManuallyDrop::new(NetworkNamespace { name: netns });
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                let got = crate::testbed::requests(&netns, &url, batch, &[("Host", authority.as_str())]);
                let (at, unix_ms) = (
                    Instant::now(),
                    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis()),
                );
                let mut replies = replies.lock().unwrap_or_else(PoisonError::into_inner);
                replies.extend(got.into_iter().map(|r| Seen { at, unix_ms, status: r.status, backend: r.backend }));
                drop(replies);
                std::thread::sleep(every.saturating_sub(started.elapsed()));
            }
        });
        Self { proxy: proxy.to_owned(), service: service.to_owned(), stop, seen, thread: Some(thread) }
    }

    /// Every reply so far.
    pub fn replies(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The replies since `from`.
    pub fn since(&self, from: Instant) -> Vec<Seen> {
        self.replies().into_iter().filter(|s| s.at >= from).collect()
    }

    /// Replies so far by (status, backend).
    pub fn by_reply(&self) -> BTreeMap<(u16, String), u64> {
        let mut out = BTreeMap::new();
        for s in self.replies() {
            *out.entry((s.status, s.backend)).or_insert(0) += 1;
        }
        out
    }

    /// Replies so far answered `status` by `backend`.
    pub fn count(&self, status: u16, backend: &str) -> u64 {
        self.replies().iter().filter(|s| s.status == status && s.backend == backend).count() as u64
    }

    /// Whether the last `n` replies since `from` were all 200 from `backend`.
    pub fn settled_on(&self, from: Instant, backend: &str, n: usize) -> bool {
        let seen = self.since(from);
        seen.len() >= n && seen[seen.len() - n..].iter().all(|s| s.status == 200 && s.backend == backend)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
