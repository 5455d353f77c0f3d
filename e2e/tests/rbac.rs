//! What a security reviewer reads before installing: the README's security table says exactly what each
//! binary may do, and the API server agrees. The chart's ServiceAccounts and RBAC (the ones the other e2e
//! suites run the binaries with, see `e2e::rbac`) are asked with `kubectl auth can-i --list --as
//! system:serviceaccount:…`, cluster-wide and in the release namespace, and what the API server answers
//! must be the README's table (and the chart README's, which repeats it) row for row, apart from the
//! rules the default ClusterRoles give every authenticated ServiceAccount, listed below.

use std::collections::BTreeSet;

use std::time::Duration;

use e2e::{TestNamespace, kubectl, rbac, repo_root, unique, wait_until};

/// One thing a subject may do: (resource or non-resource URL, resource name or `*`, verb).
type Permission = (String, String, String);

/// What every authenticated ServiceAccount may do through the default ClusterRoles and bindings:
/// `system:basic-user` (self reviews), `system:discovery` and `system:public-info-viewer` (discovery,
/// health, version), `system:service-account-issuer-discovery` (the OIDC issuer documents) and
/// `system:cluster-trust-bundle-discovery` (ClusterTrustBundles, for every ServiceAccount).
const EVERY_SERVICE_ACCOUNT: &[(&str, &str)] = &[
    ("selfsubjectreviews.authentication.k8s.io", "create"),
    ("selfsubjectaccessreviews.authorization.k8s.io", "create"),
    ("selfsubjectrulesreviews.authorization.k8s.io", "create"),
    ("clustertrustbundles.certificates.k8s.io", "get"),
    ("clustertrustbundles.certificates.k8s.io", "list"),
    ("clustertrustbundles.certificates.k8s.io", "watch"),
    ("/.well-known/openid-configuration/", "get"),
    ("/.well-known/openid-configuration", "get"),
    ("/api/*", "get"),
    ("/api", "get"),
    ("/apis/*", "get"),
    ("/apis", "get"),
    ("/healthz", "get"),
    ("/livez", "get"),
    ("/openapi/*", "get"),
    ("/openapi", "get"),
    ("/openid/v1/jwks/", "get"),
    ("/openid/v1/jwks", "get"),
    ("/readyz", "get"),
    ("/version/", "get"),
    ("/version", "get"),
];

fn everyone() -> BTreeSet<Permission> {
    EVERY_SERVICE_ACCOUNT.iter().map(|(what, verb)| ((*what).to_owned(), "*".to_owned(), (*verb).to_owned())).collect()
}

/// The security table of a README: `| binary | scope | resource | names | verbs | … |`, as (binary,
/// scope, permission) with `<fullname>` replaced.
fn readme_table(file: &str, fullname: &str) -> Vec<(String, String, Permission)> {
    let path = repo_root().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let cells = |line: &str| -> Vec<String> {
        line.trim().trim_matches('|').split('|').map(|c| c.trim().replace('`', "")).collect()
    };
    let mut lines = text.lines().skip_while(|l| {
        !cells(l).starts_with(&["binary".into(), "scope".into(), "resource".into(), "names".into(), "verbs".into()])
    });
    assert!(lines.next().is_some(), "{file} has no table headed | binary | scope | resource | names | verbs |");
    let mut rows = Vec::new();
    for line in lines.skip(1).take_while(|l| l.trim_start().starts_with('|')) {
        let c = cells(line);
        assert!(c.len() >= 5, "{file}: a row of the security table has fewer than 5 columns: {line}");
        let names: Vec<String> = if c[3] == "any" {
            vec!["*".to_owned()]
        } else {
            c[3].split(',').map(|n| n.trim().replace("<fullname>", fullname)).collect()
        };
        for name in &names {
            for verb in c[4].split(',') {
                rows.push((c[0].clone(), c[1].clone(), (c[2].clone(), name.clone(), verb.trim().to_owned())));
            }
        }
    }
    assert!(!rows.is_empty(), "{file}: the security table has no rows");
    rows
}

/// What the README's table grants `binary` when asked in the release namespace (`namespaced`) or
/// elsewhere.
fn documented(rows: &[(String, String, Permission)], binary: &str, namespaced: bool) -> BTreeSet<Permission> {
    rows.iter()
        .filter(|(b, scope, _)| {
            b == binary
                && match scope.as_str() {
                    "cluster" => true,
                    "release namespace" => namespaced,
                    other => panic!("unknown scope {other:?} in the security table (cluster | release namespace)"),
                }
        })
        .map(|(_, _, p)| p.clone())
        .collect()
}

/// `kubectl auth can-i --list` as `user` in `namespace`, one permission per resource, name and verb.
fn can_i(user: &str, namespace: &str) -> BTreeSet<Permission> {
    let out = kubectl(&["auth", "can-i", "--list", "--as", user, "-n", namespace], None).ok();
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("Resources"), "unexpected `kubectl auth can-i --list` output:\n{out}");
    let mut permissions = BTreeSet::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        // Resources  [Non-Resource URLs]  [Resource Names]  [Verbs]; the first is absent for URLs.
        let mut tokens = Vec::new();
        let mut rest = line.trim();
        while !rest.is_empty() {
            let end = if rest.starts_with('[') {
                rest.find(']').map(|i| i + 1).unwrap_or(rest.len())
            } else {
                rest.find(char::is_whitespace).unwrap_or(rest.len())
            };
            tokens.push(rest[..end].to_owned());
            rest = rest[end..].trim_start();
        }
        let list = |t: &str| -> Vec<String> {
            t.trim_matches(|c| c == '[' || c == ']').split_whitespace().map(str::to_owned).collect()
        };
        let (whats, names, verbs) = match tokens.as_slice() {
            [resource, _urls, names, verbs] => (vec![resource.clone()], list(names), list(verbs)),
            [urls, names, verbs] => (list(urls), list(names), list(verbs)),
            _ => panic!("cannot read this line of `kubectl auth can-i --list`: {line:?}"),
        };
        let names = if names.is_empty() { vec!["*".to_owned()] } else { names };
        for what in &whats {
            for name in &names {
                for verb in &verbs {
                    permissions.insert((what.clone(), name.clone(), verb.clone()));
                }
            }
        }
    }
    permissions
}

