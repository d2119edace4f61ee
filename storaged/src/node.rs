//! A storaged node: the shared engine, the meta group and every local volume
//! group, plus the reconcile loop that starts/stops groups as the catalogue changes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::meta::catalog::{
    Catalog, MetaCommand, MetaReply, NodeRecord, POPULATING_LABEL, SNAPSHOT_OF_LABEL, VolumeKind,
    VolumeRecord,
};
use crate::raft::log_store::LogStore;
use crate::raft::log_window::LogWindow;
use crate::raft::state_machine::{GroupStateMachine, Shared};
use crate::raft::wal_sync::WalSyncer;
use crate::raft::{ChannelCache, NetworkFactory};
use crate::raft::{META_GROUP, Node, Raft, Request, Response, config};
use crate::volume::blocks;
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    pub name: String,
    /// The address peers and clients use to reach this node.
    pub addr: String,
    pub data_dir: PathBuf,
    /// Initial meta voters (id → addr); empty when joining a running cluster.
    pub initial_cluster: BTreeMap<u64, String>,
    pub labels: BTreeMap<String, String>,
    pub capacity_bytes: u64,
    /// Log entries after which a volume group snapshots and purges its log.
    pub snapshot_logs: u64,
}

/// Where a node spools snapshots it receives.
fn spool_dir(cfg: &NodeConfig) -> PathBuf {
    cfg.data_dir.join("snapshots")
}

/// How long a follower read waits for the meta leader's read index and for applying it.
const FOLLOWER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a catalogue read waits for a meta leader to be elected (an election takes
/// 300–600 ms, longer under load).
const LEADER_WAIT: Duration = Duration::from_secs(3);

/// One node's view of a group, answered to `GroupStatus`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct GroupStatus {
    pub hosted: bool,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    /// On the leader: each member's matched log index.
    pub matched: BTreeMap<u64, Option<u64>>,
}

pub struct StorageNode {
    pub cfg: NodeConfig,
    pub engine: Arc<dyn Engine>,
    syncer: WalSyncer,
    pub channels: ChannelCache,
    pub meta_shared: Arc<Shared>,
    pub meta: Raft,
    groups: RwLock<HashMap<u64, Raft>>,
    pub metrics: crate::metrics::Metrics,
}

/// A snapshot is written only by the copy that makes it; after that it is read-only.
fn refuse_sealed_snapshot(vol: &VolumeRecord) -> Result<()> {
    if vol.labels.contains_key(SNAPSHOT_OF_LABEL) && !vol.labels.contains_key(POPULATING_LABEL) {
        return Err(Error::FailedPrecondition(format!(
            "`{}` holds a snapshot and is read-only",
            vol.name
        )));
    }
    Ok(())
}

/// Purges `group`'s log up to `upto` once openraft has taken in the snapshot that
/// covers it (it purges nothing past its newest snapshot), within 10 s.
async fn purge_behind_snapshot(raft: &Raft, group: u64, upto: u64) {
    let covered = raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.snapshot.as_ref().is_some_and(|s| s.index() >= upto),
            "a snapshot covering the purge",
        )
        .await;
    if covered.is_err() {
        tracing::debug!(group, upto, "log purge dropped: no snapshot covers it yet");
        return;
    }
    if let Err(e) = raft.trigger().purge_log(upto).await {
        tracing::debug!(group, upto, error = %e, "log purge not taken");
    }
}

fn fatal(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("raft: {e}"))
}

impl StorageNode {
    pub async fn start(cfg: NodeConfig, engine: Arc<dyn Engine>) -> Result<Arc<Self>> {
        let syncer = WalSyncer::start(engine.clone());
        let channels = ChannelCache::default();
        let meta_shared = Shared::new();
        let meta = Self::open_group(
            &cfg,
            &engine,
            &syncer,
            &channels,
            META_GROUP,
            meta_shared.clone(),
        )
        .await?;
        if cfg.initial_cluster.contains_key(&cfg.id)
            && !meta.is_initialized().await.map_err(fatal)?
        {
            let members: BTreeMap<u64, Node> = cfg
                .initial_cluster
                .iter()
                .map(|(id, addr)| (*id, Node { addr: addr.clone() }))
                .collect();
            if let Err(e) = meta.initialize(members).await {
                tracing::info!(error = %e, "meta group already initialised");
            }
        }
        let node = Arc::new(StorageNode {
            cfg,
            engine,
            syncer,
            channels,
            meta_shared,
            meta,
            groups: RwLock::new(HashMap::new()),
            metrics: Default::default(),
        });
        tokio::spawn(node.clone().reconcile_loop());
        tokio::spawn(crate::leadership::run(node.clone()));
        Ok(node)
    }

