//! The API server's HTTPS: its CA (made once per data directory and kept) and serving
//! certificate (issued at every start for the current addresses), and a TLS listener.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use cairn_storaged::tls::Identity;
use cairn_storaged::tls::certs::{self, Issue};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{Error, Result};

/// The names in-cluster clients may use for the API server (the `kubernetes` Service's).
pub const DNS_NAMES: [&str; 5] = [
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster",
    "kubernetes.default.svc.cluster.local",
];

/// What the HTTPS listener serves with: its rustls configuration, and the CA that signed
/// its certificate (PEM; pods get it as `ca.crt`).
#[derive(Clone)]
pub struct ServingCerts {
    pub ca_pem: Vec<u8>,
    pub config: Arc<rustls::ServerConfig>,
}

/// Makes the CA in `dir` unless it is there (a restart keeps it, so pods' `ca.crt`
/// stays valid), then issues a serving certificate valid for `ips` and `DNS_NAMES`.
pub fn ensure(dir: &Path, ips: &[IpAddr]) -> Result<ServingCerts> {
    let pki_err = |e: cairn_storaged::Error| Error::Internal(format!("api server PKI: {e}"));
    if !dir.join("ca.key").exists() {
        certs::init_ca(dir).map_err(pki_err)?;
    }
    let req = Issue {
        // The cairn identity SAN goes unused: clients check the DNS and IP SANs.
        identity: Identity::Admin,
        ips: ips.to_vec(),
        dns: DNS_NAMES.iter().map(|s| s.to_string()).collect(),
    };
    let out = dir.join("serving");
    certs::issue(dir, &req, &out).map_err(pki_err)?;
    let files = cairn_client::TlsFiles::load(&out).map_err(|e| Error::internal(e.message()))?;
    let chain = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(Error::internal)?;
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(Error::internal)?;
    let mut config = rustls::ServerConfig::builder_with_provider(cairn_client::reload::provider())
        .with_safe_default_protocol_versions()
        .map_err(Error::internal)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(Error::internal)?;
    // HTTP/1.1 only: the server under it speaks no HTTP/2 (clients fall back, as for a proxy).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServingCerts {
        ca_pem: files.ca,
        config: Arc::new(config),
    })
}

/// A listener whose connections come out of a finished TLS handshake (storaged's
/// `accept_tls`: concurrent handshakes, a failed one dropped).
pub struct TlsListener {
    addr: SocketAddr,
    incoming: ReceiverStream<std::io::Result<TlsStream<TcpStream>>>,
}

impl TlsListener {
    /// Accepts on `listener` until this listener is dropped.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> Result<Self> {
        let addr = listener.local_addr().map_err(Error::internal)?;
        let incoming = cairn_storaged::tls::accept_tls(listener, config);
        Ok(TlsListener { addr, incoming })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(tls)) => {
                    let peer = tls.get_ref().0.peer_addr().unwrap_or(self.addr);
                    return (tls, peer);
                }
                Some(Err(e)) => tracing::debug!(error = %e, "TLS connection failed"),
                // The accepting task holds a sender until the stream goes: unreachable.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
