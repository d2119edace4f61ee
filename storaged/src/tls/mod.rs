//! Mutual TLS for storaged: issuing certificates (`certs`), the identity a certificate
//! carries (`identity`) and who may call which service (`authz`).

pub mod authz;
pub mod certs;
pub mod identity;

use cairn_client::TlsFiles;
use tonic::transport::ServerTlsConfig;

pub use identity::Identity;

/// The server side of a `--tls-dir`: our certificate, and client certificates required
/// and verified against the cluster CA.
pub fn server_config(files: &TlsFiles) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(files.identity())
        .client_ca_root(files.ca_certificate())
}
