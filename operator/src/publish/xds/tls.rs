//! The xDS server's TLS: its certificate and key are read from files and read again every
//! [`RELOAD_EVERY`] when they change (a renewed Secret, mounted): new connections use the new pair,
//! streams already open keep theirs. A pair that does not load (half-written, mismatched) is skipped and
//! the previous one stays in use. With a client CA, proxies must present a certificate it signed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::server::TlsFiles;

/// How often the certificate files are looked at.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no usable PEM.
    #[error("cannot load the xDS TLS file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The certificate and key do not make a usable pair, or the client CA no verifier.
    #[error("the xDS TLS configuration is unusable: {0}")]
    Config(String),
}

#[derive(Debug)]
struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let file_error =
        |path: &Path, e: &dyn std::fmt::Display| TlsError::File { path: path.to_owned(), reason: e.to_string() };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, &e))?;
    if chain.is_empty() {
        return Err(file_error(cert, &"no certificate in it"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, &e))?;
    let provider = crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| TlsError::Config(e.to_string()))
}

/// A TLS acceptor over the files, and the task that reloads them.
pub fn acceptor(files: &TlsFiles, cancel: CancellationToken) -> Result<TlsAcceptor, TlsError> {
    let resolver = Arc::new(Reloading { current: RwLock::new(Arc::new(load_pair(&files.cert, &files.key)?)) });
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| TlsError::File { path: ca.clone(), reason: e.to_string() })?
            {
                let cert = cert.map_err(|e| TlsError::File { path: ca.clone(), reason: e.to_string() })?;
                roots.add(cert).map_err(|e| TlsError::File { path: ca.clone(), reason: e.to_string() })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier).with_cert_resolver(resolver.clone())
        }
        None => builder.with_no_client_auth().with_cert_resolver(resolver.clone()),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio::spawn(reload(resolver, files.cert.clone(), files.key.clone(), cancel));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn reload(resolver: Arc<Reloading>, cert: PathBuf, key: PathBuf, cancel: CancellationToken) {
    let read = || (std::fs::read(&cert).ok(), std::fs::read(&key).ok());
    let mut seen = read();
    loop {
        tokio::select! {
            () = tokio::time::sleep(RELOAD_EVERY) => {},
            () = cancel.cancelled() => return,
        }
        let now = read();
        if now == seen {
            continue;
        }
        match load_pair(&cert, &key) {
            Ok(pair) => {
                *resolver.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(pair);
                tracing::info!(cert = %cert.display(), "xDS serving certificate reloaded");
                seen = now;
            }
            Err(e) => tracing::warn!(error = %e, "new xDS certificate files do not load; keeping the previous pair"),
        }
    }
}

/// Accepts TCP connections and hands on those whose TLS handshake succeeds.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    cancel: CancellationToken,
) -> mpsc::Receiver<std::io::Result<TlsStream<tokio::net::TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = cancel.cancelled() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "xDS accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "xDS TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "xDS TLS handshake timed out"),
                }
            });
        }
    });
    rx
}
