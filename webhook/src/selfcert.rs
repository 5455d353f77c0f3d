//! Self-managed certificates: with no cert-manager, the webhook keeps a CA and a serving certificate in
//! a Secret of its namespace, renews the serving certificate before it expires (while serving: new
//! handshakes use the new pair), and injects the CA into its ValidatingWebhookConfiguration's
//! `caBundle`. Several replicas share the Secret; writes use optimistic concurrency, so one wins and the
//! others adopt its result.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::certs::{self, Pem};

/// Annotation on the Secret: when the serving certificate stops being valid (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "csp.contracts.dev/serving-not-after";
/// Annotation on the Secret: the serving certificate's names, comma-separated.
pub const NAMES_ANNOTATION: &str = "csp.contracts.dev/serving-dns-names";

/// What the self-managed mode needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The webhook's namespace (where the Secret lives).
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// Names (DNS or IP) the serving certificate must cover.
    pub dns_names: Vec<String>,
    /// The ValidatingWebhookConfiguration whose caBundle gets the CA; empty: none.
    pub webhook_config: Option<String>,
    /// How long a serving certificate is valid.
    pub serving_validity: Duration,
    /// Renew the serving certificate when it has less than this left.
    pub renew_before: Duration,
}

/// The pair in force: the CA certificate and the serving certificate with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// The CA certificate (PEM) for the caBundle.
    pub ca_cert: String,
    /// The serving certificate and key.
    pub serving: Pem,
}

/// Why the certificate could not be ensured.
#[derive(Debug, thiserror::Error)]
pub enum SelfCertError {
    /// The API server refused or failed.
    #[error("certificate Secret {namespace}/{name}: {source}")]
    Api {
        /// The namespace.
        namespace: String,
        /// The Secret.
        name: String,
        /// Why.
        source: kube::Error,
    },
    /// The Secret exists but is not ours to read.
    #[error("certificate Secret {0} lacks {1}; delete it to let the webhook recreate it")]
    Incomplete(String, &'static str),
    /// Generating failed.
    #[error(transparent)]
    Generate(#[from] certs::CertError),
    /// Writing the caBundle failed.
    #[error("injecting the caBundle into ValidatingWebhookConfiguration {name}: {source}")]
    Inject {
        /// The configuration.
        name: String,
        /// Why.
        source: kube::Error,
    },
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key).and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// Whether the serving certificate recorded in these annotations needs renewing at `now` (Unix seconds).
pub fn needs_renewal(
    annotations: &BTreeMap<String, String>,
    names: &[String],
    renew_before: Duration,
    now: i64,
) -> bool {
    let recorded_names = annotations.get(NAMES_ANNOTATION).map(String::as_str).unwrap_or_default();
    if recorded_names != names.join(",") {
        return true;
    }
    let Some(not_after) =
        annotations.get(NOT_AFTER_ANNOTATION).and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
    else {
        return true;
    };
    not_after.as_second() - now <= renew_before.as_secs() as i64
}

fn secret_data(ca: &Pem, serving: &Pem) -> BTreeMap<String, ByteString> {
    [
        ("ca.crt", ca.cert.clone()),
        ("ca.key", ca.key.clone()),
        ("tls.crt", serving.cert.clone()),
        ("tls.key", serving.key.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
    .collect()
}

fn serving_annotations(settings: &Settings, now: i64) -> BTreeMap<String, String> {
    let not_after = k8s_openapi::jiff::Timestamp::from_second(now + settings.serving_validity.as_secs() as i64)
        .unwrap_or(k8s_openapi::jiff::Timestamp::MAX);
    BTreeMap::from([
        (NOT_AFTER_ANNOTATION.to_owned(), not_after.to_string()),
        (NAMES_ANNOTATION.to_owned(), settings.dns_names.join(",")),
    ])
}

/// Makes sure the Secret holds a CA and a serving certificate that is not about to expire; returns them.
pub async fn ensure(client: &Client, settings: &Settings) -> Result<Material, SelfCertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let api_err =
        |source| SelfCertError::Api { namespace: settings.namespace.clone(), name: settings.secret.clone(), source };
    for _attempt in 0..5 {
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        let existing = api.get_opt(&settings.secret).await.map_err(api_err)?;
        let Some(mut secret) = existing else {
            let (ca, serving) = certs::ca_and_serving(
                "channel-contracts-webhook",
                &settings.dns_names,
                Duration::from_secs(10 * 365 * 86_400),
                settings.serving_validity,
            )?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(settings.secret.clone()),
                    namespace: Some(settings.namespace.clone()),
                    annotations: Some(serving_annotations(settings, now)),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "channel-contracts-webhook".to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                type_: Some("kubernetes.io/tls".to_owned()),
                data: Some(secret_data(&ca, &serving)),
                ..Secret::default()
            };
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => {
                    tracing::info!(secret = %settings.secret, "created the webhook's CA and serving certificate");
                    return Ok(Material { ca_cert: ca.cert, serving });
                }
                Err(kube::Error::Api(e)) if e.code == 409 => continue, // another replica created it
                Err(e) => return Err(api_err(e)),
            }
        };
        let data = secret.data.clone().unwrap_or_default();
        let name = format!("{}/{}", settings.namespace, settings.secret);
        let ca = Pem {
            cert: text(&data, "ca.crt").ok_or_else(|| SelfCertError::Incomplete(name.clone(), "ca.crt"))?,
            key: text(&data, "ca.key").ok_or_else(|| SelfCertError::Incomplete(name.clone(), "ca.key"))?,
        };
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        let current = match (text(&data, "tls.crt"), text(&data, "tls.key")) {
            (Some(cert), Some(key)) => Some(Pem { cert, key }),
            _ => None,
        };
        if let Some(serving) =
            current.filter(|_| !needs_renewal(&annotations, &settings.dns_names, settings.renew_before, now))
        {
            return Ok(Material { ca_cert: ca.cert, serving });
        }
        let serving =
            certs::serving_from_ca(&ca, "channel-contracts-webhook", &settings.dns_names, settings.serving_validity)?;
        secret.data = Some(secret_data(&ca, &serving));
        let mut annotations = annotations;
        annotations.extend(serving_annotations(settings, now));
        secret.metadata.annotations = Some(annotations);
        // resourceVersion is kept: a concurrent renewal by another replica makes this a 409, and we adopt theirs.
        match api.replace(&settings.secret, &PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %settings.secret, "renewed the webhook's serving certificate");
                return Ok(Material { ca_cert: ca.cert, serving });
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(api_err(e)),
        }
    }
    Err(api_err(kube::Error::Service("the certificate Secret kept changing under us; will retry".into())))
}

