//! Process wiring for `storaged`: opens the engine, starts the node, serves the
//! gRPC services, registers the node in the catalogue and shuts down on signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::Security;
use cairn_proto::cairn::v1 as pb;
use cairn_proto::rpclog::{RpcLogLayer, Verbosity};
use tokio::sync::oneshot;

use crate::engine::Engine;
use crate::frontend::attach::AttachManager;
use crate::frontend::local_pool::{LocalPool, PoolFile};
use crate::meta::catalog::VolumeKind;
use crate::node::{NodeConfig, StorageNode};
use crate::opener::NodeOpener;
use crate::service::block_api::BlockApi;
use crate::service::node_api::NodeServiceImpl;
use crate::service::raft_api::RaftApi;
use crate::service::volume_api::VolumeApi;
use crate::tls::authz::{AuthzLayer, Policy};
use crate::{Error, Result};

pub struct ServerOptions {
    pub node: NodeConfig,
    pub listen: SocketAddr,
    /// Extra addresses to register through (a running cluster when joining).
    pub join: Vec<String>,
    /// Where to serve Prometheus `/metrics` and `/healthz`; none when `None`.
    pub metrics_addr: Option<SocketAddr>,
    /// Runtime state: the attachment table, FUSE mountpoints, frontend control sockets.
    pub run_dir: PathBuf,
}

/// The server side of `NodeConfig::security`: mutual TLS (done by `serve!`'s incoming
/// stream) with authorization per API, or (only from `--insecure`) plaintext open to anyone
/// who can reach the port.
fn server_builder(cfg: &NodeConfig) -> tonic::transport::Server {
    if let Security::Insecure = &cfg.security {
        tracing::warn!(
            "serving PLAINTEXT without authentication (--insecure): any process that reaches this port can read, write and delete volumes"
        );
    }
    tonic::transport::Server::builder()
}

/// Spawns `$router` on `$listener` until `$signal`: over TLS handshakes made with the
/// certificate files in force (`tls::tls_incoming`), or plaintext.
macro_rules! serve {
    ($router:expr, $security:expr, $listener:expr, $signal:expr) => {
        match $security {
            Security::Tls(tls) => {
                let incoming = crate::tls::tls_incoming($listener, tls)?;
                tokio::spawn($router.serve_with_incoming_shutdown(incoming, $signal))
            }
            Security::Insecure => {
                let incoming =
                    tonic::transport::server::TcpIncoming::from($listener).with_nodelay(Some(true));
                tokio::spawn($router.serve_with_incoming_shutdown(incoming, $signal))
            }
        }
    };
}

pub struct Running {
    pub node: Arc<StorageNode>,
    pub attach: Arc<AttachManager>,
    /// Frontend processes' block requests; closed (they wait and reconnect) when this goes.
    _data_socket: crate::frontend::nbd_local::LocalNbd,
    stop: Option<oneshot::Sender<()>>,
    /// Ends the `AppendStream`s peers keep open to this node.
    closing: tokio::sync::watch::Sender<bool>,
    served: tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    /// Attachment recovery, if still running at stop.
    recovery: tokio::task::JoinHandle<()>,
}

/// How long a stop waits for in-flight calls to finish before going on without them.
const DRAIN: Duration = Duration::from_secs(10);

impl Running {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.closing.send_replace(true);
        self.recovery.abort();
        if tokio::time::timeout(DRAIN, &mut self.served).await.is_err() {
            tracing::warn!(after = ?DRAIN, "calls still in flight at shutdown: stopping without them");
            self.served.abort();
        }
        // What lives in this process ends with it; frontend processes serve on (decision 041).
        self.attach.shutdown().await;
        self.node.shutdown().await;
    }
}

pub fn open_engine(data_dir: &std::path::Path) -> Result<Arc<dyn Engine>> {
    std::fs::create_dir_all(data_dir)?;
    let db: PathBuf = data_dir.join("db");
    #[cfg(feature = "rocks")]
    return Ok(Arc::new(crate::engine::RocksEngine::open(&db)?));
    #[cfg(not(feature = "rocks"))]
    Err(Error::Engine(format!(
        "built without the rocks feature: cannot open {}",
        db.display()
    )))
}

