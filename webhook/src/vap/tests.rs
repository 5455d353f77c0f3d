use super::*;
use crate::subject::parse_regions;

fn policy(yaml: serde_json::Value) -> ContractPolicy {
    ContractPolicy::new("national-baseline", serde_json::from_value(yaml).expect("spec"))
}

fn settings() -> Settings {
    Settings {
        namespace: "csp-system".into(),
        exempt_namespaces: vec!["legacy".into()],
        params: Params { name: "contract-regions".into() },
    }
}

#[test]
fn the_path_is_the_webhook_unless_asked_and_expressible() {
    let webhook = policy(json!({"failover": {"requiredRegions": ["gz"]}}));
    assert!(matches!(path(&webhook.spec), Path::Webhook(_)));
    assert!(generate(&webhook, &settings()).is_none());
    for mode in ["ValidatingAdmissionPolicy", "Auto"] {
        let p = policy(json!({"enforcement": mode, "failover": {"requiredRegions": ["gz"]}}));
        assert_eq!(path(&p.spec), Path::Vap, "{mode}");
    }
    let needs_lookup = policy(json!({"enforcement": "Auto", "requireContract": true}));
    let Path::Webhook(why) = path(&needs_lookup.spec) else { panic!("requireContract cannot be CEL") };
    assert!(why.contains("requireContract needs the ChannelContracts"), "{why}");
}

#[test]
fn a_deny_policy_on_both_kinds_becomes_four_pairs_with_the_right_actions() {
    let p = policy(json!({"enforcement": "Auto", "failover": {"requiredRegions": ["gz", "sz", "hz"]}}));
    let generated = generate(&p, &settings()).expect("expressible");
    let names: Vec<(String, Vec<String>)> = generated
        .iter()
        .map(|g| (g.policy.metadata.name.clone().unwrap_or_default(), g.binding.spec.validation_actions.clone()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("csp-national-baseline-service".into(), vec!["Deny".into()]),
            ("csp-national-baseline-service-tolerated".into(), vec!["Warn".into()]),
            ("csp-national-baseline-contract".into(), vec!["Deny".into()]),
            ("csp-national-baseline-contract-tolerated".into(), vec!["Warn".into()]),
        ]
    );
    let service = &generated[0];
    let spec = service.policy.spec.as_ref().expect("spec");
    assert_eq!(spec.param_kind.as_ref().and_then(|k| k.kind.as_deref()), Some("ContractRegionIndex"));
    let param_ref = service.binding.spec.param_ref.as_ref().expect("paramRef");
    assert_eq!(param_ref.parameter_not_found_action.as_deref(), Some("Deny"), "a missing index must not admit");
    let operations = |g: &Generated| {
        let rules =
            g.policy.spec.as_ref().and_then(|s| s.match_constraints.as_ref()).and_then(|m| m.resource_rules.clone());
        rules.unwrap_or_default().iter().flat_map(|r| r.operations.clone().unwrap_or_default()).collect::<Vec<_>>()
    };
    assert_eq!(operations(&generated[0]), ["CREATE", "UPDATE"]);
    assert_eq!(operations(&generated[1]), ["UPDATE"], "a CREATE never reaches the tolerated pair");
    let contract = &generated[2];
    assert!(contract.policy.spec.as_ref().and_then(|s| s.param_kind.as_ref()).is_none());
    let selector =
        serde_json::to_value(&spec.match_constraints.as_ref().expect("constraints").namespace_selector).expect("json");
    let never = &selector["matchExpressions"][0]["values"];
    assert_eq!(never, &json!(["kube-system", "kube-public", "kube-node-lease", "csp-system", "legacy"]));
    assert_eq!(
        selector["matchExpressions"][1],
        json!({"key": "csp.contracts.dev/webhook", "operator": "NotIn", "values": ["disabled"]})
    );
}

#[test]
fn warn_and_audit_policies_get_one_pair_per_kind() {
    for (action, binding) in [("Warn", "Warn"), ("Audit", "Audit")] {
        let p = policy(
            json!({"enforcement": "ValidatingAdmissionPolicy", "enforcementAction": action, "match": {"kinds": ["Service"]}}),
        );
        let generated = generate(&p, &settings()).expect("expressible");
        assert_eq!(generated.len(), 1);
        let actions = generated[0].binding.spec.validation_actions.clone();
        assert_eq!(actions, vec![binding.to_owned()]);
    }
}