    async fn open_group(
        cfg: &NodeConfig,
        engine: &Arc<dyn Engine>,
        syncer: &WalSyncer,
        channels: &ChannelCache,
        group: u64,
        shared: Arc<Shared>,
    ) -> Result<Raft> {
        let log = LogStore::new(engine.clone(), group, syncer.clone());
        let (want_snapshot, mut snapshot_requests) = tokio::sync::mpsc::channel(1);
        let window = Arc::new(LogWindow::default());
        let sm = GroupStateMachine::open(engine.clone(), group, shared)
            .map_err(Error::Io)?
            .with_snapshot_requests(want_snapshot, window.clone())
            .with_spool_dir(spool_dir(cfg));
        let net = NetworkFactory {
            group,
            channels: channels.clone(),
        };
        let raft = Raft::new(
            cfg.id,
            config(group == META_GROUP, cfg.snapshot_logs),
            net,
            log,
            sm,
        )
        .await
        .map_err(fatal)?;
        // Ends when the group shuts down and its state machine (the sender) is dropped.
        let trigger = raft.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    req = snapshot_requests.recv() => {
                        if req.is_none() {
                            break;
                        }
                        if let Err(e) = trigger.trigger().snapshot().await {
                            tracing::debug!(group, error = %e, "snapshot request not taken");
                        }
                    }
                    // A snapshot was built: what it left beyond `KEEP_BYTES` goes now
                    // (openraft's own purge keeps entries by count, 1 GiB of 1 MiB writes).
                    _ = window.built.notified() => {
                        if let Some(upto) = window.take_purge() {
                            purge_behind_snapshot(&trigger, group, upto).await;
                        }
                    }
                }
            }
        });
        Ok(raft)
    }

    /// The volume groups this node runs now.
    pub fn volume_groups(&self) -> Vec<(u64, Raft)> {
        let groups = self.groups.read().expect("groups lock poisoned");
        groups.iter().map(|(id, r)| (*id, r.clone())).collect()
    }

    pub fn spool_dir(&self) -> PathBuf {
        spool_dir(&self.cfg)
    }

    pub fn group(&self, group: u64) -> Option<Raft> {
        if group == META_GROUP {
            return Some(self.meta.clone());
        }
        self.groups
            .read()
            .expect("groups lock poisoned")
            .get(&group)
            .cloned()
    }

    /// The local (possibly stale) catalogue.
    pub fn catalog(&self) -> Catalog {
        self.meta_shared.catalog()
    }

    fn addr_of(&self, cat: &Catalog, id: u64) -> Option<String> {
        cat.nodes
            .get(&id)
            .map(|n| n.addr.clone())
            .or_else(|| self.cfg.initial_cluster.get(&id).cloned())
    }

    fn not_leader(&self, raft: &Raft, group: u64) -> Error {
        let leader = raft.metrics().borrow_watched().current_leader;
        match leader {
            Some(id) if id != self.cfg.id => Error::NotLeader {
                group,
                leader: self.addr_of(&self.catalog(), id),
            },
            _ => Error::Unavailable(format!(
                "group {group} has no leader (election in progress or no quorum)"
            )),
        }
    }

    fn map_write_err(
        &self,
        raft: &Raft,
        group: u64,
        e: RaftError<crate::raft::TypeConfig, ClientWriteError<crate::raft::TypeConfig>>,
    ) -> Error {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match f.leader_node {
                Some(n) => Error::NotLeader {
                    group,
                    leader: Some(n.addr),
                },
                None => self.not_leader(raft, group),
            },
            other => Error::Unavailable(format!("group {group}: {other}")),
        }
    }

    /// Proposes a catalogue command on the meta leader; returns its reply.
    pub async fn propose_meta(&self, cmd: MetaCommand) -> Result<MetaReply> {
        let kind = cmd.kind();
        let resp = self
            .meta
            .client_write(Request::Meta(cmd))
            .await
            .map_err(|e| self.map_write_err(&self.meta, META_GROUP, e))?;
        tracing::debug!(
            command = kind,
            log_index = resp.log_id.index(),
            "meta command applied"
        );
        match resp.data {
            Response::Meta(r) => r.map_err(Error::from),
            Response::Done => Err(Error::Internal("meta command produced no reply".into())),
        }
    }

    /// A linearizable catalogue read (must run on the meta leader).
    pub async fn read_catalog(&self) -> Result<Catalog> {
        self.linearize(&self.meta, META_GROUP).await?;
        Ok(self.catalog())
    }

    /// On the leader of `group`: waits until a read there is linearizable (lease, else
    /// read index) and returns the index it had to see applied.
    pub async fn linearize(&self, raft: &Raft, group: u64) -> Result<u64> {
        if let Ok(r) = raft.ensure_linearizable(ReadPolicy::LeaseRead).await {
            return Ok(r.index());
        }
        match raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(r) => Ok(r.index()),
            Err(_) => Err(self.not_leader(raft, group)),
        }
    }

    /// A catalogue that reflects every change committed before this call, on any node:
    /// linearizable on the meta leader; elsewhere, once the local catalogue has applied
    /// the leader's read index (a follower read). Attach and resize use it, so a volume
    /// created or grown a moment ago is seen with its new size on every node.
    pub async fn fresh_catalog(&self) -> Result<Catalog> {
        let no_leader = || {
            Error::Unavailable(format!(
                "the meta group has no leader after {LEADER_WAIT:?} (election in progress or no quorum)"
            ))
        };
        // During an election there is briefly no leader: wait for one (bounded) rather
        // than fail a request that would succeed a moment later.
        let leader = self
            .meta
            .wait(Some(LEADER_WAIT))
            .metrics(|m| m.current_leader.is_some(), "a meta leader")
            .await
            .ok()
            .and_then(|m| m.current_leader)
            .ok_or_else(no_leader)?;
        if leader == self.cfg.id {
            return self.read_catalog().await;
        }
        let addr = self
            .addr_of(&self.catalog(), leader)
            .ok_or_else(no_leader)?;
        let mut client = self.channels.client(&addr).map_err(Error::Internal)?;
        let req = cairn_proto::cairn::v1::RaftMessage {
            group_id: META_GROUP,
            payload: Default::default(),
        };
        let reply = tokio::time::timeout(FOLLOWER_READ_TIMEOUT, client.read_index(req))
            .await
            .map_err(|_| {
                Error::Unavailable(format!(
                    "meta leader {addr} gave no read index within {FOLLOWER_READ_TIMEOUT:?}"
                ))
            })?
            .map_err(|s| Error::Unavailable(format!("meta leader {addr}: {}", s.message())))?
            .into_inner();
        if !reply.error.is_empty() {
            return Err(Error::Unavailable(format!(
                "meta leader {addr}: {}",
                reply.error
            )));
        }
        let index: u64 = crate::raft::decode(&reply.payload)?;
        self.meta
            .wait(Some(FOLLOWER_READ_TIMEOUT))
            .applied_index_at_least(Some(index), "catalogue follower read")
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "the local catalogue did not reach the leader's index {index}: {e}"
                ))
            })?;
        Ok(self.catalog())
    }

    /// Resolves a volume for I/O on this node: its record and local leader Raft, or a redirect.
    pub(crate) fn io_target(&self, name: &str) -> Result<(VolumeRecord, Raft)> {
        // On every I/O: look up one record, never clone the whole catalogue.
        let found = self.meta_shared.with_catalog(|cat| {
            cat.volumes.get(name).cloned().map(|v| {
                let first = v.members.first().and_then(|m| self.addr_of(cat, *m));
                (v, first)
            })
        });
        let Some((vol, first_member)) = found else {
            if self.meta.is_leader() {
                return Err(Error::not_found("volume", name));
            }
            // Our catalogue may lag: send the client to the meta leader.
            return Err(self.not_leader(&self.meta, META_GROUP));
        };
        if vol.kind == VolumeKind::Local {
            return Err(Error::FailedPrecondition(format!(
                "volume `{name}` is a local volume: it has no replicated block API; attach it on its node"
            )));
        }
        match self.group(vol.id) {
            Some(raft) if raft.is_leader() => Ok((vol, raft)),
            Some(raft) => Err(self.not_leader(&raft, vol.id)),
            None => Err(Error::NotLeader {
                group: vol.id,
                leader: first_member,
            }),
        }
    }

    /// Bounds-checks an I/O against the local catalogue; a range past the end is checked
    /// again against a fresh catalogue, since a resize may be committed but not yet applied
    /// here. The hot path never leaves the node.
    async fn check_bounds(
        &self,
        vol: &VolumeRecord,
        check: impl Fn(u64) -> Result<()>,
    ) -> Result<()> {
        match check(vol.size) {
            Err(Error::OutOfRange(_)) => {
                let cat = self.fresh_catalog().await?;
                check(cat.volumes.get(&vol.name).map_or(vol.size, |v| v.size))
            }
            other => other,
        }
    }

    pub async fn write(&self, name: &str, offset: u64, data: bytes::Bytes) -> Result<()> {
        let (started, len) = (Instant::now(), data.len() as u64);
        let r = self.write_inner(name, offset, data).await;
        self.metrics.io("write", len, started, &r);
        r
    }

    async fn write_inner(&self, name: &str, offset: u64, data: bytes::Bytes) -> Result<()> {
        let (vol, raft) = self.io_target(name)?;
        refuse_sealed_snapshot(&vol)?;
        let len = data.len() as u64;
        self.check_bounds(&vol, |size| blocks::check_io(offset, len, size, true))
            .await?;
        raft.client_write(Request::Write { offset, data })
            .await
            .map_err(|e| self.map_write_err(&raft, vol.id, e))?;
        Ok(())
    }

    pub async fn discard(&self, name: &str, offset: u64, len: u64) -> Result<()> {
        let started = Instant::now();
        let r = self.discard_inner(name, offset, len).await;
        self.metrics.io("discard", len, started, &r);
        r
    }

    async fn discard_inner(&self, name: &str, offset: u64, len: u64) -> Result<()> {
        let (vol, raft) = self.io_target(name)?;
        refuse_sealed_snapshot(&vol)?;
        self.check_bounds(&vol, |size| blocks::check_range(offset, len, size, None))
            .await?;
        raft.client_write(Request::Discard { offset, len })
            .await
            .map_err(|e| self.map_write_err(&raft, vol.id, e))?;
        Ok(())
    }

    pub async fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let started = Instant::now();
        let r = self.read_inner(name, offset, len).await;
        self.metrics.io("read", len, started, &r);
        r
    }

    async fn read_inner(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let (vol, raft) = self.io_target(name)?;
        self.check_bounds(&vol, |size| blocks::check_io(offset, len, size, false))
            .await?;
        self.linearize(&raft, vol.id).await?;
        blocks::read(self.engine.as_ref(), vol.id, offset, len)
    }

    /// Every acknowledged write is already committed (fsynced on a majority), so a flush
    /// only has to confirm that this node still leads the group.
    pub async fn flush(&self, name: &str) -> Result<()> {
        let started = Instant::now();
        let r = async {
            let (vol, raft) = self.io_target(name)?;
            self.linearize(&raft, vol.id).await.map(|_| ())
        }
        .await;
        self.metrics.io("flush", 0, started, &r);
        r
    }

    pub fn group_status(&self, group: u64) -> GroupStatus {
        let Some(raft) = self.group(group) else {
            return GroupStatus::default();
        };
        let m = raft.metrics().borrow_watched().clone();
        let matched = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, l)| (*id, l.as_ref().map(|l| l.index())))
                    .collect()
            })
            .unwrap_or_default();
        GroupStatus {
            hosted: true,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            matched,
        }
    }

    /// Starts groups this node should host and removes those it no longer should.
    async fn reconcile(&self) -> Result<()> {
        let cat = self.catalog();
        let mine: BTreeMap<u64, VolumeRecord> = cat
            .volumes
            .values()
            .filter(|v| v.kind == VolumeKind::Replicated && v.members.contains(&self.cfg.id))
            .map(|v| (v.id, v.clone()))
            .collect();
        let running: Vec<u64> = self
            .groups
            .read()
            .expect("groups lock poisoned")
            .keys()
            .copied()
            .collect();
        for (id, vol) in &mine {
            if running.contains(id) {
                continue;
            }
            let raft = Self::open_group(
                &self.cfg,
                &self.engine,
                &self.syncer,
                &self.channels,
                *id,
                Shared::new(),
            )
            .await?;
            if !raft.is_initialized().await.map_err(fatal)? {
                let members: BTreeMap<u64, Node> = vol
                    .members
                    .iter()
                    .filter_map(|m| self.addr_of(&cat, *m).map(|addr| (*m, Node { addr })))
                    .collect();
                if let Err(e) = raft.initialize(members).await {
                    tracing::debug!(volume = %vol.name, group = id, error = %e, "group already initialised");
                }
            }
            tracing::info!(volume = %vol.name, group = id, "volume group started");
            self.groups
                .write()
                .expect("groups lock poisoned")
                .insert(*id, raft);
        }
        for id in running {
            if mine.contains_key(&id) {
                continue;
            }
            let raft = self
                .groups
                .write()
                .expect("groups lock poisoned")
                .remove(&id);
            if let Some(raft) = raft {
                let _ = raft.shutdown().await;
            }
            LogStore::destroy(self.engine.as_ref(), id)?;
            GroupStateMachine::destroy(self.engine.as_ref(), id)?;
            tracing::info!(group = id, "volume group removed and its data deleted");
        }
        Ok(())
    }

    async fn reconcile_loop(self: Arc<Self>) {
        let mut changed = self.meta_shared.changed.subscribe();
        loop {
            if let Err(e) = self.reconcile().await {
                tracing::warn!(node = self.cfg.id, error = %e, "reconcile failed; will retry");
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
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
        let groups: Vec<Raft> = self
            .groups
            .write()
            .expect("groups lock poisoned")
            .drain()
            .map(|(_, r)| r)
            .collect();
        for r in groups {
            let _ = r.shutdown().await;
        }
        let _ = self.meta.shutdown().await;
    }
}
