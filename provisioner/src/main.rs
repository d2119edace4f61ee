//! The `cairn-provisioner` binary: flags, logging, then [`cairn_provisioner::run::run`].
//! One process runs either the controller role (leader-elected) or the node-local role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Cairn's dynamic provisioner, attacher, resizer, capacity publisher and local static provisioner.
#[derive(Parser, Debug)]
#[command(name = "cairn-provisioner", version)]
struct Args {
    /// CSI controller endpoint, `unix:///path/csi.sock` (required in the controller role).
    #[arg(long, env = "CSI_ENDPOINT")]
    csi_endpoint: Option<String>,
    /// Kubeconfig; in-cluster config or $KUBECONFIG when unset.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Run the node-local role (static local PVs) for this node.
    #[arg(long)]
    node_name: Option<String>,
    /// Discovery directory of the node-local role.
    #[arg(long, default_value = "/mnt/cairn-disks")]
    discovery_dir: PathBuf,
    /// Address of /metrics and /healthz; empty to disable.
    #[arg(long, default_value = "127.0.0.1:9808")]
    metrics_addr: String,
    /// Elect a leader through a coordination.k8s.io Lease.
    #[arg(long)]
    leader_election: bool,
    /// Namespace of the Lease (implies --leader-election).
    #[arg(long)]
    leader_election_namespace: Option<String>,
    /// Namespace of CSIStorageCapacity objects (default: $NAMESPACE, $POD_NAMESPACE or "default").
    #[arg(long)]
    capacity_namespace: Option<String>,
    /// Seconds between capacity refreshes.
    #[arg(long, default_value_t = 60)]
    capacity_poll_interval: u64,
    /// Seconds a CSI call may take.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Identity in the Lease and Events (default: $POD_NAME, else hostname-pid).
    #[arg(long)]
    identity: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let a = Args::parse();
    let namespace = env("NAMESPACE")
        .or_else(|| env("POD_NAMESPACE"))
        .unwrap_or_else(|| "default".into());
    let metrics_addr = if a.metrics_addr.is_empty() {
        None
    } else {
        match a.metrics_addr.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(e) => {
                eprintln!("--metrics-addr {:?}: {e}", a.metrics_addr);
                return std::process::ExitCode::from(2);
            }
        }
    };
    let identity = a.identity.or_else(|| env("POD_NAME")).unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let cfg = cairn_provisioner::run::Config {
        csi_endpoint: a.csi_endpoint,
        kubeconfig: a.kubeconfig,
        node_name: a.node_name,
        discovery_dir: a.discovery_dir,
        metrics_addr,
        leader_election: a.leader_election || a.leader_election_namespace.is_some(),
        leader_election_namespace: a
            .leader_election_namespace
            .unwrap_or_else(|| namespace.clone()),
        capacity_namespace: a.capacity_namespace.unwrap_or(namespace),
        capacity_interval: Duration::from_secs(a.capacity_poll_interval.max(1)),
        identity,
        csi_timeout: Duration::from_secs(a.timeout.max(1)),
    };
    match cairn_provisioner::run::run(cfg).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cairn-provisioner failed");
            std::process::ExitCode::FAILURE
        }
    }
}
