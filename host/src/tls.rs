//! TLS to nodes: `https://` ARI URLs, and the `wss://` event sockets that go with them; and
//! to the RabbitMQ broker: `amqps://` URLs (`amqp::connect_broker`).
//!
//! One client configuration for the whole cluster, shared by the request pools, the event
//! sockets and the facade's pass-through: the nodes of one cluster are normally issued
//! certificates by one CA. It trusts the system's roots plus, when `[tls] ca_file` names one,
//! the CA certificates of a PEM bundle (a private CA's). A node's certificate must name the
//! host of its URL in its subjectAltName, as webpki requires: a CN alone (what Asterisk's
//! `ast_tls_cert` makes) is refused, and [`advice`] says so in the error. Certificates are
//! always verified; there is no setting that turns verification off.
//!
//! ring is the one crypto provider, chosen here rather than process-wide, so nothing depends
//! on which crate installs a default first.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

/// Why the TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("CA file {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("CA file {path}: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Setup(#[from] rustls::Error),
}

/// The certificates of a PEM file, for `ca_file`: read and checked when the configuration
/// is validated, so a wrong path fails at start-up rather than at the first connection.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::CaFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::CaFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The client configuration for connections to nodes: the system's roots, plus those of
/// `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        tracing::debug!("system CA certificates: {e}");
    }
    let (added, ignored) = roots.add_parsable_certificates(system.certs);
    tracing::debug!(added, ignored, "system CA certificates loaded");
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|e| TlsError::BadCertificate {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What to do about a certificate the host refused, for error messages: the reason rustls
/// gives (`UnknownIssuer`, `NotValidForName`) says what, not why.
pub fn advice(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    use rustls::CertificateError::*;
    let mut source = Some(error);
    while let Some(e) = source {
        // An io::Error hides the error it wraps from `source()` (it skips to that error's own
        // source), and connectors wrap rustls's error in one or two of them.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            source = Some(inner as &(dyn std::error::Error + 'static));
            continue;
        }
        if let Some(rustls::Error::InvalidCertificate(cert)) = e.downcast_ref::<rustls::Error>() {
            return Some(match cert {
                UnknownIssuer => {
                    "the certificate is not signed by a CA the host trusts: \
                     set [tls] ca_file to the CA that signed it"
                }
                NotValidForName | NotValidForNameContext { .. } => {
                    "the certificate must name the host of the URL (a node's ari_url, \
                     amqp.url) in its subjectAltName; a CN alone, as Asterisk's ast_tls_cert \
                     makes, is not enough"
                }
                Expired | ExpiredContext { .. } | NotValidYet | NotValidYetContext { .. } => {
                    "the certificate is outside its validity period"
                }
                _ => "the certificate was refused",
            });
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = read_ca_file(&missing).unwrap_err();
        assert!(matches!(e, TlsError::CaFile { .. }), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = client_config(Some(&broken)).unwrap_err();
        assert!(matches!(e, TlsError::BadCertificate { .. }), "{e}");
    }

    #[test]
    fn without_a_ca_file_the_system_roots_are_enough() {
        client_config(None).unwrap();
    }
}
