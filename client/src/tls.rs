//! How a client reaches storaged: mutual TLS from a `--tls-dir` (`ca.crt`, `tls.crt`,
//! `tls.key`, a Kubernetes TLS Secret's layout) or, only when asked, plaintext.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::Status;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

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
    Tls(Arc<TlsFiles>),
    /// Plaintext, only from an explicit `--insecure`.
    Insecure,
}

impl Security {
    /// From the usual pair of flags: `--tls-dir DIR` or `--insecure` (exactly one).
    pub fn from_flags(tls_dir: Option<&Path>, insecure: bool) -> Result<Self, Status> {
        match (tls_dir, insecure) {
            (Some(dir), false) => Ok(Security::Tls(Arc::new(TlsFiles::load(dir)?))),
            (None, true) => Ok(Security::Insecure),
            (Some(_), true) => Err(Status::invalid_argument(
                "--tls-dir and --insecure exclude each other",
            )),
            (None, false) => Err(Status::invalid_argument(
                "--tls-dir DIR is required (or --insecure for plaintext)",
            )),
        }
    }

    /// An endpoint for `addr` (`host:port`), with TLS when configured.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, Status> {
        let bad = |e: tonic::transport::Error| {
            Status::invalid_argument(format!("endpoint `{addr}`: {e}"))
        };
        match self {
            Security::Insecure => Endpoint::from_shared(format!("http://{addr}")).map_err(bad),
            Security::Tls(files) => Endpoint::from_shared(format!("https://{addr}"))
                .map_err(bad)?
                .tls_config(files.client_config())
                .map_err(bad),
        }
    }
}
