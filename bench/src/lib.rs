//! What the benchmark drivers share (`bench_operator`, `bench_xds`): the realistic contracts of
//! `operator/benches/fixtures` ([`fixtures`]), the load they put on a real API server (Nodes, namespaces,
//! Services, EndpointSlices and ChannelContracts, [`load`]), statistics ([`stats`]), and what is read of
//! processes ([`process`]) and of Prometheus text ([`prometheus`]).

#[path = "../../operator/benches/fixtures/mod.rs"]
pub mod fixtures;
pub mod load;
pub mod process;
pub mod prometheus;
pub mod simulated_proxy;
pub mod stats;

/// A line on standard error, with the wall-clock time: `[<who> HH:MM:SS] msg`.
pub fn log(who: &str, msg: impl AsRef<str>) {
    eprintln!("[{who} {}] {}", clock(), msg.as_ref());
}

/// The time of day (UTC), `HH:MM:SS`.
pub fn clock() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("{:02}:{:02}:{:02}", (secs / 3600) % 24, (secs / 60) % 60, secs % 60)
}
