//! A storaged node: the shared engine and channels, and the parts built on them — catalogue
//! access (`meta`), groups and their members' addresses (`groups`, `addresses`), I/O, `status`.

pub mod addresses;
pub mod failed;
pub mod groups;
pub mod io;
pub mod leadership;
pub mod meta;
pub mod quiesce;
pub mod space;
pub mod status;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::engine::Engine;
use crate::identity;
use crate::meta::catalog::{Catalog, MetaCommand, MetaReply, NodeRecord};
use crate::metrics::{Exposition, Metrics};
use crate::raft::state_machine::Shared;
use crate::raft::wal_sync::WalSyncer;
use crate::raft::{ChannelCache, META_GROUP, Node, Raft};
use crate::rebuild::Rebuilds;
use crate::{Error, Result};

use self::groups::{Groups, Opener, fatal};
use self::io::NodeIo;
use self::meta::Meta;
use self::space::Space;
pub use self::status::GroupStatus;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    pub name: String,
    /// The address peers and clients use to reach this node.
    pub addr: String,
    pub data_dir: PathBuf,
    /// Initial meta voters (id → addr); empty when joining a running cluster.
    pub initial_cluster: BTreeMap<u64, String>,
    /// Addresses of a running cluster this node joins (`--join`).
    pub join: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub capacity_bytes: u64,
    /// Log entries after which a volume group snapshots and purges its log.
    pub snapshot_logs: u64,
    /// How this node reaches its peers (mutual TLS with its own certificate).
    pub security: cairn_client::Security,
    /// Idle time after which a volume group this node leads goes quiet (`None`: never).
    pub quiet_after: Option<std::time::Duration>,
    /// When the meta leader replaces lost replicas, and how many at once.
    pub repair: crate::repair::RepairConfig,
    /// Bytes kept free on the data filesystem (`None`: 5 % of it, at most 1 GiB).
    pub reserve: Option<u64>,
    /// FUSE frontends served inside this process (`--in-process-frontends`).
    pub in_process_frontends: bool,
    /// The frontend host's socket (`--frontend-host`): it starts FUSE frontends, not storaged.
    pub frontend_host: Option<PathBuf>,
    /// How leaders make reads linearizable (`--read-policy`).
    pub read_policy: ReadPolicy,
    /// Value log bytes below which none is collected (`--value-log-floor`).
    pub value_log_floor: u64,
}

/// How a leader makes a read linearizable (`storaged --read-policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadPolicy {
    /// A leader within half its lease (a quorum's acknowledgement within the election
    /// timeout) reads at once, else asks a quorum: safe while clocks run at most 2x apart.
    #[default]
    Lease,
    /// Every read waits for a quorum to confirm the leader (one round trip, shared by the
    /// reads in flight): safe whatever the clocks do.
    ReadIndex,
}

impl NodeConfig {
    /// Where a node spools snapshots it receives.
    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("snapshots")
    }

    /// The other nodes this node was told about: initial voters and `--join` addresses.
    pub fn peers(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .initial_cluster
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, addr)| addr.clone())
            .chain(self.join.iter().cloned())
            .collect();
        out.retain(|a| *a != self.addr);
        out.dedup();
        out
    }
}

pub struct StorageNode {
    cfg: NodeConfig,
    channels: ChannelCache,
    meta: Arc<Meta>,
    groups: Arc<Groups>,
    io: NodeIo,
    metrics: Arc<Metrics>,
    rebuilds: Arc<Rebuilds>,
    /// The nodes it takes Raft messages from until its membership or catalogue arrives.
    first_senders: BTreeSet<u64>,
}

