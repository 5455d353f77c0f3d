//! Member clusters from Secrets, read as they are. Pure: a Secret in, a member (name, server, client
//! configuration) or an error that says what to fix out. Errors never quote the Secret's data.
//!
//! Two kinds of Secret register a member:
//! - ours: label `csp.contracts.dev/member-cluster: "<name>"` and a kubeconfig in the key `kubeconfig` (or
//!   `value`, the key Cluster API writes its `<cluster>-kubeconfig` Secrets with);
//! - Argo CD's cluster Secrets (label `argocd.argoproj.io/secret-type: cluster`): keys `name`, `server`
//!   and `config`, a JSON object with `bearerToken`, `username`/`password` and `tlsClientConfig`
//!   (`caData`, `certData`, `keyData`, `serverName`, `insecure`).
//!
//! Only credentials held in the Secret itself are accepted. A kubeconfig that names files, runs a
//! command (`exec`) or an auth provider is refused: whoever may write a Secret in the hub's namespace
//! would otherwise run programs in the hub, or read its files.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::config::Kubeconfig;

/// The label of Argo CD's cluster Secrets (value [`ARGOCD_SECRET_TYPE`]).
pub const ARGOCD_SECRET_TYPE_LABEL: &str = "argocd.argoproj.io/secret-type";
/// The value of [`ARGOCD_SECRET_TYPE_LABEL`] on a cluster Secret.
pub const ARGOCD_SECRET_TYPE: &str = "cluster";
/// The server Argo CD names the cluster it runs in: the hub itself, never a member.
pub const IN_CLUSTER_SERVER: &str = "https://kubernetes.default.svc";

/// A member cluster, as its Secret registers it.
#[derive(Clone)]
pub struct Member {
    /// Its name in the hub's status and metrics.
    pub name: String,
    /// Which Secret registered it (`namespace/name`), for messages.
    pub secret: String,
    /// Its API server.
    pub server: String,
    /// How to reach it: a kubeconfig with one context, credentials inline.
    pub kubeconfig: Kubeconfig,
    /// Changes whenever the Secret's data does (its resourceVersion): a member whose Secret changed gets
    /// a new client.
    pub version: String,
}

impl std::fmt::Debug for Member {
    // Never the kubeconfig: it holds the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("secret", &self.secret)
            .field("server", &self.server)
            .field("version", &self.version)
            .finish()
    }
}

/// Why a Secret registers no usable member. The messages say what to fix and quote no data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    /// The Secret holds no kubeconfig.
    #[error("Secret {secret} has no kubeconfig: put one in the key `kubeconfig`")]
    NoKubeconfig {
        /// namespace/name.
        secret: String,
    },
    /// The kubeconfig does not parse.
    #[error("Secret {secret}: the kubeconfig in key `{key}` is not a valid kubeconfig ({why})")]
    BadKubeconfig {
        /// namespace/name.
        secret: String,
        /// The data key.
        key: String,
        /// The parser's complaint, without the data.
        why: String,
    },
    /// The kubeconfig does not say which cluster and user to use.
    #[error("Secret {secret}: {why}")]
    Incomplete {
        /// namespace/name.
        secret: String,
        /// What is missing.
        why: String,
    },
    /// The kubeconfig needs something the hub refuses to do (run a command, read a file).
    #[error(
        "Secret {secret}: {what} is not accepted in a member's credentials (it would {risk}); put the credentials themselves in the Secret (token, or client certificate and key data)"
    )]
    Refused {
        /// namespace/name.
        secret: String,
        /// The kubeconfig field.
        what: String,
        /// What it would make the hub do.
        risk: String,
    },
    /// An Argo CD cluster Secret lacks a key or its config is not JSON.
    #[error("Argo CD cluster Secret {secret}: {why}")]
    ArgoCd {
        /// namespace/name.
        secret: String,
        /// What is wrong.
        why: String,
    },
}

fn secret_id(secret: &Secret) -> String {
    format!("{}/{}", secret.namespace().unwrap_or_default(), secret.name_any())
}

