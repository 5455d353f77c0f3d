//! `spec.enforcement`: ContractPolicies judged by ValidatingAdmissionPolicies that the webhook generates
//! and owns, on a control plane of their own (the webhook's leader acts on every policy of its cluster),
//! with the webhook running as the chart's ServiceAccount.
//!
//! The admission table (`e2e/testdata/admission`) runs with every policy set to `Auto`: the API server's
//! CEL must give the webhook's answers, word for word after what the API server puts in front of them.
//! One difference is the API server's and cannot be ours: when several ValidatingAdmissionPolicies deny one
//! request, it names only one of them (the webhook names every policy); the test requires exactly that.

use std::time::{Duration, Instant};

use e2e::fleet::ControlPlane;
use e2e::webhook::{NAMESPACE_LABEL, WebhookFixture};
use e2e::{rbac, table, unique, wait_until};
use serde_json::Value;

/// A control plane of `name`'s own with the CRDs and the chart's RBAC, and the webhook on it as the chart's
/// ServiceAccount, registered under the chart's name (which it may narrow), with `extra` arguments.
fn start(name: &str, extra: &[&str]) -> (ControlPlane, WebhookFixture) {
    let cp = ControlPlane::start(name);
    cp.install(&[]);
    let sa = cp.service_account(&rbac::webhook_service_account());
    let mut args: Vec<String> = vec!["--webhook-config-name".into(), rbac::FULLNAME.into()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let webhook =
        WebhookFixture::start_registered_as(&cp.kubeconfig(), &sa, &format!("{name}-webhook"), &args, rbac::FULLNAME);
    (cp, webhook)
}

fn condition(cp: &ControlPlane, policy: &str) -> Option<(String, i64, i64)> {
    let r = cp.kubectl(&["get", "contractpolicy", policy, "-o", "json"], None);
    let v: Value = serde_json::from_str(&r.stdout).ok()?;
    let generation = v["metadata"]["generation"].as_i64()?;
    let c = v["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Enforced")?.clone();
    Some((c["reason"].as_str()?.to_owned(), c["observedGeneration"].as_i64()?, generation))
}

fn wait_enforced_by(cp: &ControlPlane, policy: &str, reason: &str) {
    wait_until(&format!("{policy} enforced by {reason}"), Duration::from_secs(60), || {
        condition(cp, policy).filter(|(r, observed, generation)| r == reason && observed == generation).map(|_| ())
    });
}

fn match_conditions(cp: &ControlPlane) -> String {
    cp.get(&["validatingwebhookconfiguration", rbac::FULLNAME], "{.webhooks[*].matchConditions}").unwrap_or_default()
}

#[test]
fn the_admission_table_gets_the_webhooks_answers_from_generated_validating_admission_policies() {
    let (cp, webhook) = start("enforcement", &[]);
    let id = unique("v").replace('-', "");
    let (dir, suite_file) = table::copy(&id, |name, text| {
        if name == "policies.yaml" { text.replace("\nspec:\n", "\nspec:\n  enforcement: Auto\n") } else { text }
    });
    let offline = table::offline_answers(dir.path());
    let loaded = cli::suite::load(&suite_file).expect("the table loads");
    let policies: Vec<String> =
        loaded.cluster.policies().map(|p| p.metadata.name.clone().unwrap_or_default()).collect();
    let strict = format!("cli-{id}-contracts-only");
    let started = Instant::now();
    let _cleanup = table::set_up(&cp.kubeconfig(), dir.path(), &loaded, &[(NAMESPACE_LABEL, webhook.id.as_str())]);

    // Every policy CEL can express is handed over; requireContract stays with the webhook, which says why.
    for p in &policies {
        wait_enforced_by(&cp, p, if *p == strict { "Webhook" } else { "ValidatingAdmissionPolicy" });
    }
    let handed_over = started.elapsed();
    let why = cp
        .get(&["contractpolicy", &strict], "{.status.conditions[?(@.type==\"Enforced\")].message}")
        .unwrap_or_default();
    assert!(why.contains("requireContract needs the ChannelContracts"), "{why}");
    let generated = cp
        .get(
            &["validatingadmissionpolicies", "-l", "app.kubernetes.io/managed-by=channel-contracts-webhook"],
            "{.items[*].metadata.name}",
        )
        .unwrap_or_default();
    let count = generated.split_whitespace().count();
    // Deny policies on both kinds: 4 (baseline, regions-a, regions-b); Warn and Audit on both: 2 each;
    // tier1 (Deny, Services only): 2.
    assert_eq!(count, 3 * 4 + 2 * 2 + 2, "generated: {generated}");
    // The only policy left to the webhook judges Services: its registration no longer sends it contracts.
    wait_until("the webhook's registration narrowed to Services", Duration::from_secs(30), || {
        match_conditions(&cp).contains("request.resource.resource == 'services'").then_some(())
    });

    let (differences, rounds) =
        table::ask_until(&cp.kubeconfig(), &loaded, &offline, Duration::from_secs(20), |live, offline| {
            // The API server names one denying policy only (the first it evaluated, in no set order): one of
            // the webhook's lines, whole.
            let message = match (&offline.message, &live.message) {
                (Some(all), Some(one)) if all.contains('\n') => all.lines().any(|l| l == one).then(|| one.clone()),
                _ => offline.message.clone(),
            };
            let by = if live.message.as_deref().is_some_and(|m| m.contains(&format!("\"{strict}\""))) {
                "webhook"
            } else {
                "vap"
            };
            live.decision == offline.decision
                && live.message == message
                && live.warnings == offline.warnings
                && live.denied_by.is_none_or(|d| d == by)
        });
    assert!(
        differences.is_empty(),
        "the generated ValidatingAdmissionPolicies answer otherwise:\n{}",
        differences.join("\n")
    );
    println!(
        "measured: {} cases, the webhook's answers from {count} generated ValidatingAdmissionPolicies (handed over in {:.1}s, round {rounds})",
        offline.len(),
        handed_over.as_secs_f64()
    );

    // Back to the webhook: the condition first, then the generated objects go, and the webhook answers.
    let baseline = format!("cli-{id}-baseline");
    cp.kubectl(
        &["patch", "contractpolicy", &baseline, "--type=merge", "-p", r#"{"spec":{"enforcement":"Webhook"}}"#],
        None,
    )
    .ok();
    wait_enforced_by(&cp, &baseline, "Webhook");
    wait_until("the baseline's generated objects deleted", Duration::from_secs(30), || {
        let left = cp.get(
            &[
                "validatingadmissionpolicies,validatingadmissionpolicybindings",
                "-l",
                &format!("csp.contracts.dev/policy={baseline}"),
            ],
            "{.items[*].metadata.name}",
        );
        left.is_some_and(|l| l.trim().is_empty()).then_some(())
    });
    wait_until("the webhook's registration widened to both kinds", Duration::from_secs(30), || {
        (!match_conditions(&cp).contains("csp.contracts.dev/webhook-policies")).then_some(())
    });
    let contract = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ChannelContract\nmetadata: {{name: short, namespace: cli-{id}-contract}}\nspec: {{service: payment-verify, port: 8080, sla: {{maxLatency: 120ms}}, failover: {{regions: [gz]}}}}\n"
    );
    let answer = wait_until("the webhook to deny the contract again", Duration::from_secs(30), || {
        let live = table::live_answer(&cp.kubectl(&["create", "--dry-run=server", "-f", "-"], Some(&contract)));
        (live.denied_by == Some("webhook")).then_some(live)
    });
    assert!(
        answer
            .message
            .as_deref()
            .is_some_and(|m| m.contains(&format!("ContractPolicy \"{baseline}\" denied ChannelContract"))),
        "{answer:?}"
    );

    // A deleted policy takes its generated objects with it (owner references, garbage collection).
    let soft = format!("cli-{id}-soft");
    cp.kubectl(&["delete", "contractpolicy", &soft], None).ok();
    wait_until("the deleted policy's generated objects collected", Duration::from_secs(60), || {
        let left = cp.get(
            &[
                "validatingadmissionpolicies,validatingadmissionpolicybindings",
                "-l",
                &format!("csp.contracts.dev/policy={soft}"),
            ],
            "{.items[*].metadata.name}",
        );
        left.is_some_and(|l| l.trim().is_empty()).then_some(())
    });
    assert!(webhook.process.log_tail().lines().all(|l| !l.contains("panicked")), "{}", webhook.process.log_tail());
}

/// What many ChannelContracts declare reaches the generated policy as several map literals (one CEL
/// expression holds at most 100,000 code points): a Service whose regions come from a contract in the first
/// literal or in the last is admitted without the annotation, one that no contract governs is denied.
#[test]
fn regions_that_many_contracts_declare_reach_the_generated_policy() {
    let (cp, webhook) = start("enforcement-many", &[]);
    let id = unique("many");
    cp.kubectl(&["create", "namespace", &id], None);
    cp.kubectl(&["label", "namespace", &id, &format!("csp-e2e-many={id}")], None);
    // Long names and regions: about 520 bytes of CEL per contract.
    let count = 200;
    let long_regions: Vec<String> = (0..4).map(|r| format!("region-{r}-{}", "z".repeat(50))).collect();
    let contracts: String = (0..count)
        .map(|i| {
            format!(
                "---\napiVersion: csp.contracts.dev/v1alpha1\nkind: ChannelContract\nmetadata: {{name: c{i:03}-{}, namespace: {id}}}\nspec: {{service: svc-{i:03}, port: 8080, sla: {{maxLatency: 120ms}}, failover: {{regions: [gz, sz, hz, {}]}}}}\n",
                "x".repeat(240),
                long_regions.join(", ")
            )
        })
        .collect();
    let created = cp.kubectl(&["create", "-f", "-"], Some(&contracts));
    assert!(created.success, "{}", created.stderr);
    let policy = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: {id}}}\nspec: {{enforcement: ValidatingAdmissionPolicy, match: {{kinds: [Service], namespaceSelector: {{matchLabels: {{csp-e2e-many: {id}}}}}}}, failover: {{requiredRegions: [gz, sz, hz]}}}}\n"
    );
    assert!(cp.kubectl(&["create", "-f", "-"], Some(&policy)).success);
    wait_enforced_by(&cp, &id, "ValidatingAdmissionPolicy");
    let vap = format!("csp-{id}-service");
    let literals = wait_until("what every contract declares in the generated policy", Duration::from_secs(60), || {
        let names = cp.get(&["validatingadmissionpolicy", &vap], "{.spec.variables[*].name}")?;
        let literals = names.split_whitespace().filter(|n| n.starts_with("contracts")).count();
        let text = cp.get(&["validatingadmissionpolicy", &vap], "{.spec.variables}")?;
        (literals >= 2 && text.contains(&format!("svc-{:03}", count - 1))).then_some(literals)
    });
    let service = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {id}}}\nspec: {{clusterIP: None, ports: [{{port: 8080}}]}}\n"
        )
    };
    for name in ["svc-000".to_owned(), format!("svc-{:03}", count / 2), format!("svc-{:03}", count - 1)] {
        wait_until(&format!("{name} admitted on what its contract declares"), Duration::from_secs(30), || {
            cp.kubectl(&["create", "--dry-run=server", "-f", "-"], Some(&service(&name))).success.then_some(())
        });
    }
    let denied = cp.kubectl(&["create", "--dry-run=server", "-f", "-"], Some(&service("ungoverned")));
    assert!(!denied.success, "a Service that no contract governs and that declares nothing is admitted");
    assert!(
        denied.stderr.contains(&format!(
            "ValidatingAdmissionPolicy '{vap}' with binding '{vap}' denied request: ContractPolicy \"{id}\" denied Service {id}/ungoverned: missing failover regions [gz, sz, hz]"
        )),
        "{}",
        denied.stderr
    );
    // A contract deleted: the leader applies the policy again, and its Service no longer counts on it.
    let first = cp.get(&["channelcontracts", "-n", &id], "{.items[0].metadata.name}").unwrap_or_default();
    assert!(cp.kubectl(&["delete", "channelcontract", "-n", &id, &first], None).success);
    let deleted = Instant::now();
    wait_until("svc-000 denied once its contract is gone", Duration::from_secs(30), || {
        let r = cp.kubectl(&["create", "--dry-run=server", "-f", "-"], Some(&service("svc-000")));
        (!r.success && r.stderr.contains("missing failover regions [gz, sz, hz]")).then_some(())
    });
    println!(
        "measured: {count} contracts in {literals} map literals of the generated policy; admitted by contract, denied without; a deleted contract out of the policy after {:.1}s",
        deleted.elapsed().as_secs_f64()
    );
    assert!(webhook.process.log_tail().lines().all(|l| !l.contains("panicked")), "{}", webhook.process.log_tail());
}