#[test]
fn label_selectors_become_cel_with_the_apis_meaning() {
    let selector: LabelSelector = serde_json::from_value(json!({
        "matchLabels": {"tier": "gold"},
        "matchExpressions": [
            {"key": "team", "operator": "In", "values": ["a", "b"]},
            {"key": "stage", "operator": "NotIn", "values": ["test"]},
            {"key": "owner", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"}
        ]
    }))
    .expect("selector");
    assert_eq!(
        selector_cel("l", &selector),
        r#"l[?"tier"] == optional.of("gold") && ("team" in l && l["team"] in ["a", "b"]) && !("stage" in l && l["stage"] in ["test"]) && ("owner" in l) && !("legacy" in l)"#
    );
    assert_eq!(selector_cel("l", &LabelSelector::default()), "true");
}

#[test]
fn declarations_list_each_governed_service_with_its_contracts_by_name() {
    let c = |name: &str, service: &str, regions: &[&str]| ContractRef {
        name: name.into(),
        service: service.into(),
        regions: regions.iter().map(|r| (*r).to_owned()).collect(),
    };
    let (b, a, other) = (c("pv-b", "pv", &["hz"]), c("pv-a", "pv", &["gz", "sz"]), c("cart", "cart", &[]));
    let data = declarations([("pay", &b), ("pay", &a), ("shop", &other)]);
    assert_eq!(
        data,
        BTreeMap::from([
            ("pay.pv".to_owned(), "pv-a=gz,sz;pv-b=hz".to_owned()),
            ("shop.cart".to_owned(), "cart=".to_owned())
        ])
    );
}

#[test]
fn long_names_are_shortened_within_the_apis_limits() {
    let long = "p".repeat(250);
    let name = object_name(&long, "service-tolerated");
    assert!(name.len() <= 253 && name.ends_with("-service-tolerated"), "{name}");
    assert_ne!(object_name(&long, "service"), object_name(&format!("{long}x"), "service"));
    let label = policy_label_value(&long);
    assert!(label.len() <= 63, "{label}");
}

#[test]
fn the_region_tokens_split_where_the_webhook_splits() {
    // The CEL regex's classes cover every character Rust's whitespace test accepts.
    for text in ["gz,sz", "gz sz", "gz;\tsz", "gz\u{a0}sz", "gz\u{2003}sz", "gz\u{85}sz", "gz\u{b}sz", "gz\u{3000}sz"] {
        assert_eq!(parse_regions(text), vec!["gz".to_owned(), "sz".to_owned()], "{text:?}");
    }
    assert!(REGION_TOKEN.contains(r"\p{Z}") && REGION_TOKEN.contains(r"\x{85}") && REGION_TOKEN.contains(r"\x{0B}"));
}

#[test]
fn a_condition_of_the_current_generation_hands_a_policy_over() {
    let mut p = policy(json!({"enforcement": "Auto"}));
    p.metadata.generation = Some(3);
    assert!(!enforced_by_vap(&p), "no status: the webhook judges");
    let cond = |generation, reason: &str| k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: CONDITION.into(),
        status: "True".into(),
        reason: reason.into(),
        message: String::new(),
        observed_generation: Some(generation),
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ),
    };
    p.status = Some(crds::ContractPolicyStatus { conditions: vec![cond(3, BY_VAP)], ..Default::default() });
    assert!(enforced_by_vap(&p));
    p.metadata.generation = Some(4);
    assert!(!enforced_by_vap(&p), "a spec the leader has not handed over yet is judged by the webhook");
    p.status = Some(crds::ContractPolicyStatus { conditions: vec![cond(4, BY_WEBHOOK)], ..Default::default() });
    assert!(!enforced_by_vap(&p));
    p.spec.enforcement = crds::Enforcement::Webhook;
    p.status = Some(crds::ContractPolicyStatus { conditions: vec![cond(4, BY_VAP)], ..Default::default() });
    assert!(!enforced_by_vap(&p), "a policy switched back to Webhook is judged at once");
}