fn data(secret: &Secret, key: &str) -> Option<String> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Some(String::from_utf8_lossy(&v.0).into_owned());
    }
    secret.string_data.as_ref().and_then(|d| d.get(key)).cloned()
}

/// The member that one of our Secrets (label [`crds::MEMBER_CLUSTER_LABEL`]) registers.
pub fn from_kubeconfig_secret(secret: &Secret) -> Result<Member, MemberError> {
    let id = secret_id(secret);
    let name = secret
        .labels()
        .get(crds::MEMBER_CLUSTER_LABEL)
        .filter(|n| !n.is_empty())
        .cloned()
        .unwrap_or_else(|| secret.name_any());
    let (key, text) = ["kubeconfig", "value"]
        .iter()
        .find_map(|k| data(secret, k).map(|t| (*k, t)))
        .ok_or_else(|| MemberError::NoKubeconfig { secret: id.clone() })?;
    let kubeconfig = Kubeconfig::from_yaml(&text).map_err(|e| MemberError::BadKubeconfig {
        secret: id.clone(),
        key: key.to_owned(),
        why: parse_complaint(&e.to_string()),
    })?;
    let kubeconfig = one_context(kubeconfig, &id)?;
    let server = kubeconfig.clusters[0].cluster.as_ref().and_then(|c| c.server.clone()).unwrap_or_default();
    Ok(Member { name, secret: id, server, kubeconfig, version: secret.resource_version().unwrap_or_default() })
}

/// The parser's complaint without anything it may quote from the data: its first clause, cut before
/// any quote or colon-separated detail that could carry a value.
fn parse_complaint(message: &str) -> String {
    let first = message.split(['\n', '`', '"', '\'']).next().unwrap_or_default().trim();
    let cut: String = first.chars().take(120).collect();
    if cut.is_empty() { "unreadable".into() } else { cut }
}

/// The kubeconfig reduced to its current context's cluster and user, checked for what the hub refuses.
fn one_context(kubeconfig: Kubeconfig, id: &str) -> Result<Kubeconfig, MemberError> {
    let incomplete = |why: &str| MemberError::Incomplete { secret: id.to_owned(), why: why.to_owned() };
    let context_name = kubeconfig
        .current_context
        .clone()
        .or_else(|| (kubeconfig.contexts.len() == 1).then(|| kubeconfig.contexts[0].name.clone()))
        .ok_or_else(|| incomplete("the kubeconfig has no current-context (and more than one context)"))?;
    let context =
        kubeconfig.contexts.iter().find(|c| c.name == context_name).and_then(|c| c.context.clone()).ok_or_else(
            || incomplete(&format!("the kubeconfig's current-context {context_name:?} is not among its contexts")),
        )?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .cloned()
        .ok_or_else(|| incomplete(&format!("the kubeconfig's cluster {:?} is missing", context.cluster)))?;
    let user_name = context.user.clone().unwrap_or_default();
    let user = kubeconfig
        .auth_infos
        .iter()
        .find(|u| u.name == user_name)
        .cloned()
        .ok_or_else(|| incomplete(&format!("the kubeconfig's user {user_name:?} is missing")))?;
    if cluster.cluster.as_ref().and_then(|c| c.server.as_ref()).is_none_or(String::is_empty) {
        return Err(incomplete("the kubeconfig's cluster has no server"));
    }
    let refuse = |what: &str, risk: &str| MemberError::Refused {
        secret: id.to_owned(),
        what: what.to_owned(),
        risk: risk.to_owned(),
    };
    if let Some(c) = &cluster.cluster {
        if c.certificate_authority.is_some() {
            return Err(refuse("certificate-authority (a file)", "read a file of the hub's"));
        }
        if c.proxy_url.is_some() {
            return Err(refuse("proxy-url", "send the member's traffic through another host"));
        }
    }
    if let Some(u) = &user.auth_info {
        if u.exec.is_some() {
            return Err(refuse("exec", "run a command in the hub"));
        }
        if u.auth_provider.is_some() {
            return Err(refuse("auth-provider", "run a provider's plugin in the hub"));
        }
        if u.token_file.is_some() || u.client_certificate.is_some() || u.client_key.is_some() {
            return Err(refuse(
                "a credential file (tokenFile, client-certificate, client-key)",
                "read a file of the hub's",
            ));
        }
    }
    Ok(Kubeconfig {
        current_context: Some(context_name.clone()),
        contexts: kubeconfig.contexts.into_iter().filter(|c| c.name == context_name).take(1).collect(),
        clusters: vec![cluster],
        auth_infos: vec![user],
        ..Kubeconfig::default()
    })
}