/// Starts a node and serves it until `Running::stop`.
pub async fn start(opts: ServerOptions) -> Result<Running> {
    // A data dir of another node or cluster is refused before anything else (the port too).
    let cluster = crate::identity::cluster_id(&opts.node.security)?;
    let dir = crate::identity::check_stamp(&opts.node.data_dir, opts.node.id, &cluster)?;
    let engine = open_engine(&opts.node.data_dir)?;
    let std_listener = std::net::TcpListener::bind(opts.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| Error::Unavailable(format!("cannot listen on {}: {e}", opts.listen)))?;
    let authz = match &opts.node.security {
        Security::Tls(_) => AuthzLayer::new(Policy {
            node_name: opts.node.name.clone(),
        }),
        Security::Insecure => AuthzLayer::open(),
    };
    // Peers probing whether anyone bootstrapped must hear from a node whose meta group is
    // empty before its Raft runs, stamped or not (initial voters that stamped and crashed
    // before `initialize` would otherwise wait for each other forever). A node with Raft
    // state serves nothing until it runs (a client meeting a waiting room would get
    // UNIMPLEMENTED for the other services).
    let empty = dir == crate::identity::DirState::Unstamped
        || !crate::raft::log_store::LogStore::holds_state(
            engine.as_ref(),
            crate::raft::META_GROUP,
        )?;
    let waiting = if empty {
        Some(serve_waiting_room(
            &opts.node,
            &std_listener,
            authz.clone(),
        )?)
    } else {
        None
    };
    let started = StorageNode::start(opts.node.clone(), engine).await;
    if let Some(waiting) = waiting {
        waiting.stop().await;
    }
    let node = started?;
    if let Some(addr) = opts.metrics_addr {
        crate::metrics::serve(addr, node.clone()).await?;
    }
    let pool = Arc::new(LocalPool::new(opts.node.data_dir.join("local-pool")));
    tokio::spawn(local_pool_gc(node.clone(), pool.clone()));
    let opener = Arc::new(NodeOpener {
        node: node.clone(),
        pool,
        data_socket: opts.run_dir.join(crate::frontend::nbd_local::SOCKET),
    });
    // Before attachments are recovered: adopted frontends reconnect to it.
    std::fs::create_dir_all(&opts.run_dir)?;
    let data_socket = crate::frontend::nbd_local::LocalNbd::start(&opts.run_dir, opener.clone())?;
    let attach = Arc::new(AttachManager::new(opener, opts.run_dir.clone()));
    // Recovery runs once the node serves: re-attaching a volume may need its group to elect,
    // with peers that must reach this node's Raft service (or frontends' I/O that comes back
    // here). NodeService calls wait for it (`NodeServiceImpl::gated`).
    let (recovered_tx, recovered_rx) = tokio::sync::watch::channel(false);
    let recovery = tokio::spawn({
        let attach = attach.clone();
        async move {
            match attach.recover().await {
                Ok(report) => tracing::info!(?report, "attachments recovered"),
                Err(e) => tracing::warn!(error = %e, "attachment recovery failed"),
            }
            recovered_tx.send_replace(true);
        }
    });
    let listener = tokio::net::TcpListener::from_std(std_listener)
        .map_err(|e| Error::Unavailable(format!("cannot listen on {}: {e}", opts.listen)))?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let router = server_builder(&opts.node)
        .tcp_nodelay(true)
        .http2_adaptive_window(Some(true))
        .layer(RpcLogLayer::new(Verbosity::Quiet))
        .layer(authz)
        .add_service(
            pb::raft_service_server::RaftServiceServer::new(RaftApi {
                node: node.clone(),
                closing: closing_rx,
            })
            .max_decoding_message_size(512 << 20)
            .max_encoding_message_size(512 << 20),
        )
        .add_service(pb::volume_service_server::VolumeServiceServer::new(
            VolumeApi {
                node: node.clone(),
                copies: Default::default(),
            },
        ))
        .add_service(
            pb::block_service_server::BlockServiceServer::new(BlockApi { node: node.clone() })
                .max_decoding_message_size(8 << 20)
                .max_encoding_message_size(8 << 20),
        )
        .add_service(NodeServiceImpl::gated(attach.clone(), recovered_rx).into_server());
    // Our own listener: TCP_NODELAY is set on accepted sockets by `serve!` (the builder's
    // `tcp_nodelay` only covers listeners tonic binds), or replies wait ~40 ms on Nagle.
    let served = serve!(router, &opts.node.security, listener, async {
        let _ = stop_rx.await;
    });
    tokio::spawn(register_loop(node.clone(), opts.join.clone()));
    tokio::spawn(crate::hints::follow(Arc::downgrade(&node)));
    tracing::info!(node = node.cfg().id, name = %node.cfg().name, addr = %node.cfg().addr, "storaged serving");
    Ok(Running {
        node,
        attach,
        _data_socket: data_socket,
        stop: Some(stop_tx),
        closing: closing_tx,
        served,
        recovery,
    })
}

