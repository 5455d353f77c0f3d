//! Time to translate ChannelContracts into Envoy resources (`operator::desired`: validation, the typed
//! Envoy messages, the filesystem-xDS YAML files and the sha256 config version), for one contract and for
//! 1,000 and 10,000 distinct contracts. Not part of CI: `make bench-operator` runs it (or
//! `cargo bench -p channel-contracts-operator --bench render`).
//!
//! The contracts are those of `benches/fixtures` (3 channels, 3 regions, 6 ready endpoints per channel),
//! spread over 50 namespaces; the same ones `make bench-operator` creates in a real cluster.

use std::hint::black_box;
use std::time::Duration;

use crds::ChannelContract;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use operator::{ChannelEndpoints, ProxyOptions, desired};

mod fixtures;

const NAMESPACES: usize = 50;
const COUNTS: [usize; 2] = [1_000, 10_000];

fn inputs(n: usize) -> Vec<(ChannelContract, ChannelEndpoints)> {
    (0..n)
        .map(|i| {
            let namespace = format!("bench-{:02}", i % NAMESPACES);
            let contract = serde_json::from_value(fixtures::contract_object(i, &namespace)).expect("a contract");
            let endpoints = serde_json::from_value(fixtures::channel_endpoints(i)).expect("endpoints");
            (contract, endpoints)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let options = ProxyOptions::default();
    let one = inputs(1);
    let (contract, endpoints) = &one[0];
    let resources = desired(contract, endpoints, &options).expect("translates");
    let bytes: usize = resources.files.values().map(String::len).sum();
    eprintln!("one contract: {} clusters, files {bytes} bytes", resources.clusters.len());

    let mut group = c.benchmark_group("desired");
    group.throughput(Throughput::Elements(1));
    group.bench_function("one", |b| b.iter(|| desired(black_box(contract), black_box(endpoints), &options)));
    group.finish();

    let mut group = c.benchmark_group("desired_all");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(15));
    for n in COUNTS {
        let all = inputs(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &all, |b, all| {
            b.iter(|| {
                for (contract, endpoints) in all {
                    black_box(desired(contract, endpoints, &options).expect("translates"));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