/// Argo CD's cluster config (the JSON in a cluster Secret's `config`).
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ArgoConfig {
    #[serde(default)]
    bearer_token: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    tls_client_config: ArgoTls,
    #[serde(default)]
    exec_provider_config: Option<serde_json::Value>,
    #[serde(default)]
    aws_auth_config: Option<serde_json::Value>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ArgoTls {
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    server_name: Option<String>,
    #[serde(default)]
    ca_data: Option<String>,
    #[serde(default)]
    cert_data: Option<String>,
    #[serde(default)]
    key_data: Option<String>,
}

/// The member that an Argo CD cluster Secret registers; `Ok(None)` for the cluster Argo CD runs in
/// (`https://kubernetes.default.svc`), which is the hub's own.
pub fn from_argocd_secret(secret: &Secret) -> Result<Option<Member>, MemberError> {
    let id = secret_id(secret);
    let bad = |why: &str| MemberError::ArgoCd { secret: id.clone(), why: why.to_owned() };
    let server = data(secret, "server").filter(|s| !s.is_empty()).ok_or_else(|| bad("it has no `server`"))?;
    if server.trim_end_matches('/') == IN_CLUSTER_SERVER {
        return Ok(None);
    }
    let name = data(secret, "name").filter(|n| !n.is_empty()).unwrap_or_else(|| secret.name_any());
    let config: ArgoConfig = match data(secret, "config") {
        Some(text) if !text.trim().is_empty() => serde_json::from_str(&text).map_err(|e| {
            bad(&format!(
                "its `config` is not Argo CD's cluster config JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?,
        _ => ArgoConfig::default(),
    };
    if config.exec_provider_config.is_some() {
        return Err(MemberError::Refused {
            secret: id,
            what: "execProviderConfig".into(),
            risk: "run a command in the hub".into(),
        });
    }
    if config.aws_auth_config.is_some() {
        return Err(MemberError::Refused {
            secret: id,
            what: "awsAuthConfig".into(),
            risk: "run the AWS authenticator in the hub".into(),
        });
    }
    let mut cluster = serde_json::Map::new();
    cluster.insert("server".into(), server.clone().into());
    if config.tls_client_config.insecure {
        cluster.insert("insecure-skip-tls-verify".into(), true.into());
    }
    if let Some(ca) = &config.tls_client_config.ca_data {
        cluster.insert("certificate-authority-data".into(), ca.clone().into());
    }
    if let Some(n) = &config.tls_client_config.server_name {
        cluster.insert("tls-server-name".into(), n.clone().into());
    }
    let mut user = serde_json::Map::new();
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
            user.insert(k.into(), v.clone().into());
        }
    };
    put("token", &config.bearer_token);
    put("username", &config.username);
    put("password", &config.password);
    put("client-certificate-data", &config.tls_client_config.cert_data);
    put("client-key-data", &config.tls_client_config.key_data);
    if user.is_empty() {
        return Err(bad("its `config` has no credentials: give bearerToken, or tlsClientConfig certData and keyData"));
    }
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": name,
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
    });
    let kubeconfig: Kubeconfig =
        serde_json::from_value(kubeconfig).map_err(|_| bad("its `config` does not make a kubeconfig"))?;
    Ok(Some(Member { name, secret: id, server, kubeconfig, version: secret.resource_version().unwrap_or_default() }))
}

/// A member as registered: usable, or why not (the message names the Secret and what to fix).
pub type Registration = Result<Member, String>;

/// The name a Secret registers its member under, even when the rest of it is unusable.
fn registered_name(secret: &Secret, argocd: bool) -> String {
    let name = if argocd { data(secret, "name") } else { secret.labels().get(crds::MEMBER_CLUSTER_LABEL).cloned() };
    name.filter(|n| !n.is_empty()).unwrap_or_else(|| secret.name_any())
}

/// Every member that the Secrets register, by name: usable or not (a member whose Secret is broken still
/// counts in the fleet, as not compliant, with the reason). When two Secrets name the same member, the
/// first by `namespace/name` wins and the other is reported in the returned list.
pub fn members(
    ours: &[std::sync::Arc<Secret>],
    argocd: &[std::sync::Arc<Secret>],
) -> (BTreeMap<String, Registration>, Vec<String>) {
    let mut found: Vec<(String, String, Registration)> = Vec::new();
    for s in ours {
        let r = from_kubeconfig_secret(s).map_err(|e| e.to_string());
        found.push((secret_id(s), registered_name(s, false), r));
    }
    for s in argocd {
        match from_argocd_secret(s) {
            Ok(None) => {}
            Ok(Some(m)) => found.push((secret_id(s), m.name.clone(), Ok(m))),
            Err(e) => found.push((secret_id(s), registered_name(s, true), Err(e.to_string()))),
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: BTreeMap<String, Registration> = BTreeMap::new();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for (secret, name, r) in found {
        if let Some(first) = owner.get(&name) {
            duplicates.push(format!(
                "Secret {secret} registers member {name:?}, which Secret {first} registers already: rename one"
            ));
            continue;
        }
        owner.insert(name.clone(), secret);
        out.insert(name, r);
    }
    (out, duplicates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    const TOKEN: &str = "s3cr3t-t0ken-value";

    fn secret(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("csp-system".into());
        s.metadata.resource_version = Some("7".into());
        s.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        s.data = Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect());
        s
    }

    fn kubeconfig(user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster:\n    server: https://10.0.0.2:6443\n    certificate-authority-data: Zm9v\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\n- name: other\n  context: {{cluster: k, user: u}}\nusers:\n- name: u\n  user:\n{user}\n"
        )
    }

    #[test]
    fn our_secret_gives_the_member_its_label_names_and_keeps_only_the_current_context() {
        let s = secret(
            "gz-kubeconfig",
            &[(crds::MEMBER_CLUSTER_LABEL, "gz")],
            &[("kubeconfig", &kubeconfig(&format!("    token: {TOKEN}")))],
        );
        let m = from_kubeconfig_secret(&s).expect("member");
        assert_eq!(
            (m.name.as_str(), m.server.as_str(), m.secret.as_str()),
            ("gz", "https://10.0.0.2:6443", "csp-system/gz-kubeconfig")
        );
        assert_eq!(m.kubeconfig.contexts.len(), 1);
        let debug = format!("{m:?}");
        assert!(!debug.contains(TOKEN), "Debug shows no credential: {debug}");
        // Cluster API's key.
        let capi =
            secret("sz-kubeconfig", &[(crds::MEMBER_CLUSTER_LABEL, "sz")], &[("value", &kubeconfig("    token: t"))]);
        assert_eq!(from_kubeconfig_secret(&capi).expect("member").name, "sz");
    }

    #[test]
    fn a_kubeconfig_that_runs_commands_or_reads_files_is_refused_and_the_message_quotes_no_data() {
        for (user, what) in [
            ("    exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}", "exec"),
            ("    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token", "credential file"),
            ("    client-certificate: /etc/hub.crt\n    client-key: /etc/hub.key", "credential file"),
            ("    auth-provider: {name: oidc}", "auth-provider"),
        ] {
            let s = secret("m", &[(crds::MEMBER_CLUSTER_LABEL, "m")], &[("kubeconfig", &kubeconfig(user))]);
            let e = from_kubeconfig_secret(&s).expect_err(user).to_string();
            assert!(e.contains(what) && e.contains("is not accepted"), "{e}");
        }
        let broken =
            secret("m", &[(crds::MEMBER_CLUSTER_LABEL, "m")], &[("kubeconfig", &format!("clusters: [{TOKEN}"))]);
        let e = from_kubeconfig_secret(&broken).expect_err("broken").to_string();
        assert!(e.contains("not a valid kubeconfig") && !e.contains(TOKEN), "{e}");
        let empty = secret("m", &[(crds::MEMBER_CLUSTER_LABEL, "m")], &[]);
        assert!(from_kubeconfig_secret(&empty).expect_err("empty").to_string().contains("key `kubeconfig`"));
    }

    #[test]
    fn an_argocd_cluster_secret_is_read_as_argocd_writes_it() {
        let config = format!(
            r#"{{"bearerToken":"{TOKEN}","tlsClientConfig":{{"insecure":false,"caData":"Zm9v","serverName":"member-1"}}}}"#
        );
        let s = secret(
            "cluster-member-1",
            &[(ARGOCD_SECRET_TYPE_LABEL, ARGOCD_SECRET_TYPE)],
            &[("name", "member-1"), ("server", "https://10.0.0.3:6443"), ("config", &config)],
        );
        let m = from_argocd_secret(&s).expect("ok").expect("a member");
        assert_eq!((m.name.as_str(), m.server.as_str()), ("member-1", "https://10.0.0.3:6443"));
        let cluster = m.kubeconfig.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Zm9v"));
        assert_eq!(cluster.tls_server_name.as_deref(), Some("member-1"));
        let user = m.kubeconfig.auth_infos[0].auth_info.as_ref().expect("user");
        assert!(user.token.is_some());
        let in_cluster = secret(
            "in-cluster",
            &[(ARGOCD_SECRET_TYPE_LABEL, ARGOCD_SECRET_TYPE)],
            &[("name", "in-cluster"), ("server", "https://kubernetes.default.svc"), ("config", "{}")],
        );
        assert!(from_argocd_secret(&in_cluster).expect("ok").is_none(), "Argo CD's own cluster is the hub");
        let exec = secret(
            "eks",
            &[(ARGOCD_SECRET_TYPE_LABEL, ARGOCD_SECRET_TYPE)],
            &[("server", "https://eks"), ("config", r#"{"execProviderConfig":{"command":"aws"}}"#)],
        );
        assert!(from_argocd_secret(&exec).expect_err("exec").to_string().contains("execProviderConfig"));
        let no_creds = secret("x", &[], &[("server", "https://x"), ("config", r#"{"tlsClientConfig":{}}"#)]);
        assert!(from_argocd_secret(&no_creds).expect_err("none").to_string().contains("no credentials"));
        let bad = secret("x", &[], &[("server", "https://x"), ("config", &format!("{{{TOKEN}"))]);
        let e = from_argocd_secret(&bad).expect_err("bad").to_string();
        assert!(e.contains("line 1") && !e.contains(TOKEN), "{e}");
    }

    #[test]
    fn two_secrets_for_one_member_keep_the_first_and_say_so() {
        let a = std::sync::Arc::new(secret(
            "a",
            &[(crds::MEMBER_CLUSTER_LABEL, "gz")],
            &[("kubeconfig", &kubeconfig("    token: t"))],
        ));
        let b = std::sync::Arc::new(secret(
            "b",
            &[(crds::MEMBER_CLUSTER_LABEL, "gz")],
            &[("kubeconfig", &kubeconfig("    token: t"))],
        ));
        let broken = std::sync::Arc::new(secret("c", &[(crds::MEMBER_CLUSTER_LABEL, "hz")], &[]));
        let (found, errors) = members(&[b, a, broken], &[]);
        assert_eq!(found.keys().collect::<Vec<_>>(), ["gz", "hz"]);
        assert_eq!(found["gz"].as_ref().expect("usable").secret, "csp-system/a");
        assert!(
            found["hz"].as_ref().expect_err("broken").contains("has no kubeconfig"),
            "a broken Secret still names its member"
        );
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("csp-system/b") && errors[0].contains("registers already"), "{errors:?}");
    }
}
