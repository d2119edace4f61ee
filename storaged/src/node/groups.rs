//! Raft group lifecycle on this node: opening a group over the shared engine, and the
//! reconcile loop that starts the volume groups the catalogue places here and removes the rest.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::engine::{Cf, Engine, keys};
use crate::meta::catalog::{Catalog, VolumeKind, VolumeRecord};
use crate::node::failed::{Failed, PeerFailed};
use crate::node::meta::Meta;
use crate::node::quiesce::Quiescer;
use crate::raft::log_store::{LogStore, Pointers};
use crate::raft::log_window::{FOLLOWER_KEEP_BYTES, KEEP_BYTES, LogWindow};
use crate::raft::state_machine::{GroupStateMachine, Shared};
use crate::raft::wal_sync::WalSyncer;
use crate::raft::{ChannelCache, META_GROUP, Node, Raft, config};
use crate::raft::{Members, NetworkFactory};
use crate::rebuild::Rebuilds;
use crate::{Error, Result};
use openraft::async_runtime::WatchReceiver;

pub(super) fn fatal(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("raft: {e}"))
}

/// What opening a group needs; shared by the meta group and every volume group.
#[derive(Clone)]
pub(super) struct Opener {
    pub me: u64,
    pub snapshot_logs: u64,
    pub spool_dir: PathBuf,
    pub engine: Arc<dyn Engine>,
    pub syncer: WalSyncer,
    pub channels: ChannelCache,
    pub rebuilds: Arc<Rebuilds>,
}

impl Opener {
    /// Opens `group` over the engine, with its snapshot and log-purge requests served.
    pub async fn open(&self, group: u64, shared: Arc<Shared>) -> Result<Raft> {
        let pointers = Pointers::default();
        let log = LogStore::new(self.engine.clone(), group, self.syncer.clone())
            .with_pointers(pointers.clone());
        let (want_snapshot, mut snapshot_requests) = tokio::sync::mpsc::channel(1);
        let window = Arc::new(LogWindow::default());
        let sm = GroupStateMachine::open(self.engine.clone(), group, shared)
            .map_err(Error::Io)?
            .with_pointers(pointers)
            .with_snapshot_requests(want_snapshot, window.clone())
            .with_spool_dir(self.spool_dir.clone());
        let members = Members::default();
        let net = NetworkFactory {
            group,
            channels: self.channels.clone(),
            rebuilds: self.rebuilds.clone(),
            members: members.clone(),
        };
        let raft = Raft::new(
            self.me,
            config(group == META_GROUP, self.snapshot_logs),
            net,
            log,
            sm,
        )
        .await
        .map_err(fatal)?;
        members.follow(raft.server_metrics());
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
                    // A snapshot was built: what no member needs goes now (openraft's
                    // own purge keeps entries by count, 1 GiB of 1 MiB writes).
                    _ = window.built.notified() => {
                        let Some(snapshot) = window.take_snapshot() else { continue };
                        let (keep, held) = purge_policy(&trigger);
                        if let Some(upto) = window.purge_upto(snapshot, keep, held) {
                            purge_behind_snapshot(&trigger, group, upto).await;
                        }
                    }
                }
            }
        });
        Ok(raft)
    }
}

/// What this member keeps behind a snapshot: a leader keeps what a member lacks (within
/// `KEEP_BYTES`); a follower, which cannot know that, a small window.
fn purge_policy(raft: &Raft) -> (u64, Option<u64>) {
    let m = raft.metrics().borrow_watched().clone();
    match (m.state.is_leader(), &m.replication) {
        (true, Some(rep)) => {
            let held = rep
                .values()
                .map(|l| l.as_ref().map_or(0, |l| l.index()))
                .min()
                // No other member: nobody lacks anything.
                .unwrap_or(u64::MAX);
            (KEEP_BYTES, Some(held))
        }
        _ => (FOLLOWER_KEEP_BYTES, None),
    }
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

/// Volume groups with Raft state or applied state on disk.
fn on_disk(engine: &dyn Engine) -> Result<BTreeSet<u64>> {
    let mut out = BTreeSet::new();
    for cf in [Cf::RaftState, Cf::Meta] {
        for (key, _) in engine.scan(cf, &[], &[0xff; 16], usize::MAX)? {
            if let Some(prefix) = key.get(..8) {
                let group = u64::from_be_bytes(prefix.try_into().expect("8 bytes"));
                if group != META_GROUP {
                    out.insert(group);
                }
            }
        }
    }
    Ok(out)
}

/// Test hook (testkit builds only): `CAIRN_TEST_CRASH_AT=STEP:GROUP` kills the process
/// (SIGKILL, as a crash) when it reaches `STEP` for `GROUP`.
fn crash_point(step: &str, group: u64) {
    #[cfg(feature = "testkit")]
    if std::env::var("CAIRN_TEST_CRASH_AT").is_ok_and(|v| v == format!("{step}:{group}")) {
        tracing::warn!(step, group, "CAIRN_TEST_CRASH_AT: killing this process");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(feature = "testkit"))]
    let _ = (step, group);
}

