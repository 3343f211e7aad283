//! HTTPS and WSS on a node's port, as Asterisk serves them with `http.conf` `tlsenable=yes`:
//! the same REST API, event websocket and control API, behind a TLS handshake.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::NodeTls;
use crate::error::SimError;

/// A client that opens a connection and never completes the handshake is dropped after this,
/// so it cannot hold up the clients behind it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The server side of a node's TLS: its certificate chain and key, read from their files.
pub(crate) fn server_config(tls: &NodeTls) -> Result<Arc<ServerConfig>, SimError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| SimError::Config(format!("{what}: {e}"));
    let certs = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(&tls.cert_file.display().to_string(), &e))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| bad(&tls.key_file.display().to_string(), &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| bad("TLS", &e))?;
    Ok(Arc::new(config))
}

/// Accepts TCP connections and completes their TLS handshake before axum sees them.
pub(crate) struct TlsListener {
    pub tcp: TcpListener,
    pub acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // As axum's own TcpListener does: back off on e.g. EMFILE.
                    tracing::debug!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Asterisk's HTTP server sets TCP_NODELAY on every connection.
            let _ = tcp.set_nodelay(true);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!(%addr, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
