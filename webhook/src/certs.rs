//! Certificates for the webhook's HTTPS server: a CA and a serving certificate it signs (rcgen). Used by
//! the self-managed certificate mode and by the tests.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A PEM certificate and key.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    /// The certificate (PEM).
    pub cert: String,
    /// The private key (PEM, PKCS#8).
    pub key: String,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pem").field("cert", &self.cert.len()).field("key", &"<redacted>").finish()
    }
}

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot generate a certificate: {0}")]
pub struct CertError(#[from] rcgen::Error);

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::seconds(i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX / 2));
}

/// A new CA valid for `days`, and a serving certificate for `sans` (DNS names or IP addresses) that it
/// signs, valid for `serving_days`.
pub fn ca_and_serving(
    common_name: &str,
    sans: &[String],
    ca_validity: Duration,
    serving_validity: Duration,
) -> Result<(Pem, Pem), CertError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{common_name} CA"));
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut ca_params, ca_validity);
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let ca_pem = Pem { cert: ca.pem(), key: ca_key_pem };
    let serving = serving_signed_by(&ca, common_name, sans, serving_validity)?;
    Ok((ca_pem, serving))
}

fn serving_signed_by(
    ca: &rcgen::Issuer<'_, impl rcgen::SigningKey>,
    common_name: &str,
    sans: &[String],
    valid_for: Duration,
) -> Result<Pem, CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    validity(&mut params, valid_for);
    let cert = params.signed_by(&key, ca)?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

/// A new serving certificate signed by an existing CA (PEM).
pub fn serving_from_ca(ca: &Pem, common_name: &str, sans: &[String], valid_for: Duration) -> Result<Pem, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    serving_signed_by(&issuer, common_name, sans, valid_for)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_ca_signs_serving_certificates() {
        let (ca, serving) =
            ca_and_serving("test", &["127.0.0.1".into(), "webhook.csp.svc".into()], DAY * 365, DAY * 30)
                .expect("certificates");
        assert!(ca.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(serving.key.contains("PRIVATE KEY"));
        let again = serving_from_ca(&ca, "test", &["127.0.0.1".into()], DAY * 30).expect("reissued");
        assert_ne!(again.cert, serving.cert);
    }
}