/// How soon a reconcile pass that failed, or left groups undecided, is retried.
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// How often the groups are reconciled when the catalogue has not changed.
const CHECK_EVERY: Duration = Duration::from_secs(30);

/// The Raft groups this node runs: the meta group and its volume groups.
pub struct Groups {
    opener: Opener,
    meta: Arc<Meta>,
    running: RwLock<HashMap<u64, Raft>>,
    /// Groups placed here that failed to open, retried with backoff.
    failed: Failed,
    /// Groups that failed to open on peers, as their pings report them.
    peer_failed: PeerFailed,
    quiescer: Arc<Quiescer>,
}

impl Groups {
    pub(super) fn new(opener: Opener, meta: Arc<Meta>, quiet_after: Option<Duration>) -> Self {
        let quiescer = Arc::new(Quiescer::new(opener.me, quiet_after));
        Groups {
            opener,
            meta,
            running: RwLock::new(HashMap::new()),
            failed: Failed::default(),
            peer_failed: PeerFailed::default(),
            quiescer,
        }
    }

    /// Quiet groups and node liveness (`quiesce.rs`).
    pub fn quiescer(&self) -> &Arc<Quiescer> {
        &self.quiescer
    }

    /// Restarts `group`'s Raft timers if it was quiet; call before any I/O or membership
    /// change on it and after any Raft message for it.
    pub fn wake(&self, group: u64, raft: &Raft) {
        self.quiescer.wake(group, raft);
    }

    /// Restarts a quiet group's timers for an I/O here, unless its live leader is elsewhere
    /// (`Quiescer::wake_for_io`).
    pub fn wake_for_io(&self, group: u64, raft: &Raft) {
        self.quiescer.wake_for_io(group, raft);
    }

    /// The volume groups this node runs now.
    pub fn volumes(&self) -> Vec<(u64, Raft)> {
        let groups = self.running.read().expect("groups lock poisoned");
        groups.iter().map(|(id, r)| (*id, r.clone())).collect()
    }

    pub fn get(&self, group: u64) -> Option<Raft> {
        if group == META_GROUP {
            return Some(self.meta.raft().clone());
        }
        self.running
            .read()
            .expect("groups lock poisoned")
            .get(&group)
            .cloned()
    }

