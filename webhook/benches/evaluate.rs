//! Time to answer one AdmissionReview, and to evaluate one object alone, against 1, 10 and 100
//! ContractPolicies. Not part of CI: `make bench-webhook` runs it (or
//! `cargo bench -p channel-contracts-webhook --bench evaluate`).
//!
//! The request is `bench/service-review.json`: a Service CREATE as the API server sends it (~3 KB once
//! compacted: labels, annotations including kubectl's last-applied configuration, managedFields, a
//! service-account user). The same file is what `bench/webhook.sh` sends to the running webhook.
//!
//! The policies are a mix that a real cluster has: of every five, two match the Service (one by a
//! namespace selector, one by a label selector) and three do not (another namespace, another kind, a
//! namespace selector that does not select it). With one policy, that one matches. Five
//! ChannelContracts live in the namespace; one governs the Service.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use crds::{ContractPolicy, ContractPolicySpec, FAILOVER_REGIONS_ANNOTATION};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use webhook::admission::{Index, Settings, review};
use webhook::evaluate::{self, ContractRef, Kind, Subject};

/// The namespace of the request in `bench/service-review.json`.
const NAMESPACE: &str = "bench-payments";
/// The Service's name there.
const SERVICE: &str = "payment-verify";
const POLICY_COUNTS: [usize; 3] = [1, 10, 100];

/// What the caches would hold, in memory.
struct Memory {
    policies: Vec<Arc<ContractPolicy>>,
    contracts: BTreeMap<String, Vec<ContractRef>>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

impl Index for Memory {
    fn policies(&self) -> Vec<Arc<ContractPolicy>> {
        // The real index hands out the cache's shared handles too.
        self.policies.clone()
    }

    fn contracts_in(&self, namespace: &str) -> Vec<ContractRef> {
        self.contracts.get(namespace).cloned().unwrap_or_default()
    }

    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces.get(namespace).cloned()
    }
}

fn policy(i: usize) -> ContractPolicy {
    let spec = match i % 5 {
        // Matches by namespace selector; the Service complies.
        0 => json!({
            "enforcementAction": "Deny",
            "match": {"namespaceSelector": {"matchLabels": {"tier": "production"}}},
            "failover": {"requiredRegions": ["gz", "sz", "hz"]},
        }),
        // Another team's namespace: does not match.
        1 => json!({
            "enforcementAction": "Deny",
            "match": {"namespaces": [format!("team-{i}"), format!("team-{i}-staging")]},
            "failover": {"requiredRegions": ["gz", "sz"]},
        }),
        // Matches by label selector; the Service complies.
        2 => json!({
            "enforcementAction": "Warn",
            "match": {
                "kinds": ["Service"],
                "labelSelector": {"matchExpressions": [
                    {"key": "app.kubernetes.io/part-of", "operator": "In", "values": ["payments", "billing"]},
                ]},
            },
            "failover": {"requiredRegions": ["gz"], "minRegions": 2},
        }),
        // ChannelContracts only: does not match a Service.
        3 => json!({
            "enforcementAction": "Deny",
            "match": {"kinds": ["ChannelContract"]},
            "failover": {"requiredRegions": ["gz", "sz", "hz"]},
        }),
        // A namespace selector that does not select the namespace.
        _ => json!({
            "enforcementAction": "Audit",
            "match": {
                "namespaceSelector": {"matchLabels": {"tier": "staging"}},
                "excludedNamespaces": ["legacy"],
            },
            "failover": {"requiredRegions": ["gz", "sz", "hz"], "minRegions": 3},
            "requireContract": true,
        }),
    };
    let spec: ContractPolicySpec = serde_json::from_value(spec).expect("a valid ContractPolicy spec");
    ContractPolicy::new(&format!("policy-{i:03}"), spec)
}

fn contracts() -> Vec<ContractRef> {
    let regions = |r: &[&str]| r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let mut out = vec![ContractRef {
        name: SERVICE.to_owned(),
        service: SERVICE.to_owned(),
        regions: regions(&["gz", "sz", "hz"]),
    }];
    for (i, other) in ["ledger", "refunds", "fraud-score", "card-vault"].iter().enumerate() {
        out.push(ContractRef {
            name: format!("{other}-contract"),
            service: (*other).to_owned(),
            regions: if i % 2 == 0 { regions(&["gz", "sz"]) } else { regions(&["hz", "gz", "sz"]) },
        });
    }
    out
}

