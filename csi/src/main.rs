//! `cairn-csi`: command line, wiring of the identity/controller/node services, and the
//! gRPC server on a Unix socket (a stale socket file is removed first).

use std::path::PathBuf;
use std::sync::Arc;

use cairn_csi::controller::ControllerService;
use cairn_csi::identity::IdentityService;
use cairn_csi::node::{NodeConfig, NodeService};
use cairn_csi::paths::PathPolicy;
use cairn_csi::storaged::{NodeBackend, VolumeBackend};
use cairn_proto::cairn::v1::Frontend;
use cairn_proto::csi::v1::{
    controller_server::ControllerServer, identity_server::IdentityServer, node_server::NodeServer,
};
use cairn_proto::rpclog::{RpcLogLayer, Verbosity};
use clap::{Parser, ValueEnum};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Controller,
    Node,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FrontendArg {
    Fuse,
    Nbd,
}

#[derive(Debug, Parser)]
#[command(
    name = "cairn-csi",
    version,
    about = "CSI driver csi.cairn.dev for Cairn",
    after_help = "`cairn-csi probe --endpoint E [--ready]` asks a running cairn-csi for Identity.Probe: \
                  exit 0 when it answers (with --ready: and is ready), 1 otherwise (exec probes)."
)]
struct Cli {
    /// Which services to serve (Identity is always served).
    #[arg(long, value_enum, default_value = "all")]
    mode: Mode,
    /// Where to listen: unix:///path/csi.sock (or a plain path).
    #[arg(long, env = "CSI_ENDPOINT")]
    endpoint: String,
    /// This node's name (the storaged node name); required for node and all modes.
    #[arg(long, env = "CSI_NODE_ID", default_value = "")]
    node_id: String,
    /// storaged addresses (host:port), comma separated. In node mode the first is this
    /// node's own storaged, used for attach and detach.
    #[arg(long, value_delimiter = ',', required = true)]
    storaged: Vec<String>,
    /// Directory holding `ca.crt`, `tls.crt` and `tls.key` for calls to storaged: a
    /// `controller` certificate in controller and all modes, `csi-node:<node name>` in node
    /// mode. (The CSI socket itself is local and stays plaintext.)
    #[arg(long, env = "CAIRN_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// All mode with TLS: the `csi-node:<node name>` certificate directory for this node's
    /// storaged (attach, detach), as one certificate carries one identity.
    #[arg(long, env = "CAIRN_NODE_TLS_DIR")]
    node_tls_dir: Option<PathBuf>,
    /// Talk to a plaintext (`--insecure`) storaged.
    #[arg(long)]
    insecure: bool,
    /// The kubelet's root directory: staging and target paths must lie under it.
    #[arg(long, default_value = "/var/lib/kubelet")]
    kubelet_root: PathBuf,
    /// Accepted for compatibility with issue 3; storaged owns the local pool (see ARCHITECTURE.md).
    #[arg(long)]
    local_pool: Option<PathBuf>,
    /// How storaged exposes replicated volumes to the kernel on this node.
    #[arg(long, value_enum, default_value = "fuse")]
    frontend: FrontendArg,
    /// More directories under which staging and target paths are allowed (repeatable).
    #[arg(long = "allowed-path-prefix")]
    allowed_path_prefix: Vec<PathBuf>,
    /// Reported by NodeGetInfo, and enforced by ControllerPublishVolume (RESOURCE_EXHAUSTED);
    /// give the controller the same value as the node plugins. 0 = no limit.
    #[arg(long, default_value_t = 64)]
    max_volumes_per_node: i64,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

/// `cairn-csi probe`: for exec liveness and readiness probes in the manifests.
#[derive(Debug, Parser)]
#[command(name = "cairn-csi probe", version)]
struct ProbeCli {
    /// The running driver's socket: unix:///path/csi.sock (or a plain path).
    #[arg(long, env = "CSI_ENDPOINT")]
    endpoint: String,
    /// Also require `ready: true` (a readiness probe); without it, an answer is enough (a
    /// liveness probe: a driver whose storaged is away is alive, and restarting it helps nothing).
    #[arg(long)]
    ready: bool,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

/// Calls Identity.Probe on `cli.endpoint`: `Ok` when it answers (and is ready, if asked).
async fn probe(cli: ProbeCli) -> Result<(), String> {
    use cairn_proto::csi::v1::{ProbeRequest, identity_client::IdentityClient};
    let path = cairn_proto::uds::socket_path(&cli.endpoint).map_err(|e| format!("--{e}"))?;
    let call = async {
        let channel = cairn_proto::uds::channel(path.clone())
            .await
            .map_err(|e| format!("connect {}: {e}", path.display()))?;
        IdentityClient::new(channel)
            .probe(ProbeRequest {})
            .await
            .map_err(|s| format!("Probe: {:?}: {}", s.code(), s.message()))
    };
    let reply = tokio::time::timeout(std::time::Duration::from_secs(cli.timeout), call)
        .await
        .map_err(|_| format!("Probe: no answer within {} s", cli.timeout))??
        .into_inner();
    match reply.ready {
        Some(false) if cli.ready => Err("Probe: the driver answered but is not ready".into()),
        _ => Ok(()),
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("probe") {
        let cli = ProbeCli::parse_from(std::env::args().skip(1));
        if let Err(e) = probe(cli).await {
            eprintln!("cairn-csi probe: {e}");
            std::process::exit(1);
        }
        return Ok(());
    }
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let serve_controller = matches!(cli.mode, Mode::Controller | Mode::All);
    let serve_node = matches!(cli.mode, Mode::Node | Mode::All);
    if serve_node && cli.node_id.is_empty() {
        return Err("--node-id is required in node and all modes".into());
    }
    if let Some(pool) = &cli.local_pool {
        tracing::warn!(
            local_pool = %pool.display(),
            "--local-pool is ignored: storaged creates local volumes in its own pool"
        );
    }
    match (cli.mode, cli.tls_dir.is_some(), cli.node_tls_dir.is_some()) {
        (Mode::All, true, false) => {
            return Err(
                "--mode all with --tls-dir (a `controller` certificate) also needs \
                        --node-tls-dir DIR (a `csi-node:<node name>` certificate): storaged \
                        lets only its own node's csi-node attach and detach"
                    .into(),
            );
        }
        (Mode::All, true, true) | (_, _, false) => {}
        (_, _, true) => return Err("--node-tls-dir is only for --mode all with --tls-dir".into()),
    }
    let security = cairn_client::Security::from_flags(cli.tls_dir.as_deref(), cli.insecure)?;
    if matches!(security, cairn_client::Security::Insecure) {
        tracing::warn!("calling storaged in PLAINTEXT without a certificate (--insecure)");
    }
    let node_security = match &cli.node_tls_dir {
        Some(dir) => cairn_client::Security::from_flags(Some(dir), false)?,
        None => security.clone(),
    };
    let volumes: Arc<dyn VolumeBackend> = Arc::new(cairn_client::VolumeClient::new(
        cli.storaged.clone(),
        security.clone(),
    )?);
    let node_backend: Option<Arc<dyn NodeBackend>> = if serve_node {
        let local = cli
            .storaged
            .iter()
            .flat_map(|s| s.split(','))
            .find(|s| !s.trim().is_empty())
            .ok_or("--storaged is empty")?;
        Some(Arc::new(cairn_client::NodeClient::connect(
            local,
            &node_security,
        )?))
    } else {
        None
    };

    let identity = IdentityService {
        volumes: Some(volumes.clone()),
        node: node_backend.clone(),
        controller: serve_controller,
    };
    let controller = serve_controller.then(|| {
        ControllerServer::new(
            ControllerService::new(volumes.clone())
                .with_max_volumes_per_node(cli.max_volumes_per_node.max(0) as usize),
        )
    });
    let node = node_backend.map(|nb| {
        let roots =
            std::iter::once(cli.kubelet_root.clone()).chain(cli.allowed_path_prefix.clone());
        let cfg = NodeConfig {
            node_id: cli.node_id.clone(),
            paths: PathPolicy::new(roots),
            frontend: match cli.frontend {
                FrontendArg::Fuse => Frontend::Fuse,
                FrontendArg::Nbd => Frontend::Nbd,
            },
            max_volumes_per_node: cli.max_volumes_per_node,
        };
        NodeServer::new(NodeService::new(cfg, nb, volumes.clone()))
    });

    let sock = cairn_proto::uds::socket_path(&cli.endpoint).map_err(|e| format!("--{e}"))?;
    if let Some(parent) = sock.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(&sock) {
        Ok(()) => tracing::info!(socket = %sock.display(), "removed stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("remove stale socket {}: {e}", sock.display()).into()),
    }
    let listener = UnixListener::bind(&sock)?;
    tracing::info!(
        socket = %sock.display(),
        mode = ?cli.mode,
        node_id = cli.node_id,
        storaged = ?cli.storaged,
        version = env!("CARGO_PKG_VERSION"),
        "cairn-csi serving"
    );
    let result = tonic::transport::Server::builder()
        .layer(RpcLogLayer::new(Verbosity::EveryCall))
        .add_service(IdentityServer::new(identity))
        .add_optional_service(controller)
        .add_optional_service(node)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown_signal())
        .await;
    let _ = std::fs::remove_file(&sock);
    result?;
    Ok(())
}