    /// Opens volume group `id` and, unless it joins as a replacement, initialises its
    /// membership from the catalogue when it has none. A group opened but not initialised
    /// is shut down again on error: nothing of a failed attempt keeps running.
    async fn open_volume(&self, id: u64, vol: &VolumeRecord, cat: &Catalog) -> Result<Raft> {
        let me = self.opener.me;
        let raft = self.opener.open(id, Shared::new()).await?;
        // A replacement (`repair.to`) joins as a learner its leader adds: it never
        // initialises a membership of its own.
        let joining = vol.repair.is_some_and(|r| r.to == me);
        let initialized = match raft.is_initialized().await {
            Ok(i) => i,
            Err(e) => {
                let _ = raft.shutdown().await;
                return Err(fatal(e));
            }
        };
        if !joining && !initialized {
            let members: BTreeMap<u64, Node> = vol
                .members
                .iter()
                .filter(|m| vol.repair.is_none_or(|r| r.to != **m))
                .filter_map(|m| self.meta.addr_of(cat, *m).map(|addr| (*m, Node { addr })))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(volume = %vol.name, group = id, error = %e, "group already initialised");
            }
        }
        Ok(raft)
    }

    /// Volume groups that failed to open here, and why (`failed.rs`).
    pub fn failed(&self) -> &Failed {
        &self.failed
    }

    /// Volume groups that failed to open on peers, from their pings (`failed.rs`).
    pub fn peer_failed(&self) -> &PeerFailed {
        &self.peer_failed
    }

    /// Starts groups this node should host and removes those it no longer should.
    /// `sweep`: also look for groups left on disk that the catalogue no longer places here (a
    /// scan of two column families). Returns whether such groups are still undecided (the
    /// catalogue was not fresh), so the next pass sweeps again.
    async fn reconcile(&self, sweep: bool) -> Result<bool> {
        let cat = self.meta.catalog();
        let me = self.opener.me;
        let mine: BTreeMap<u64, VolumeRecord> = cat
            .volumes
            .values()
            .filter(|v| v.kind == VolumeKind::Replicated && v.members.contains(&me))
            .map(|v| (v.id, v.clone()))
            .collect();
        let running: Vec<u64> = self
            .running
            .read()
            .expect("groups lock poisoned")
            .keys()
            .copied()
            .collect();
        // A group that left this node, or its volume, is no longer reported as failed here.
        self.failed.retain(|g| mine.contains_key(&g));
        let now = Instant::now();
        for (id, vol) in &mine {
            if running.contains(id) || self.failed.waiting(*id, now) {
                continue;
            }
            // One group that cannot open (e.g. corrupt state on disk) must not keep the
            // others down: it is reported, and retried with backoff.
            let raft = match self.open_volume(*id, vol, &cat).await {
                Ok(raft) => raft,
                Err(e) => {
                    let f = self.failed.record(*id, &vol.name, e.to_string(), now);
                    tracing::error!(
                        volume = %vol.name,
                        group = id,
                        error = %e,
                        attempts = f.attempts,
                        retry_in_s = f.retry_at.saturating_duration_since(now).as_secs(),
                        "volume group failed to open; the other groups carry on"
                    );
                    continue;
                }
            };
            match self.failed.clear(*id) {
                Some(f) => {
                    tracing::info!(volume = %vol.name, group = id, failed_attempts = f.attempts, "volume group started after failing to open")
                }
                None => tracing::info!(volume = %vol.name, group = id, "volume group started"),
            }
            self.running
                .write()
                .expect("groups lock poisoned")
                .insert(*id, raft);
        }
        for id in running {
            if mine.contains_key(&id) {
                continue;
            }
            let raft = self
                .running
                .write()
                .expect("groups lock poisoned")
                .remove(&id);
            if let Some(raft) = raft {
                let _ = raft.shutdown().await;
            }
            self.destroy(id)?;
        }
        // Groups left on disk by a run that ended before the catalogue moved them away
        // (a node back after its replicas were replaced, or volumes deleted meanwhile).
        if sweep && !self.stale(&cat)?.is_empty() {
            // The catalogue loaded at start may predate entries still to be re-applied
            // (apply is unlogged): decide on one that has every committed change.
            match self.meta.fresh().await {
                Ok(fresh) => {
                    for id in self.stale(&fresh)? {
                        tracing::info!(
                            group = id,
                            "removing a group left on disk (its volume left this node or a destroy was cut short)"
                        );
                        self.destroy(id)?;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "stale groups kept until the catalogue is fresh");
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Groups on disk that `cat` does not place here and that are not running. Only ids
    /// the catalogue has given out: a newer group it has not seen yet stays.
    fn stale(&self, cat: &Catalog) -> Result<Vec<u64>> {
        let me = self.opener.me;
        let running = self.running.read().expect("groups lock poisoned");
        Ok(on_disk(self.opener.engine.as_ref())?
            .into_iter()
            .filter(|g| *g < cat.next_volume_id && !running.contains_key(g))
            .filter(|g| {
                cat.volume_by_id(*g)
                    .is_none_or(|v| v.kind != VolumeKind::Replicated || !v.members.contains(&me))
            })
            .collect())
    }

    /// Deletes a group's spool files, data and applied state, then its log and Raft state
    /// (it no longer runs here). The Raft state goes last: a crash part-way leaves it, so
    /// the next start's sweep (`on_disk`) finds the group and finishes the destroy.
    fn destroy(&self, id: u64) -> Result<()> {
        crate::raft::snapshot::remove_spools(&self.opener.spool_dir, id);
        crate::raft::resume::discard(&self.opener.spool_dir, id);
        GroupStateMachine::destroy(self.opener.engine.as_ref(), id)?;
        crash_point("destroy", id);
        LogStore::destroy(self.opener.engine.as_ref(), id)?;
        tracing::info!(group = id, "volume group removed and its data deleted");
        // The space comes back only once compactions drop the deleted range: ask for them
        // now, so that a node short of space (`space.rs`) recovers when a volume goes.
        let engine = self.opener.engine.clone();
        tokio::task::spawn_blocking(move || {
            let (start, end) = (keys::group_start(id), keys::group_end(id));
            for cf in [Cf::Data, Cf::RaftLog] {
                if let Err(e) = engine.reclaim(cf, &start, &end) {
                    tracing::warn!(group = id, error = %e, "could not compact a deleted group's range");
                }
            }
            tracing::debug!(group = id, "deleted group's space reclaimed");
        });
        Ok(())
    }

    /// Reconciles on every catalogue change, forever; between changes, 2 s after a pass that
    /// failed or could not decide, when a failed group's backoff ends, else every 30 s. The
    /// sweep for groups left on disk runs at start, on changes and after such a pass: an idle
    /// node with many volumes neither copies its catalogue nor scans its column families
    /// every 2 s.
    pub(super) async fn reconcile_loop(self: Arc<Self>) {
        let mut changed = self.meta.changes();
        let mut sweep = true;
        loop {
            let again = self.reconcile(sweep).await.unwrap_or_else(|e| {
                tracing::warn!(node = self.opener.me, error = %e, "reconcile failed; will retry");
                true
            });
            // Between changes a pass finds nothing to do: the timer only retries a pass that
            // failed or could not decide (every 2 s), else checks once every 30 s.
            let mut wait = if again { RETRY_EVERY } else { CHECK_EVERY };
            // A group that failed to open is tried again when its backoff ends.
            if let Some(at) = self.failed.next_retry() {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
            sweep = tokio::select! {
                _ = changed.changed() => true,
                _ = tokio::time::sleep(wait) => again,
            };
        }
    }

    /// Shuts every group down, the meta group last.
    pub async fn shutdown(&self) {
        let groups: Vec<Raft> = self
            .running
            .write()
            .expect("groups lock poisoned")
            .drain()
            .map(|(_, r)| r)
            .collect();
        for r in groups {
            let _ = r.shutdown().await;
        }
        let _ = self.meta.raft().shutdown().await;
    }
}