fn namespace_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kubernetes.io/metadata.name".to_owned(), NAMESPACE.to_owned()),
        ("tier".to_owned(), "production".to_owned()),
        ("team".to_owned(), "payments-core".to_owned()),
    ])
}

fn memory(policies: usize) -> Memory {
    let mut namespaces = BTreeMap::from([(NAMESPACE.to_owned(), namespace_labels())]);
    for i in 0..20 {
        namespaces.insert(format!("team-{i}"), BTreeMap::from([("tier".to_owned(), "staging".to_owned())]));
    }
    Memory {
        policies: (0..policies).map(policy).map(Arc::new).collect(),
        contracts: BTreeMap::from([(NAMESPACE.to_owned(), contracts())]),
        namespaces,
    }
}

/// The request body, compacted as the API server sends it; `regions` replaces the Service's annotation.
fn body(regions: &str) -> Vec<u8> {
    let mut review: Value =
        serde_json::from_str(include_str!("../../bench/service-review.json")).expect("bench/service-review.json");
    review["request"]["object"]["metadata"]["annotations"][FAILOVER_REGIONS_ANNOTATION] = json!(regions);
    // Not governed by a contract, so that the annotation alone decides.
    review["request"]["name"] = json!("payment-gateway");
    review["request"]["object"]["metadata"]["name"] = json!("payment-gateway");
    serde_json::to_vec(&review).expect("serialize")
}

fn subject(name: &str, regions: &str) -> Subject {
    let annotations = BTreeMap::from([(FAILOVER_REGIONS_ANNOTATION.to_owned(), regions.to_owned())]);
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), name.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "payments".to_owned()),
        ("team".to_owned(), "payments-core".to_owned()),
        ("tier".to_owned(), "production".to_owned()),
    ]);
    Subject {
        kind: Kind::Service,
        namespace: NAMESPACE.to_owned(),
        name: name.to_owned(),
        labels,
        declaration: evaluate::service_declaration(name, &annotations, &contracts()),
        drills: None,
    }
}

fn settings() -> Settings {
    Settings { exempt_namespaces: vec!["csp-system".to_owned()] }
}

fn bench_review(c: &mut Criterion) {
    let settings = settings();
    let allow = body("gz, sz, hz");
    let deny = body("gz, sz");
    assert!((2_000..=3_200).contains(&allow.len()), "the request body is {} bytes", allow.len());
    let mut group = c.benchmark_group("review");
    group.throughput(Throughput::Elements(1));
    for n in POLICY_COUNTS {
        let index = memory(n);
        let (answer, _) = review(&allow, &index, &settings).expect("answered");
        let answer = serde_json::to_value(answer).expect("answer");
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        let (answer, outcome) = review(&deny, &index, &settings).expect("answered");
        let answer = serde_json::to_value(answer).expect("answer");
        assert_eq!(answer["response"]["allowed"], false, "{answer}");
        assert_eq!(outcome.evaluation.map(|d| d.matched.len()), Some(n.div_ceil(5) + (n + 2) / 5));
        group.bench_with_input(BenchmarkId::new("allow", n), &index, |b, index| {
            b.iter(|| review(black_box(&allow), index, &settings).expect("answered"));
        });
        group.bench_with_input(BenchmarkId::new("deny", n), &index, |b, index| {
            b.iter(|| review(black_box(&deny), index, &settings).expect("answered"));
        });
    }
    group.finish();
}

fn bench_evaluate(c: &mut Criterion) {
    let exempt = settings().exempt_namespaces;
    let labels = namespace_labels();
    let allow = subject("payment-gateway", "gz, sz, hz");
    let deny = subject("payment-gateway", "gz, sz");
    let mut group = c.benchmark_group("evaluate");
    group.throughput(Throughput::Elements(1));
    for n in POLICY_COUNTS {
        let policies: Vec<ContractPolicy> = (0..n).map(policy).collect();
        assert!(evaluate::evaluate(&allow, &policies, Some(&labels), &exempt).allowed());
        assert!(!evaluate::evaluate(&deny, &policies, Some(&labels), &exempt).allowed());
        group.bench_with_input(BenchmarkId::new("allow", n), &policies, |b, policies| {
            b.iter(|| evaluate::evaluate(black_box(&allow), policies, Some(&labels), &exempt));
        });
        group.bench_with_input(BenchmarkId::new("deny", n), &policies, |b, policies| {
            b.iter(|| evaluate::evaluate(black_box(&deny), policies, Some(&labels), &exempt));
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_review, bench_evaluate
}
criterion_main!(benches);