impl StorageNode {
    pub async fn start(cfg: NodeConfig, engine: Arc<dyn Engine>) -> Result<Arc<Self>> {
        let channels = ChannelCache::new(cfg.security.clone());
        let rebuilds = Rebuilds::new(cfg.repair.rate, cfg.repair.concurrency);
        let cut = crate::raft::log_store::recover_torn_tails(engine.as_ref())?;
        if cut > 0 {
            tracing::warn!(groups = cut, "log tails cut after a crash");
        }
        tokio::spawn(crate::engine::vlog_gc::run(
            Arc::downgrade(&engine),
            cfg.value_log_floor,
            crate::raft::state_machine::GroupStateMachine::applied_index,
        ));
        let opener = Opener {
            me: cfg.id,
            snapshot_logs: cfg.snapshot_logs,
            spool_dir: cfg.spool_dir(),
            engine: engine.clone(),
            syncer: WalSyncer::start(engine.clone()),
            channels: channels.clone(),
            rebuilds: rebuilds.clone(),
        };
        let cluster = identity::cluster_id(&cfg.security)?;
        let dir = identity::check_stamp(&cfg.data_dir, cfg.id, &cluster)?;
        let shared = Shared::new();
        // Without its meta group a node can do nothing: say so and stop, rather than
        // serve half a node or crash-loop on an unexplained error.
        let raft = opener
            .open(META_GROUP, shared.clone())
            .await
            .map_err(|e| {
                tracing::error!(node = cfg.id, data_dir = %cfg.data_dir.display(), error = %e, "the meta group cannot be opened");
                Error::Corrupt(format!(
                    "the meta group (this node's catalogue and membership) cannot be opened \
                     from {}: {e}; restore the data dir, or remove this node from the cluster \
                     (cairnctl node remove) and start it on an empty one",
                    cfg.data_dir.display()
                ))
            })?;
        let empty = !raft.is_initialized().await.map_err(fatal)?;
        let admission = if empty {
            let peers = cfg.peers();
            Some(identity::admit(cfg.id, &cfg.initial_cluster, &peers, &channels).await?)
        } else {
            None
        };
        if dir == identity::DirState::Unstamped {
            if !empty {
                tracing::info!(node = cfg.id, data_dir = %cfg.data_dir.display(), "stamping a data dir written before identity stamps");
            }
            identity::write_stamp(&cfg.data_dir, cfg.id, &cfg.initial_cluster, &cluster)?;
        }
        // With Raft state but none of the meta log yet (a node that started empty and was
        // stopped before its leader's first entries reached it: a vote is state), the initial
        // voters may still send it its log; once it has a membership this set is unused.
        let first_senders = match &admission {
            Some(a) => a.first_senders(&cfg.initial_cluster),
            None => cfg.initial_cluster.keys().copied().collect(),
        };
        if admission == Some(identity::Admission::Initialize) {
            let members: BTreeMap<u64, Node> = cfg
                .initial_cluster
                .iter()
                .map(|(id, addr)| (*id, Node { addr: addr.clone() }))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::info!(error = %e, "meta group already initialised");
            }
        }
        let meta = Arc::new(Meta::new(
            cfg.id,
            cfg.initial_cluster.clone(),
            raft,
            shared,
            channels.clone(),
            cfg.read_policy,
        ));
        let groups = Arc::new(Groups::new(opener, meta.clone(), cfg.quiet_after));
        let metrics = Arc::new(Metrics::default());
        let space = Arc::new(Space::new(cfg.id, &cfg.data_dir, cfg.reserve)?);
        let io = NodeIo::new(
            meta.clone(),
            groups.clone(),
            engine,
            metrics.clone(),
            space.clone(),
        );
        tokio::spawn(groups.clone().reconcile_loop());
        tokio::spawn(leadership::run(cfg.id, meta.clone(), groups.clone()));
        tokio::spawn(addresses::run(cfg.id, meta.clone(), groups.clone()));
        tokio::spawn(space::measure_loop(Arc::downgrade(&space)));

