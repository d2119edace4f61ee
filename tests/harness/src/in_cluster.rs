//! What pods reach the API server with (decision 059): the HTTPS listener on the node
//! bridge, its CA and serving certificate, and the service-account token key.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use crate::apiserver::auth::Tokens;
use crate::apiserver::{self, ApiServer, ApiServerConfig, Https, tls};
use crate::error::Result;
use crate::registry::Registry;

/// The port of upstream's `kubernetes` Service, used for the listener when it is free.
const HTTPS_PORT: u16 = 443;

/// What the kubelets give pods to reach the API server from inside the cluster.
#[derive(Clone)]
pub struct InCluster {
    /// The API server's HTTPS listener as pods reach it.
    pub addr: SocketAddr,
    /// The CA of its serving certificate (PEM), the pods' `ca.crt`.
    pub ca_pem: Vec<u8>,
    pub tokens: Arc<Tokens>,
}

impl fmt::Debug for InCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InCluster")
            .field("addr", &self.addr)
            .finish()
    }
}

/// The PKI (`ca.crt`, `ca.key`, `serving/`) and token key of a data directory.
pub fn pki_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("apiserver-pki")
}

/// Serves the API over HTTPS on `gateway` (the address the nodes reach the host by),
/// with a certificate for it, 127.0.0.1 and the `kubernetes.default.svc` names.
pub async fn start(
    data_dir: &Path,
    registry: &Arc<Registry>,
    gateway: IpAddr,
    cfg: ApiServerConfig,
) -> Result<(ApiServer, InCluster)> {
    let pki = pki_dir(data_dir);
    let ips = [gateway, IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let certs = tokio::task::spawn_blocking(move || -> Result<_> {
        let certs = tls::ensure(&pki, &ips)?;
        let tokens = Tokens::load_or_create(&pki.join("token.key"))?;
        Ok((certs, tokens))
    })
    .await
    .map_err(crate::error::Error::internal)?;
    let (certs, tokens) = certs?;
    let tokens = Arc::new(tokens);
    let cfg = ApiServerConfig {
        https: Some(Https {
            certs: certs.clone(),
            tokens: tokens.clone(),
        }),
        ..cfg
    };
    let api =
        match apiserver::serve(registry.clone(), (gateway, HTTPS_PORT).into(), cfg.clone()).await {
            Ok(a) => a,
            // Taken (another cluster's wildcard listener, say): any port; the env names it.
            Err(_) => apiserver::serve(registry.clone(), (gateway, 0).into(), cfg).await?,
        };
    let ic = InCluster {
        addr: api.addr,
        ca_pem: certs.ca_pem,
        tokens,
    };
    Ok((api, ic))
}
