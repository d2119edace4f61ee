//! Certificate rotation: a `--tls-dir` re-read when its files change, behind rustls's
//! resolver and verifier traits, so every new handshake uses the files on disk now.
//!
//! Each handshake (server) or connection (client) asks for the current material; at most
//! once a second that checks the three files' modification time, size and inode (a
//! Kubernetes Secret update swaps them all at once) and reloads them. A reload that fails
//! (a half-written file) keeps the previous material and logs a warning.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::DistinguishedName;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::Status;

use crate::tls::TlsFiles;

/// How often the files are looked at, at most.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The crypto provider every Cairn TLS config uses (ring, as tonic's `tls-ring`), with
/// AES-128-GCM preferred: every block write crosses TLS up to three times (client to leader,
/// leader to each follower), and AES-128 does 10 rounds to AES-256's 14 at the same strength
/// TLS 1.3 deems sufficient; ring's default order puts AES-256 first.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// What identifies one version of a file: modification time, size, inode.
type Version = Option<(SystemTime, u64, u64)>;

fn version(path: &Path) -> Version {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// One loaded version of a `--tls-dir`.
pub struct Material {
    pub files: TlsFiles,
    pub certified: Arc<CertifiedKey>,
    server_verifier: Arc<WebPkiServerVerifier>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl Material {
    fn load(dir: &Path) -> Result<Material, Status> {
        let files = TlsFiles::load(dir)?;
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            Status::invalid_argument(format!("--tls-dir {}: {what}: {e}", dir.display()))
        };
        let chain = CertificateDer::pem_slice_iter(&files.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("tls.crt", &e))?;
        if chain.is_empty() {
            return Err(bad("tls.crt", &"no certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| bad("tls.key", &e))?;
        let certified = CertifiedKey::from_der(chain, key, &provider())
            .map_err(|e| bad("tls.crt and tls.key", &e))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&files.ca) {
            let ca = ca.map_err(|e| bad("ca.crt", &e))?;
            roots.add(ca).map_err(|e| bad("ca.crt", &e))?;
        }
        let roots = Arc::new(roots);
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| bad("ca.crt", &e))?;
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| bad("ca.crt", &e))?;
        Ok(Material {
            files,
            certified: Arc::new(certified),
            server_verifier,
            client_verifier,
        })
    }
}

struct State {
    current: Arc<Material>,
    versions: [Version; 3],
    checked: Instant,
}

/// A `--tls-dir` kept current (see the module comment).
pub struct Reloading {
    dir: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading").field("dir", &self.dir).finish()
    }
}

impl Reloading {
    /// Loads `dir` now; a dir that does not load is refused.
    pub fn load(dir: &Path) -> Result<Reloading, Status> {
        let versions = Self::versions(dir);
        let current = Arc::new(Material::load(dir)?);
        Ok(Reloading {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                current,
                versions,
                checked: Instant::now(),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn versions(dir: &Path) -> [Version; 3] {
        ["ca.crt", "tls.crt", "tls.key"].map(|f| version(&dir.join(f)))
    }

    /// The material in force, reloaded first if the files changed.
    pub fn current(&self) -> Arc<Material> {
        let mut s = self.state.lock().expect("tls state poisoned");
        if s.checked.elapsed() < CHECK_EVERY {
            return s.current.clone();
        }
        s.checked = Instant::now();
        let versions = Self::versions(&self.dir);
        if versions != s.versions {
            match Material::load(&self.dir) {
                Ok(m) => {
                    tracing::info!(dir = %self.dir.display(), "tls files changed: new connections use the new certificate");
                    s.current = Arc::new(m);
                    s.versions = versions;
                }
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e.message(), "tls files changed but do not load: keeping the previous certificate");
                }
            }
        }
        s.current.clone()
    }
}

/// Our certificate, for servers (`ResolvesServerCert`) and clients (`ResolvesClientCert`).
#[derive(Debug, Clone)]
pub struct CertResolver(pub Arc<Reloading>);

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }
}

impl ResolvesClientCert for CertResolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Peers' certificates checked against the cluster CA in force, on both sides.
#[derive(Debug, Clone)]
pub struct Verifier(pub Arc<Reloading>);

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.current().server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(
            self.0.current().server_verifier.as_ref(),
            message,
            cert,
            dss,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(
            self.0.current().server_verifier.as_ref(),
            message,
            cert,
            dss,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ServerCertVerifier::supported_verify_schemes(self.0.current().server_verifier.as_ref())
    }
}

impl ClientCertVerifier for Verifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA names are sent: every Cairn client holds exactly one certificate.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().client_verifier.supported_verify_schemes()
    }
}

/// The client side: TLS 1.3, our current certificate, peers checked against the current CA.
pub fn client_config(tls: &Arc<Reloading>) -> Result<rustls::ClientConfig, Status> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Status::internal(format!("tls client config: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier(tls.clone())))
        .with_client_cert_resolver(Arc::new(CertResolver(tls.clone())));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// The server side: TLS 1.3, our current certificate, client certificates required and
/// checked against the current CA.
pub fn server_config(tls: &Arc<Reloading>) -> Result<rustls::ServerConfig, Status> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Status::internal(format!("tls server config: {e}")))?
        .with_client_cert_verifier(Arc::new(Verifier(tls.clone())))
        .with_cert_resolver(Arc::new(CertResolver(tls.clone())));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use rustls::CipherSuite;

    #[test]
    fn aes_128_gcm_is_preferred_and_no_suite_is_lost() {
        let ours: Vec<CipherSuite> = super::provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(ours[0], CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut default: Vec<CipherSuite> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let mut sorted = ours.clone();
        sorted.sort_by_key(|s| u16::from(*s));
        default.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, default);
    }
}