        tokio::spawn(quiesce::run(
            groups.quiescer().clone(),
            meta.clone(),
            groups.clone(),
            channels.clone(),
            space,
        ));
        let node = Arc::new(StorageNode {
            cfg,
            channels,
            meta,
            groups,
            io,
            metrics,
            rebuilds,
            first_senders,
        });
        tokio::spawn(crate::repair::run(Arc::downgrade(&node)));
        Ok(node)
    }

    pub fn cfg(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The nodes that may send it Raft messages while it has neither membership nor catalogue
    /// (`service/raft_sender.rs`): those its identity probe named, else the initial voters.
    pub fn first_senders(&self) -> &BTreeSet<u64> {
        &self.first_senders
    }

    /// The peer channels, shared by every group's transport and by forwarded requests.
    pub fn channels(&self) -> &ChannelCache {
        &self.channels
    }

    /// Leader-side block I/O.
    pub fn io(&self) -> &NodeIo {
        &self.io
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The meta group's Raft (membership changes and its metrics).
    pub fn meta_raft(&self) -> &Raft {
        self.meta.raft()
    }

    /// The volume groups this node runs now.
    pub fn volume_groups(&self) -> Vec<(u64, Raft)> {
        self.groups.volumes()
    }

    pub fn group(&self, group: u64) -> Option<Raft> {
        self.groups.get(group)
    }

    /// Restarts a quiet group's timers (see `quiesce.rs`); cheap when it was not quiet.
    pub fn wake(&self, group: u64) {
        if let Some(raft) = self.groups.get(group) {
            self.groups.wake(group, &raft);
        }
    }

    /// Takes a peer's ping: it is alive, and the groups it quiesced may go quiet here.
    /// Answers with this node's space: short of it, and its usage.
    pub fn on_ping(
        &self,
        ping: &cairn_proto::cairn::v1::PingRequest,
    ) -> cairn_proto::cairn::v1::PingReply {
        let (from, boot, notices) = (ping.from, ping.boot, &ping.quiesce);
        let space = self.io.space();
        space.peer_reported(from, ping.short_of_space);
        space.peer_usage(
            from,
            space::from_wire(ping.used_bytes, ping.fs_free_bytes, ping.reserve_bytes),
        );
        self.groups.quiescer().pinged_by(&self.groups, from, boot);
        self.groups.quiescer().on_notices(&self.groups, notices);
        let now = std::time::Instant::now();
        self.groups
            .peer_failed()
            .reported(from, &ping.failed_groups, now);
        let mine = space.report();
        cairn_proto::cairn::v1::PingReply {
            node: self.cfg.id,
            short_of_space: space.short(),
            used_bytes: mine.map(|u| u.used),
            fs_free_bytes: mine.map(|u| u.fs_free),
            reserve_bytes: mine.map(|u| u.reserve),
        }
    }

    /// The nodes' fresh usage reports, as placement takes them.
    pub fn live_usage(&self) -> crate::meta::placement::Live {
        self.io.space().live()
    }

    /// Replicas that failed to open, here and on the peers that report them in their pings,
    /// by (node, group): for how long, and why. Empty while every group opens.
    pub fn failing_replicas(&self) -> failed::Failing {
        let now = std::time::Instant::now();
        let mut out = self.groups.peer_failed().failing(now);
        out.extend(self.groups.failed().failing(self.cfg.id, now));
        out
    }

    pub fn group_status(&self, group: u64) -> GroupStatus {
        let mut s = status::group_status(self.group(group));
        if !s.hosted {
            s.open_error = self.groups.failed().reason(group);
        }
        if s.leader == Some(self.cfg.id) {
            s.rebuilds = self.rebuilds.of_group(group);
        }
        if group == META_GROUP {
            s.catalogue_nodes = self
                .meta
                .with_catalog(|c| c.nodes.keys().copied().collect());
        }
        s
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.cfg.spool_dir()
    }

    /// The local (possibly stale) catalogue.
    pub fn catalog(&self) -> Catalog {
        self.meta.catalog()
    }

    /// Runs `f` on the local (possibly stale) catalogue without cloning it.
    pub fn with_catalog<R>(&self, f: impl FnOnce(&Catalog) -> R) -> R {
        self.meta.with_catalog(f)
    }

    /// Ticks whenever the local catalogue changes.
    pub fn catalog_changes(&self) -> watch::Receiver<u64> {
        self.meta.changes()
    }

    /// A volume's size in the local (possibly stale) catalogue.
    pub fn volume_size(&self, name: &str) -> Option<u64> {
        self.meta
            .with_catalog(|cat| cat.volumes.get(name).map(|v| v.size))
    }

    /// Proposes a catalogue command on the meta leader; returns its reply.
    pub async fn propose_meta(&self, cmd: MetaCommand) -> Result<MetaReply> {
        self.meta.propose(cmd).await
    }

    /// A linearizable catalogue read (must run on the meta leader).
    pub async fn read_catalog(&self) -> Result<Catalog> {
        self.meta.read().await
    }

    /// A catalogue reflecting every change committed before the call, on any node
    /// (see `Meta::fresh`).
    pub async fn fresh_catalog(&self) -> Result<Catalog> {
        self.meta.fresh().await
    }

    /// On the leader of `group`: waits until a read there is linearizable.
    pub async fn linearize(&self, raft: &Raft, group: u64) -> Result<u64> {
        self.meta.linearize(raft, group).await
    }

    /// This node's catalogue record.
    pub fn self_record(&self) -> NodeRecord {
        NodeRecord {
            id: self.cfg.id,
            name: self.cfg.name.clone(),
            addr: self.cfg.addr.clone(),
            labels: self.cfg.labels.clone(),
            capacity_bytes: self.cfg.capacity_bytes,
            role: crate::meta::catalog::NodeRole::Voter,
        }
    }

    pub async fn shutdown(&self) {
        self.groups.shutdown().await;
    }
}

impl Exposition for StorageNode {
    fn exposition(&self) -> String {
        let infos: HashMap<u64, status::VolumeInfo> = self.meta.with_catalog(|cat| {
            cat.volumes
                .values()
                .map(|v| {
                    let info = status::VolumeInfo {
                        name: v.name.clone(),
                        replicas: v.replicas,
                        repairing: v.repair.is_some(),
                    };
                    (v.id, info)
                })
                .collect()
        });
        let quiescer = self.groups.quiescer();
        let samples = status::samples(
            self.cfg.id,
            self.meta.raft(),
            self.groups.volumes(),
            &infos,
            &|g| quiescer.is_quiet(g),
            &|peer| quiescer.is_silent(peer),
        );
        let failed: Vec<(u64, String)> = self
            .groups
            .failed()
            .all()
            .into_iter()
            .map(|(g, f)| (g, f.volume))
            .collect();
        self.metrics
            .encode(&samples, &self.rebuilds.remaining(), &failed)
    }
}
