//! How a client reaches storaged: mutual TLS from a `--tls-dir` (`ca.crt`, `tls.crt`,
//! `tls.key`, a Kubernetes TLS Secret's layout) or, only when asked, plaintext.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::Status;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::reload::Reloading;

/// The name every storaged certificate carries (a DNS SAN) and every client verifies,
/// so a node is reached by any address (host network, pod IP) with one certificate.
pub const SERVER_NAME: &str = "storaged.cairn";

/// The PEM files of one `--tls-dir`.
#[derive(Clone)]
pub struct TlsFiles {
    pub dir: PathBuf,
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TlsFiles").field("dir", &self.dir).finish()
    }
}

impl TlsFiles {
    /// Reads `DIR/ca.crt`, `DIR/tls.crt` and `DIR/tls.key`.
    pub fn load(dir: &Path) -> Result<Self, Status> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| {
                Status::invalid_argument(format!("--tls-dir: cannot read {}: {e}", path.display()))
            })
        };
        Ok(TlsFiles {
            dir: dir.to_path_buf(),
            ca: read("ca.crt")?,
            cert: read("tls.crt")?,
            key: read("tls.key")?,
        })
    }

    pub fn ca_certificate(&self) -> Certificate {
        Certificate::from_pem(&self.ca)
    }

    pub fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert, &self.key)
    }

    /// The client side: present our certificate, trust only the cluster CA.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca_certificate())
            .identity(self.identity())
            .domain_name(SERVER_NAME)
    }
}

/// Mutual TLS or explicit plaintext; there is no default.
#[derive(Clone, Debug)]
pub enum Security {
    /// The `--tls-dir`, re-read when its files change (`reload.rs`).
    Tls(Arc<Reloading>),
    /// Plaintext, only from an explicit `--insecure`.
    Insecure,
}

impl Security {
    /// From the usual pair of flags: `--tls-dir DIR` or `--insecure` (exactly one).
    pub fn from_flags(tls_dir: Option<&Path>, insecure: bool) -> Result<Self, Status> {
        match (tls_dir, insecure) {
            (Some(dir), false) => Ok(Security::Tls(Arc::new(Reloading::load(dir)?))),
            (None, true) => Ok(Security::Insecure),
            (Some(_), true) => Err(Status::invalid_argument(
                "--tls-dir and --insecure exclude each other",
            )),
            (None, false) => Err(Status::invalid_argument(
                "--tls-dir DIR is required (or --insecure for plaintext)",
            )),
        }
    }

    /// An endpoint for `addr` (`host:port`), with TLS from the certificate files as they
    /// are now; long-lived callers use [`Security::channel`], which follows rotations.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, Status> {
        let bad = |e: tonic::transport::Error| {
            Status::invalid_argument(format!("endpoint `{addr}`: {e}"))
        };
        match self {
            Security::Insecure => Endpoint::from_shared(format!("http://{addr}")).map_err(bad),
            Security::Tls(tls) => Endpoint::from_shared(format!("https://{addr}"))
                .map_err(bad)?
                .tls_config(tls.current().files.client_config())
                .map_err(bad),
        }
    }

    /// A lazily connected channel to `addr` (`host:port`), its endpoint set up by `tune`:
    /// plaintext, or mutual TLS whose every new connection uses the certificate files on
    /// disk at that moment (`reload.rs`).
    pub fn channel(
        &self,
        addr: &str,
        tune: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<Channel, Status> {
        let endpoint = tune(
            Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| Status::invalid_argument(format!("endpoint `{addr}`: {e}")))?,
        );
        match self {
            Security::Insecure => Ok(endpoint.connect_lazy()),
            Security::Tls(tls) => {
                let connector = TlsConnector {
                    config: Arc::new(crate::reload::client_config(tls)?),
                };
                Ok(
                    endpoint.connect_with_connector_lazy(tower::service_fn(move |uri| {
                        let c = connector.clone();
                        async move { c.connect(uri).await }
                    })),
                )
            }
        }
    }
}

/// Dials a peer and speaks TLS to it (the name verified is [`SERVER_NAME`]).
#[derive(Clone)]
struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
}

impl TlsConnector {
    async fn connect(
        &self,
        uri: tonic::codegen::http::Uri,
    ) -> std::io::Result<
        hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    > {
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let port = uri.port_u16().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        let name =
            rustls::pki_types::ServerName::try_from(SERVER_NAME).map_err(std::io::Error::other)?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await?;
        Ok(hyper_util::rt::TokioIo::new(tls))
    }
}
