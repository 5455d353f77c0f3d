use super::*;
use crate::subject::parse_regions;

fn policy(yaml: serde_json::Value) -> ContractPolicy {
    ContractPolicy::new("national-baseline", serde_json::from_value(yaml).expect("spec"))
}

fn settings() -> Settings {
    Settings { namespace: "csp-system".into(), exempt_namespaces: vec!["legacy".into()] }
}

fn none() -> BTreeMap<String, String> {
    BTreeMap::new()
}

#[test]
fn the_path_is_the_webhook_unless_asked_and_expressible() {
    let webhook = policy(json!({"failover": {"requiredRegions": ["gz"]}}));
    assert!(matches!(path(&webhook.spec), Path::Webhook(_)));
    assert!(generate(&webhook, &settings(), &none()).is_none());
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
    let generated = generate(&p, &settings(), &none()).expect("expressible");
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
    // Parameters and match conditions each cost the API server a conversion on every request: none.
    assert!(spec.param_kind.is_none() && service.binding.spec.param_ref.is_none());
    assert!(generated.iter().all(|g| g.policy.spec.as_ref().is_some_and(|s| s.match_conditions.is_none())));
    let validation = &spec.validations.as_ref().expect("validations")[0].expression;
    let fast = r#"sets.contains(object.metadata.?annotations[?"csp.contracts.dev/failover-regions"].orValue('').findAll("[^,;\\s\\x{0B}\\x{85}\\p{Z}]+"), ["gz", "sz", "hz"])"#;
    assert_eq!(
        validation,
        &format!(
            "{fast} || !(!has(object.metadata.deletionTimestamp)) || !variables.fallsShort || variables.tolerated"
        )
    );
    let message = spec.validations.as_ref().and_then(|v| v[0].message_expression.clone()).expect("message");
    assert!(
        message.starts_with(&format!(
            "{fast} ? '' : (variables.fallsShort ? (\"ContractPolicy \\\"national-baseline\\\" denied Service \" + "
        )) && message.ends_with(") : '')"),
        "the message is built only for what falls short: {message}"
    );
    let warn = &generated[1].policy.spec.as_ref().and_then(|s| s.validations.clone()).expect("validations")[0];
    assert_eq!(
        warn.expression,
        format!(
            "{fast} || !(!has(object.metadata.deletionTimestamp) && oldObject != null) || !variables.fallsShort || !variables.tolerated"
        )
    );
    let contract = &generated[2].policy.spec.as_ref().and_then(|s| s.validations.clone()).expect("validations")[0];
    assert!(contract.expression.starts_with("variables.ownSuffices || "), "{}", contract.expression);
    let operations = |g: &Generated| {
        let rules =
            g.policy.spec.as_ref().and_then(|s| s.match_constraints.as_ref()).and_then(|m| m.resource_rules.clone());
        rules.unwrap_or_default().iter().flat_map(|r| r.operations.clone().unwrap_or_default()).collect::<Vec<_>>()
    };
    assert_eq!(operations(&generated[0]), ["CREATE", "UPDATE"]);
    assert_eq!(operations(&generated[1]), ["UPDATE"], "a CREATE never reaches the tolerated pair");
    let contract = &generated[2];
    let names = |g: &Generated| {
        g.policy.spec.as_ref().and_then(|s| s.variables.clone()).unwrap_or_default().into_iter().map(|v| v.name)
    };
    assert!(!names(contract).any(|n| n == "entries"), "contracts do not look up contracts");
    assert!(names(service).any(|n| n == "entries"));
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
        let generated = generate(&p, &settings(), &none()).expect("expressible");
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

fn variable(g: &Generated, name: &str) -> Option<String> {
    let vars = g.policy.spec.as_ref().and_then(|s| s.variables.clone()).unwrap_or_default();
    vars.into_iter().find(|v| v.name == name).map(|v| v.expression)
}

#[test]
fn what_contracts_declare_is_a_constant_map_in_the_policy() {
    let p = policy(json!({"enforcement": "Auto", "match": {"kinds": ["Service"]}}));
    let data = BTreeMap::from([("pay.pv".to_owned(), "pv-a=gz,sz;pv-b=hz".to_owned())]);
    let generated = generate(&p, &settings(), &data).expect("expressible");
    let service = &generated[0];
    assert_eq!(variable(service, "contracts0").as_deref(), Some(r#"{"pay.pv": "pv-a=gz,sz;pv-b=hz"}"#));
    assert_eq!(
        variable(service, "entries").as_deref(),
        Some("variables.contracts0[?variables.key].orValue('').split(';').filter(e, e != '').map(e, e.split('='))")
    );
    assert!(variable(service, "contracts1").is_none());
    // Nothing declared: nothing to look up.
    let bare = generate(&p, &settings(), &none()).expect("expressible");
    assert_eq!(variable(&bare[0], "entries").as_deref(), Some("''.split(';').filter(e, e != '').map(e, e.split('='))"));
    assert!(variable(&bare[0], "contracts0").is_none());
}

#[test]
fn a_policy_carries_only_the_namespaces_it_can_match() {
    let data: BTreeMap<String, String> =
        ["pay.pv", "shop.cart", "legacy.old", "kube-system.dns", "csp-system.x", "skip.me"]
            .iter()
            .map(|k| ((*k).to_owned(), "c=gz".to_owned()))
            .collect();
    let p = policy(json!({"enforcement": "Auto", "match": {"kinds": ["Service"], "excludedNamespaces": ["skip"]}}));
    let generated = generate(&p, &settings(), &data).expect("expressible");
    assert_eq!(variable(&generated[0], "contracts0").as_deref(), Some(r#"{"pay.pv": "c=gz", "shop.cart": "c=gz"}"#));
    let only = policy(json!({"enforcement": "Auto", "match": {"kinds": ["Service"], "namespaces": ["shop"]}}));
    let generated = generate(&only, &settings(), &data).expect("expressible");
    assert_eq!(variable(&generated[0], "contracts0").as_deref(), Some(r#"{"shop.cart": "c=gz"}"#));
}

#[test]
fn large_declarations_are_split_into_literals_that_cel_parses() {
    let data: BTreeMap<String, String> =
        (0..4000).map(|i| (format!("ns-{:02}.svc-{i:05}", i % 40), format!("contract-{i}=gz,sz,hz"))).collect();
    let parts = chunks(&data, CHUNK_BYTES);
    assert!(parts.len() >= 2, "{} chunks", parts.len());
    assert!(parts.iter().all(|(_, c)| c.len() <= CHUNK_BYTES));
    // Every entry is in exactly one literal, in order, and each literal starts at its first key.
    let joined: String = parts.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>().join("");
    assert_eq!(joined.matches(r#"": ""#).count(), data.len());
    for (first, literal) in &parts {
        assert!(literal.starts_with(&format!("{{{}: ", lit(first))), "{first}");
    }
    let p = policy(json!({"enforcement": "Auto", "match": {"kinds": ["Service"]}}));
    let generated = generate(&p, &settings(), &data).expect("expressible");
    let entries = variable(&generated[0], "entries").expect("entries");
    // The literal for a key: the last whose first key is not above it.
    let mut expected = format!("variables.contracts{}", parts.len() - 1);
    for i in (0..parts.len() - 1).rev() {
        expected = format!("(variables.key < {} ? variables.contracts{i} : {expected})", lit(&parts[i + 1].0));
    }
    assert!(entries.starts_with(&format!("{expected}[?variables.key]")), "{entries}");
    for i in 0..parts.len() {
        assert!(variable(&generated[0], &format!("contracts{i}")).is_some());
    }
    assert!(entries.len() < 100_000 && declarations_unfit(&data).is_none());
    // Too much for an object: the webhook keeps Service policies, and says why.
    let huge: BTreeMap<String, String> =
        (0..20_000).map(|i| (format!("ns.svc-{i:05}"), format!("contract-{i}=gz,sz,hz"))).collect();
    let why = declarations_unfit(&huge).expect("too large");
    assert!(why.contains("does not fit in a ValidatingAdmissionPolicy"), "{why}");
    // One Service's entry too long for one expression.
    let long = BTreeMap::from([("ns.svc".to_owned(), "c=".to_owned() + &"r,".repeat(50_000))]);
    let why = declarations_unfit(&long).expect("too long");
    assert!(why.contains("Service ns.svc") && why.contains("does not fit in a CEL expression"), "{why}");
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
