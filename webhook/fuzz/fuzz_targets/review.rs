//! Fuzzes the request decoding and the evaluation: any body must give a 400 or a well-formed answer,
//! never a panic; an answer to a request without a readable object is never an allow.
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use webhook::admission::{Index, Settings, review};
use webhook::evaluate::ContractRef;

struct Fixed(Vec<Arc<crds::ContractPolicy>>);

impl Index for Fixed {
    fn policies(&self) -> Vec<Arc<crds::ContractPolicy>> {
        self.0.clone()
    }
    fn contracts_in(&self, _: &str) -> Vec<ContractRef> {
        vec![ContractRef { name: "c".into(), service: "payment-verify".into(), regions: vec!["gz".into(), "sz".into()] }]
    }
    fn namespace_labels(&self, _: &str) -> Option<BTreeMap<String, String>> {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    let spec = serde_json::from_value(serde_json::json!({
        "failover": {"requiredRegions": ["gz", "sz", "hz"], "minRegions": 2},
        "match": {"namespaceSelector": {"matchLabels": {"tier": "production"}}}
    }))
    .expect("policy");
    let index = Fixed(vec![Arc::new(crds::ContractPolicy::new("p", spec))]);
    if let Ok((answer, outcome)) = review(data, &index, &Settings::default()) {
        let answer = serde_json::to_value(answer).expect("the answer serializes");
        let response = &answer["response"];
        assert!(response["uid"].as_str().is_some_and(|u| !u.is_empty()));
        let allowed = response["allowed"].as_bool().expect("allowed is a bool");
        assert_eq!(allowed, outcome.decision != "deny");
        if !allowed {
            assert!(response["status"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
});
