//! Process wiring: the kube client, the CSI client, the HTTP endpoint, the node-local role,
//! and the controller role gated by the Lease (controllers are dropped the moment it is lost).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::context::Ctx;
use crate::controllers::local::{self, LocalConfig};
use crate::csi::CsiClient;
use crate::error::{Error, Result};
use crate::leader::{Elector, LeaseConfig};
use crate::metrics::Metrics;
use crate::names::{DRIVER, sanitize};
use crate::{controllers, http};

/// Everything the binary's flags decide.
#[derive(Debug, Clone)]
pub struct Config {
    /// `unix:///path/csi.sock` of the controller plugin (required in the controller role).
    pub csi_endpoint: Option<String>,
    /// Kubeconfig path; in-cluster or `$KUBECONFIG` when unset.
    pub kubeconfig: Option<PathBuf>,
    /// Set for the node-local role (local static provisioner).
    pub node_name: Option<String>,
    /// Discovery directory of the node-local role.
    pub discovery_dir: PathBuf,
    /// `/metrics` and `/healthz` listen address.
    pub metrics_addr: Option<SocketAddr>,
    /// Whether to elect a leader through a Lease.
    pub leader_election: bool,
    /// Namespace of the Lease.
    pub leader_election_namespace: String,
    /// Namespace of the CSIStorageCapacity objects.
    pub capacity_namespace: String,
    /// Capacity refresh interval.
    pub capacity_interval: Duration,
    /// This replica's identity (pod name).
    pub identity: String,
    /// Per-call CSI deadline.
    pub csi_timeout: Duration,
}

/// Builds the client from an explicit kubeconfig or the environment.
pub async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Config(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(Error::Kube)
}

/// Runs the process until SIGINT/SIGTERM.
pub async fn run(cfg: Config) -> Result<()> {
    let client = client(cfg.kubeconfig.as_ref()).await?;
    let metrics = Metrics::default();
    if let Some(addr) = cfg.metrics_addr {
        let (bound, serve) = http::bind(addr, metrics.clone()).await?;
        info!(addr = %bound, "serving /metrics and /healthz");
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                warn!(error = %e, "HTTP endpoint stopped");
            }
        });
    }
    let endpoint = cfg
        .csi_endpoint
        .clone()
        .unwrap_or_else(|| "unix:///csi/csi.sock".into());
    let csi =
        CsiClient::connect_lazy(&endpoint, DRIVER, metrics.clone())?.with_timeout(cfg.csi_timeout);
    let ctx = Arc::new(Ctx::new(
        client.clone(),
        csi,
        metrics.clone(),
        Some(cfg.identity.clone()),
    ));

    if let Some(node) = &cfg.node_name {
        info!(node = %node, dir = %cfg.discovery_dir.display(), "node-local role: static local PVs");
        metrics.leader.set(0);
        tokio::select! {
            _ = local::run(ctx, LocalConfig::new(node, &cfg.discovery_dir)) => {}
            _ = shutdown_signal() => info!("shutting down"),
        }
        return Ok(());
    }
    if cfg.csi_endpoint.is_none() {
        return Err(Error::Config(
            "--csi-endpoint is required unless --node-name is given".into(),
        ));
    }
    wait_for_driver(&ctx).await?;

    let (tx, rx) = watch::channel(!cfg.leader_election);
    let lease = LeaseConfig::new(
        &format!("{}-provisioner", sanitize(DRIVER)),
        &cfg.leader_election_namespace,
        &cfg.identity,
    );
    if cfg.leader_election {
        info!(identity = %cfg.identity, lease = %lease.name, namespace = %lease.namespace, "leader election on");
        tokio::spawn(Elector::new(client.clone(), lease.clone()).run(tx));
    }
    tokio::select! {
        _ = gate(ctx, rx, cfg.capacity_namespace.clone(), cfg.capacity_interval) => {}
        _ = shutdown_signal() => info!("shutting down"),
    }
    if cfg.leader_election
        && let Err(e) = Elector::new(client, lease).release().await
    {
        warn!(error = %e, "could not release the lease");
    }
    Ok(())
}

/// Waits until the driver answers GetPluginInfo, and checks that it is ours.
async fn wait_for_driver(ctx: &Ctx) -> Result<()> {
    let mut delay = Duration::from_millis(200);
    loop {
        match ctx.csi.driver_name().await {
            Ok(name) if name == DRIVER => return Ok(()),
            Ok(name) => {
                return Err(Error::Config(format!(
                    "CSI driver is {name:?}, expected {DRIVER:?}"
                )));
            }
            Err(e) => {
                warn!(error = %e, "waiting for the CSI driver");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Runs the controllers while `leader` is true; drops them the instant it turns false.
pub async fn gate(
    ctx: Arc<Ctx>,
    leader: watch::Receiver<bool>,
    cap_ns: String,
    cap_every: Duration,
) {
    let metrics = ctx.metrics.clone();
    gate_with(leader, metrics, move || {
        controllers::run(ctx.clone(), cap_ns.clone(), cap_every)
    })
    .await
}

/// The gate itself: `make` builds the controllers' future each time leadership is gained;
/// that future is dropped (every in-flight reconcile cancelled) when leadership is lost.
/// Returns when the leadership channel closes.
pub async fn gate_with<F, Fut>(mut leader: watch::Receiver<bool>, metrics: Metrics, make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        if leader.wait_for(|l| *l).await.is_err() {
            return;
        }
        metrics.leader.set(1);
        info!("leading: starting controllers");
        tokio::select! {
            _ = make() => {}
            r = leader.wait_for(|l| !*l) => {
                metrics.leader.set(0);
                if r.is_err() {
                    return;
                }
                warn!("not leading: controllers stopped");
                continue;
            }
        }
        metrics.leader.set(0);
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