fn show(set: &BTreeSet<Permission>) -> String {
    set.iter().map(|(what, name, verb)| format!("  {what} {name} {verb}\n")).collect()
}

#[test]
fn each_binary_may_do_exactly_what_the_readme_security_table_says() {
    rbac::ensure_chart_rbac();
    let tables = [
        ("README.md", readme_table("README.md", rbac::FULLNAME)),
        ("charts/channel-contracts/README.md", readme_table("charts/channel-contracts/README.md", rbac::FULLNAME)),
    ];
    let mut problems = String::new();
    for (binary, service_account) in [
        ("operator", rbac::operator_service_account()),
        ("webhook", rbac::webhook_service_account()),
        ("fleet hub", rbac::fleet_service_account()),
        ("fleet member", rbac::fleet_member_service_account()),
    ] {
        let user = format!("system:serviceaccount:{}:{service_account}", rbac::NAMESPACE);
        // `default` stands for every namespace but the release's: only the ClusterRole applies there.
        for (namespace, namespaced) in [("default", false), (rbac::NAMESPACE, true)] {
            let granted: BTreeSet<Permission> = can_i(&user, namespace).difference(&everyone()).cloned().collect();
            for (file, rows) in &tables {
                let promised = documented(rows, binary, namespaced);
                let undocumented: BTreeSet<_> = granted.difference(&promised).cloned().collect();
                let missing: BTreeSet<_> = promised.difference(&granted).cloned().collect();
                if !undocumented.is_empty() || !missing.is_empty() {
                    problems += &format!(
                        "{binary} in namespace {namespace} vs {file}:\n granted but not in the table:\n{} in the table but not granted:\n{}",
                        show(&undocumented),
                        show(&missing)
                    );
                }
            }
        }
    }
    assert!(problems.is_empty(), "the RBAC and the README's security tables disagree:\n{problems}");
}

/// The chart's operator RBAC rendered as `release` in `namespace` with `extra` values and applied; deleted
/// again when dropped.
struct Applied {
    yaml: String,
}

impl Applied {
    fn new(release: &str, namespace: &str, extra: &[&str]) -> Self {
        let yaml = rbac::render_rbac(release, namespace, extra);
        kubectl(&["apply", "-f", "-"], Some(&yaml)).ok();
        Self { yaml }
    }
}

impl Drop for Applied {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "--ignore-not-found", "--wait=false", "-f", "-"], Some(&self.yaml));
    }
}

/// `kubectl auth can-i <verb> <resource> -n <namespace> --as <user>`.
fn may(user: &str, verb: &str, resource: &str, namespace: &str) -> bool {
    kubectl(&["auth", "can-i", verb, resource, "-n", namespace, "--as", user], None).stdout.trim() == "yes"
}

/// The operator reads a proxy's Pod (for its Node's region) only where proxies are: the release namespace
/// and `operator.xds.proxyPodNamespaces`, with a single get and never a list; and nowhere when it does not
/// publish to xDS. The README's table covers the default values; this covers the values that change it.
#[test]
fn the_operator_may_get_pods_only_where_proxies_run_and_only_with_xds() {
    rbac::ensure_chart_rbac();
    let (home, proxies, elsewhere) = (
        TestNamespace::new("rbac-home", &[]),
        TestNamespace::new("rbac-proxies", &[]),
        TestNamespace::new("rbac-other", &[]),
    );
    let release = unique("csp-pods");
    let _applied = Applied::new(
        &release,
        &home.name,
        &["--set", &format!("operator.xds.proxyPodNamespaces={{{}}}", proxies.name)],
    );
    let user = format!("system:serviceaccount:{}:{release}-channel-contracts-operator", home.name);
    wait_until("the RBAC to let the operator get Pods in proxyPodNamespaces", Duration::from_secs(30), || {
        (may(&user, "get", "pods", &home.name) && may(&user, "get", "pods", &proxies.name)).then_some(())
    });
    assert!(!may(&user, "get", "pods", &elsewhere.name), "the operator may get Pods outside the proxies' namespaces");
    for namespace in [&home.name, &proxies.name] {
        for verb in ["list", "watch", "create", "update", "patch", "delete"] {
            assert!(!may(&user, verb, "pods", namespace), "the operator may {verb} Pods in {namespace}");
        }
    }

    // Published to ConfigMaps only: no Pod at all, leader election as before.
    let configmap_only = TestNamespace::new("rbac-configmap", &[]);
    let release = unique("csp-cm");
    let _applied = Applied::new(&release, &configmap_only.name, &["--set", "operator.publish={configmap}"]);
    let user = format!("system:serviceaccount:{}:{release}-channel-contracts-operator", configmap_only.name);
    wait_until("the RBAC to let the operator create Leases", Duration::from_secs(30), || {
        may(&user, "create", "leases.coordination.k8s.io", &configmap_only.name).then_some(())
    });
    assert!(!may(&user, "get", "pods", &configmap_only.name), "without xDS the operator may still get Pods");
}