/// `--prefilter`: Services whose own annotation satisfies every policy are admitted by the API server
/// without a webhook call (a match condition the leader keeps), also while the webhook is down; the rest
/// still reach the webhook, and a stricter policy reaches the compliant ones once the leader has rewritten
/// the condition.
#[test]
fn with_the_prefilter_compliant_services_skip_the_webhook_even_when_it_is_down() {
    let (cp, mut webhook) = start("enforcement-prefilter", &["--prefilter", "true"]);
    let id = unique("pre");
    cp.kubectl(&["create", "namespace", &id], None);
    cp.kubectl(&["label", "namespace", &id, &format!("{NAMESPACE_LABEL}={}", webhook.id)], None);
    let policy = |name: &str, regions: &str| {
        format!(
            "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: {name}}}\nspec: {{match: {{kinds: [Service], namespaces: [{id}]}}, failover: {{requiredRegions: [{regions}]}}}}\n"
        )
    };
    assert!(cp.kubectl(&["create", "-f", "-"], Some(&policy(&format!("{id}-a"), "gz, sz"))).success);
    wait_until("the prefilter in the registration", Duration::from_secs(30), || {
        // (jsonpath prints the expression JSON-escaped)
        match_conditions(&cp).contains(r#"sets.contains("#).then_some(())
    });
    let service = |name: &str, regions: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {id}, annotations: {{csp.contracts.dev/failover-regions: \"{regions}\"}}}}\nspec: {{clusterIP: None, ports: [{{port: 8080}}]}}\n"
        )
    };
    let ca = webhook.ca_file.to_string_lossy().into_owned();
    let reviews = |w: &WebhookFixture| {
        let (_, text) = e2e::curl(&["--cacert", &ca, &w.url("/metrics")]);
        text.lines()
            .filter(|l| l.starts_with("csp_admission_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    // Compliant: admitted, and the webhook saw no review. Not: the webhook denies it.
    let before = reviews(&webhook);
    assert!(cp.kubectl(&["create", "-f", "-"], Some(&service("compliant", "sz, gz"))).success);
    let denied = cp.kubectl(&["create", "-f", "-"], Some(&service("short", "gz")));
    assert!(!denied.success && denied.stderr.contains("missing failover regions [sz]"), "{}", denied.stderr);
    assert_eq!(reviews(&webhook) - before, 1.0, "only the non-compliant Service reached the webhook");

    // A stricter policy: a Service with gz and sz reaches the webhook again once the condition says so.
    let stricter = Instant::now();
    assert!(cp.kubectl(&["create", "-f", "-"], Some(&policy(&format!("{id}-b"), "hz"))).success);
    wait_until("the stricter policy enforced on Services the prefilter let through", Duration::from_secs(10), || {
        let r = cp.kubectl(&["create", "--dry-run=server", "-f", "-"], Some(&service("later", "gz,sz")));
        (!r.success && r.stderr.contains("missing failover regions [hz]")).then_some(())
    });
    let took = stricter.elapsed();

    // The webhook down (failurePolicy Fail): compliant Services are still admitted, the rest refused.
    webhook.process.stop();
    assert!(
        cp.kubectl(&["create", "-f", "-"], Some(&service("while-down", "hz gz sz"))).success,
        "a compliant Service refused while the webhook is down"
    );
    let refused = cp.kubectl(&["create", "-f", "-"], Some(&service("short-while-down", "gz,sz")));
    assert!(!refused.success && refused.stderr.contains("failed calling webhook"), "{}", refused.stderr);
    println!(
        "measured: compliant Services admitted without a review (1 review for 2 creates), and while the webhook was down; a stricter policy enforced after {:.1}s",
        took.as_secs_f64()
    );
}

#[test]
fn the_crd_refuses_validating_admission_policy_enforcement_of_require_contract() {
    e2e::ensure_crds();
    let policy = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: {}}}\nspec: {{enforcement: ValidatingAdmissionPolicy, requireContract: true}}\n",
        unique("cel-lookup")
    );
    let r = e2e::kubectl(&["create", "--dry-run=server", "-f", "-"], Some(&policy));
    assert!(!r.success, "created: {}", r.stdout);
    assert!(
        r.stderr.contains("spec.enforcement ValidatingAdmissionPolicy cannot enforce spec.requireContract"),
        "{}",
        r.stderr
    );
}