/// Sets `caBundle` of every webhook in the configuration to the CA, if it differs. Returns whether it
/// wrote.
pub async fn inject_ca_bundle(client: &Client, name: &str, ca_cert: &str) -> Result<bool, SelfCertError> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let inject_err = |source| SelfCertError::Inject { name: name.to_owned(), source };
    let bundle = ByteString(ca_cert.as_bytes().to_vec());
    for _attempt in 0..5 {
        let Some(mut vwc) = api.get_opt(name).await.map_err(inject_err)? else {
            tracing::warn!(
                webhook_config = name,
                "ValidatingWebhookConfiguration not found; cannot inject the caBundle yet"
            );
            return Ok(false);
        };
        let mut changed = false;
        for hook in vwc.webhooks.iter_mut().flatten() {
            if hook.client_config.ca_bundle.as_ref() != Some(&bundle) {
                hook.client_config.ca_bundle = Some(bundle.clone());
                changed = true;
            }
        }
        if !changed {
            return Ok(false);
        }
        match api.replace(name, &PostParams::default(), &vwc).await {
            Ok(_) => {
                tracing::info!(webhook_config = name, "injected the CA into the caBundle");
                return Ok(true);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(inject_err(e)),
        }
    }
    Ok(false)
}

/// The CA as a base64 caBundle (what `kubectl get` shows), for logs and tests.
pub fn ca_bundle_base64(ca_cert: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(ca_cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(not_after: i64, names: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                NOT_AFTER_ANNOTATION.to_owned(),
                k8s_openapi::jiff::Timestamp::from_second(not_after).expect("ts").to_string(),
            ),
            (NAMES_ANNOTATION.to_owned(), names.to_owned()),
        ])
    }

    #[test]
    fn renewal_is_due_before_expiry_or_when_names_change() {
        let names = vec!["a.svc".to_owned(), "b.svc".to_owned()];
        let week = Duration::from_secs(7 * 86_400);
        let now = 1_000_000;
        assert!(!needs_renewal(&annotations(now + 30 * 86_400, "a.svc,b.svc"), &names, week, now));
        assert!(needs_renewal(&annotations(now + 6 * 86_400, "a.svc,b.svc"), &names, week, now));
        assert!(needs_renewal(&annotations(now + 30 * 86_400, "a.svc"), &names, week, now));
        assert!(needs_renewal(&BTreeMap::new(), &names, week, now));
    }
}