/// The waiting room's server (`service/waiting.rs`), on a clone of the node's listener.
struct Waiting {
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>,
}

impl Waiting {
    /// Stops it; peers' connections to it end and reconnect to the node's real server.
    async fn stop(mut self) {
        let _ = self.stop.send(());
        if tokio::time::timeout(Duration::from_secs(2), &mut self.served)
            .await
            .is_err()
        {
            self.served.abort();
        }
    }
}

fn serve_waiting_room(
    cfg: &NodeConfig,
    listener: &std::net::TcpListener,
    authz: AuthzLayer,
) -> Result<Waiting> {
    let clone = listener
        .try_clone()
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| Error::Unavailable(format!("cannot listen on {}: {e}", cfg.addr)))?;
    let router = server_builder(cfg).layer(authz).add_service(
        pb::raft_service_server::RaftServiceServer::new(crate::service::waiting::WaitingRoom),
    );
    let (stop, stop_rx) = oneshot::channel::<()>();
    let served = serve!(router, &cfg.security, clone, async {
        let _ = stop_rx.await;
    });
    Ok(Waiting { stop, served })
}

/// Removes pool files whose local volume is gone: deleted just now (the catalogue
/// changed) or while this node was down. Runs on every catalogue change and every 30 s.
async fn local_pool_gc(node: Arc<StorageNode>, pool: Arc<LocalPool>) {
    let mut changed = node.catalog_changes();
    loop {
        match clean_local_pool(&node, &pool).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(?removed, "removed pool files of deleted local volumes");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "local pool clean-up failed; will retry"),
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

/// One clean-up pass; returns the volumes whose files it removed.
async fn clean_local_pool(node: &StorageNode, pool: &LocalPool) -> Result<Vec<PoolFile>> {
    let listed = pool.list().await?;
    if listed.is_empty() {
        return Ok(listed);
    }
    // Fresh, not the local copy: right after a restart the local catalogue can be
    // older than files created before the crash.
    let cat = node.fresh_catalog().await?;
    let mine = |name: &str| {
        cat.volumes
            .get(name)
            .filter(|r| r.kind == VolumeKind::Local && r.members.contains(&node.cfg().id))
    };
    pool.remove_unless(listed, |f| match f {
        PoolFile::Current { id, name } => mine(name).is_some_and(|r| r.id == *id),
        // Kept for its volume to adopt at the next attach.
        PoolFile::Legacy { name } => mine(name).is_some(),
    })
    .await
}

/// Registers (or refreshes) this node's catalogue record until it succeeds.
async fn register_loop(node: Arc<StorageNode>, join: Vec<String>) {
    let mut endpoints: Vec<String> = node.cfg().initial_cluster.values().cloned().collect();
    endpoints.extend(join);
    endpoints.push(node.cfg().addr.clone());
    let client = match cairn_client::VolumeClient::new(endpoints, node.cfg().security.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e.message(), "cannot register in the catalogue: bad endpoint");
            return;
        }
    };
    let me = node.self_record();
    let req = pb::AddNodeRequest {
        id: me.id,
        addr: me.addr.clone(),
        name: me.name.clone(),
        labels: me.labels.clone().into_iter().collect(),
        capacity_bytes: me.capacity_bytes,
    };
    for attempt in 1u64.. {
        match client.add_node(req.clone()).await {
            Ok(_) => {
                tracing::info!(node = me.id, name = %me.name, attempt, "registered in the catalogue");
                return;
            }
            // Refused (a name held by another id): say so at once, then now and then.
            Err(e) if e.code() == tonic::Code::FailedPrecondition && attempt % 20 == 1 => {
                tracing::error!(node = me.id, name = %me.name, attempt, error = %e.message(), "registration refused; retrying")
            }
            // Quiet while the cluster forms; loud once it takes longer than a start should.
            Err(e) if attempt % 20 == 0 => {
                tracing::warn!(node = me.id, attempt, code = ?e.code(), error = %e.message(), "registration still pending")
            }
            Err(e) => tracing::debug!(node = me.id, error = %e.message(), "registration pending"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
