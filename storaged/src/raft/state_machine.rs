//! The state machine of one Raft group: block chunks for volume groups, the
//! catalogue for the meta group; applied state is written atomically with the data.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use tokio::sync::{mpsc, watch};

use super::dedup::{DedupTable, Verdict};
use super::log_store;
use super::log_window::LogWindow;
use super::snapshot::{PAGE_BYTES, Page, SpoolReader, remove_spools};
use super::{
    LogId, META_GROUP, Request, Response, Snapshot, SnapshotData, SnapshotMeta, StoredMembership,
    TypeConfig,
};
use super::{decode, encode, io_err};
use crate::chunks::Overlay;
use crate::engine::vlog::ValuePtr;
use crate::engine::{Batch, Cf, Engine, keys};
use crate::fence::{self, Access, Fence};
use crate::meta::catalog::Catalog;

const APPLIED: &str = "applied";
const CATALOG: &str = "catalog";
/// A volume group's applied fence (`fence.rs`), written atomically with the data.
const FENCE: &str = "fence";
/// Set (durably) while a snapshot is installed from a spool file: the group's state
/// is a mix until the install finishes, so opening the group finishes it first.
const INSTALLING: &str = "installing";

/// State visible outside the Raft worker: the catalogue (meta group) and a change signal.
pub struct Shared {
    pub catalog: RwLock<Catalog>,
    pub changed: watch::Sender<u64>,
}

impl Shared {
    pub fn new() -> Arc<Self> {
        Arc::new(Shared {
            catalog: RwLock::new(Catalog::default()),
            changed: watch::channel(0).0,
        })
    }

    pub fn catalog(&self) -> Catalog {
        self.catalog.read().expect("catalog lock poisoned").clone()
    }

    /// Reads the catalogue in place, without cloning it (for per-I/O lookups).
    pub fn with_catalog<R>(&self, f: impl FnOnce(&Catalog) -> R) -> R {
        f(&self.catalog.read().expect("catalog lock poisoned"))
    }
}

/// Bytes applied since the last snapshot after which the group asks for one, so the
/// log is purged while its entries are still in RocksDB's memtable (never flushed).
pub const SNAPSHOT_BYTES: u64 = 32 << 20;

#[derive(Clone)]
pub struct GroupStateMachine {
    engine: Arc<dyn Engine>,
    group: u64,
    shared: Arc<Shared>,
    since_snapshot: Arc<AtomicU64>,
    want_snapshot: Option<mpsc::Sender<()>>,
    /// Applied bytes by log index, to keep the log behind a snapshot to `KEEP_BYTES`.
    window: Option<Arc<LogWindow>>,
    /// Where snapshots are spooled before they are installed.
    spool_dir: PathBuf,
    /// A volume group's writers and their applied writes (`dedup.rs`), as persisted.
    dedup: Arc<Mutex<DedupTable>>,
    /// Value-log pointers of entries the group's log store appended (`log_store::Pointers`).
    pointers: log_store::Pointers,
    /// What the last apply left in `applied` and `fence`, so the next one need not read
    /// them back; taken by an apply (so one that fails leaves none), dropped by an install.
    last: Arc<Mutex<Option<Applied>>>,
}

/// A group's applied log id, membership and fence, as persisted.
type Applied = (Option<LogId>, StoredMembership, Option<Fence>);

/// The dedup table taken out of its lock for one apply (which awaits entries), put back
/// when the apply ends, however it ends.
struct TakenTable<'a> {
    slot: &'a Mutex<DedupTable>,
    table: DedupTable,
}

impl<'a> TakenTable<'a> {
    fn take(slot: &'a Mutex<DedupTable>) -> Self {
        let table = std::mem::take(&mut *slot.lock().expect("dedup table poisoned"));
        TakenTable { slot, table }
    }
}

impl Drop for TakenTable<'_> {
    fn drop(&mut self) {
        *self.slot.lock().expect("dedup table poisoned") = std::mem::take(&mut self.table);
    }
}

impl GroupStateMachine {
    /// Opens the group's state; the meta group also loads its catalogue.
    pub fn open(engine: Arc<dyn Engine>, group: u64, shared: Arc<Shared>) -> io::Result<Self> {
        if group == META_GROUP
            && let Some(b) = engine
                .get(Cf::Meta, &keys::named(group, CATALOG))
                .map_err(io_err)?
        {
            *shared.catalog.write().expect("catalog lock poisoned") = decode(&b)?;
        }
        let sm = GroupStateMachine {
            engine,
            group,
            shared,
            since_snapshot: Arc::new(AtomicU64::new(0)),
            want_snapshot: None,
            window: None,
            spool_dir: std::env::temp_dir().join("cairn-snapshots"),
            dedup: Arc::default(),
            pointers: log_store::Pointers::default(),
            last: Arc::default(),
        };
        if let Some(m) = sm
            .engine
            .get(Cf::Meta, &keys::named(group, INSTALLING))
            .map_err(io_err)?
        {
            let (last_log_id, membership, path): (Option<LogId>, StoredMembership, PathBuf) =
                decode(&m)?;
            tracing::warn!(group, path = %path.display(), "finishing a snapshot install a crash interrupted");
            sm.install_from(last_log_id, membership, &path)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "finishing the snapshot install a crash interrupted, from {}: {e}",
                            path.display()
                        ),
                    )
                })?;
        }
        if group != META_GROUP {
            *sm.dedup.lock().expect("dedup table poisoned") =
                DedupTable::load(sm.engine.as_ref(), group).map_err(io_err)?;
        }
        Ok(sm)
    }

    /// Spools snapshots under `dir`, and removes what a crash left there for this group.
    pub fn with_spool_dir(mut self, dir: PathBuf) -> Self {
        remove_spools(&dir, self.group);
        self.spool_dir = dir;
        self
    }

    /// Takes the value-log pointers of entries from `pointers`, which the group's log store
    /// fills (`LogStore::with_pointers`), instead of reading each back from `raft_log`.
    pub fn with_pointers(mut self, pointers: log_store::Pointers) -> Self {
        self.pointers = pointers;
        self
    }

    /// Asks for a snapshot on `tx` once `SNAPSHOT_BYTES` of writes are applied, and at
    /// each snapshot notes in `window` how far the log may be purged.
    pub fn with_snapshot_requests(mut self, tx: mpsc::Sender<()>, window: Arc<LogWindow>) -> Self {
        self.want_snapshot = Some(tx);
        self.window = Some(window);
        self
    }

    /// Where the value log holds the data of entry `index` (`len` bytes), made durable
    /// first if this node's own append is not yet (a leader applies what a quorum of
    /// others made durable): chunks must never point at bytes a crash could lose.
    fn durable_ptr(&self, index: u64, len: usize) -> io::Result<Option<ValuePtr>> {
        let Some(vl) = self.engine.value_log() else {
            return Ok(None);
        };
        match self
            .pointers
            .take(self.engine.as_ref(), self.group, index)?
        {
            Some(p) if p.len as usize == len => {
                vl.sync_upto(p).map_err(io_err)?;
                Ok(Some(p))
            }
            _ => Ok(None),
        }
    }

    fn count_applied(&self, bytes: u64) {
        let total = self.since_snapshot.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total >= SNAPSHOT_BYTES
            && let Some(tx) = &self.want_snapshot
        {
            // Full means a request is already pending.
            let _ = tx.try_send(());
        }
    }

    /// The log index `group` has applied, as the engine holds it now (`None`: nothing
    /// yet, or unreadable); for value log collection (`vlog_gc::AppliedIndex`).
    pub fn applied_index(engine: &dyn Engine, group: u64) -> Option<u64> {
        let b = engine.get(Cf::Meta, &keys::named(group, APPLIED)).ok()??;
        let (applied, _): (Option<LogId>, StoredMembership) = decode(&b).ok()?;
        applied.map(|l| l.index())
    }

    fn read_applied(&self) -> io::Result<(Option<LogId>, StoredMembership)> {
        match self
            .engine
            .get(Cf::Meta, &keys::named(self.group, APPLIED))
            .map_err(io_err)?
        {
            Some(b) => decode(&b),
            None => Ok((None, StoredMembership::default())),
        }
    }

    /// The fence a volume group has applied, if any; current as of the last apply (a
    /// leader reads it after a linearizable barrier to check a flush).
    pub fn applied_fence(engine: &dyn Engine, group: u64) -> crate::Result<Option<Fence>> {
        engine
            .get(Cf::Meta, &keys::named(group, FENCE))?
            .map(|b| decode(&b).map_err(crate::Error::Io))
            .transpose()
    }

    /// Test hook: marks `group` as a crash in the middle of a snapshot install leaves it,
    /// to be finished from the spool file at `path` when the group next opens.
    #[cfg(feature = "testkit")]
    pub fn mark_installing(engine: &dyn Engine, group: u64, path: &Path) -> io::Result<()> {
        let mut b = Batch::default();
        let marker = (
            None::<LogId>,
            StoredMembership::default(),
            path.to_path_buf(),
        );
        b.put(Cf::Meta, keys::named(group, INSTALLING), encode(&marker)?);
        engine.write(b, true).map_err(io_err)
    }

    /// Removes the group's data and applied state (after the volume is deleted).
    pub fn destroy(engine: &dyn Engine, group: u64) -> crate::Result<()> {
        let mut b = Batch::default();
        b.delete_range(
            Cf::Data,
            keys::group_start(group).to_vec(),
            keys::group_end(group),
        );
        b.delete(Cf::Meta, keys::named(group, APPLIED));
        b.delete(Cf::Meta, keys::named(group, FENCE));
        b.delete(Cf::Meta, keys::named(group, INSTALLING));
        DedupTable::delete_all(group, &mut b);
        engine.write(b, true)
    }

    /// The applied state as a snapshot; `None` if nothing is applied yet. Volume chunks
    /// are paged from a point-in-time view taken now (no apply runs meanwhile: this
    /// holds the state machine), so later applies do not stall behind the transfer.
    fn snapshot_now(&self) -> io::Result<Option<Snapshot>> {
        let (last_log_id, last_membership) = self.read_applied()?;
        if last_log_id.is_none() {
            return Ok(None);
        }
        let data = if self.group == META_GROUP {
            SnapshotData::Catalog(self.shared.catalog())
        } else {
            SnapshotData::Chunks {
                fence: Self::applied_fence(self.engine.as_ref(), self.group).map_err(io_err)?,
                // Only when there are writers: a node from before dedup can install the rest.
                writers: Some(self.dedup.lock().expect("dedup table poisoned").writers())
                    .filter(|w| !w.is_empty()),
                pages: self
                    .engine
                    .clone()
                    .scan_pages(
                        Cf::Data,
                        keys::group_start(self.group).to_vec(),
                        keys::group_end(self.group),
                        PAGE_BYTES,
                    )
                    .map_err(io_err)?,
                estimate: self.engine.approximate_size(
                    Cf::Data,
                    &keys::group_start(self.group),
                    &keys::group_end(self.group),
                ),
            }
        };
        Ok(Some(Snapshot {
            meta: SnapshotMeta {
                last_log_id,
                last_membership,
            },
            snapshot: data,
        }))
    }

    /// Replaces the group's state with a spooled snapshot's, then drops the install
    /// marker and the file. Idempotent: a crash part-way is finished by `open`.
    fn install_from(
        &self,
        last_log_id: Option<LogId>,
        membership: StoredMembership,
        path: &Path,
    ) -> io::Result<()> {
        self.last.lock().expect("applied state poisoned").take();
        let mut reader = SpoolReader::open(path)?;
        let mut batch = Batch::default();
        batch.delete_range(
            Cf::Data,
            keys::group_start(self.group).to_vec(),
            keys::group_end(self.group),
        );
        batch.delete(Cf::Meta, keys::named(self.group, FENCE));
        DedupTable::delete_all(self.group, &mut batch);
        let mut dedup = DedupTable::default();
        let mut pending = 0;
        let mut chunks = 0u64;
        let mut new_catalog = None;
        while let Some(page) = reader.next_page()? {
            match page {
                Page::Chunks(cs) if self.group != META_GROUP => {
                    for (idx, data) in cs {
                        pending += data.len();
                        chunks += 1;
                        batch.put(
                            Cf::Data,
                            keys::group_key(self.group, idx).to_vec(),
                            data.to_vec(),
                        );
                    }
                }
                Page::Fence(f) if self.group != META_GROUP => {
                    batch.put(Cf::Meta, keys::named(self.group, FENCE), encode(&f)?);
                }
                Page::Writers(ws) if self.group != META_GROUP => {
                    dedup = DedupTable::from_writers(ws);
                    dedup.write_changes(self.group, &mut batch)?;
                }
                Page::Catalog(c) if self.group == META_GROUP => {
                    batch.put(Cf::Meta, keys::named(self.group, CATALOG), encode(&c)?);
                    new_catalog = Some(c);
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("snapshot page of the wrong kind for group {}", self.group),
                    ));
                }
            }
            if pending >= PAGE_BYTES {
                self.engine
                    .write_unlogged(std::mem::take(&mut batch))
                    .map_err(io_err)?;
                pending = 0;
            }
        }
        batch.put(
            Cf::Meta,
            keys::named(self.group, APPLIED),
            encode(&(last_log_id, membership))?,
        );
        self.engine.write_unlogged(batch).map_err(io_err)?;
        // Durable before the marker goes: from then on nothing would redo the install.
        self.engine.persist().map_err(io_err)?;
        let mut done = Batch::default();
        done.delete(Cf::Meta, keys::named(self.group, INSTALLING));
        self.engine.write(done, true).map_err(io_err)?;
        if let Err(e) = std::fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(group = self.group, path = %path.display(), error = %e, "could not remove an installed snapshot spool");
        }
        let writers = dedup.len();
        *self.dedup.lock().expect("dedup table poisoned") = dedup;
        if let Some(c) = new_catalog {
            *self.shared.catalog.write().expect("catalog lock poisoned") = c;
            self.shared.changed.send_modify(|v| *v += 1);
        }
        tracing::info!(
            group = self.group,
            ?last_log_id,
            chunks,
            writers,
            "installed snapshot"
        );
        Ok(())
    }
}

/// Why the fence refuses a write or discard entry; `None` when it may apply (and for
/// every other entry). Entries from before fencing are generation 0, unfenced.
fn fenced(req: &Request, fence: Option<&Fence>) -> Option<String> {
    match req {
        Request::FencedWrite { generation, .. }
        | Request::FencedDiscard { generation, .. }
        | Request::TaggedWrite { generation, .. }
        | Request::TaggedDiscard { generation, .. } => {
            fence::check(fence, *generation, Access::Write).err()
        }
        _ => None,
    }
}

impl RaftSnapshotBuilder<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        // openraft only keeps the meta of a built snapshot, then purges the log up to it;
        // the data is produced on demand by `get_current_snapshot`. So building is just
        // making the applied state durable: read what is applied, then flush, so every
        // entry up to `last_log_id` has its effect on disk before its log entry goes.
        self.since_snapshot.store(0, Ordering::Relaxed);
        let (last_log_id, last_membership) = self.read_applied()?;
        self.engine.persist().map_err(io_err)?;
        if let (Some(w), Some(l)) = (&self.window, &last_log_id) {
            w.snapshot_at(l.index());
        }
        tracing::info!(group = self.group, ?last_log_id, "built snapshot");
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id,
                last_membership,
            },
            snapshot: SnapshotData::Empty,
        })
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        self.read_applied()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let known = self.last.lock().expect("applied state poisoned").take();
        let (mut last_applied, mut membership, mut fence) = match known {
            Some(k) => k,
            None => {
                let (applied, membership) = self.read_applied()?;
                let fence = if self.group == META_GROUP {
                    None
                } else {
                    Self::applied_fence(self.engine.as_ref(), self.group).map_err(io_err)?
                };
                (applied, membership, fence)
            }
        };
        let mut overlay = Overlay::default();
        let mut responses = Vec::new();
        let mut catalog_changed = false;
        let mut written = 0u64;
        let mut catalog = if self.group == META_GROUP {
            Some(self.shared.catalog())
        } else {
            None
        };
        let mut fence_changed = false;
        let mut dedup = TakenTable::take(&self.dedup);
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id();
            last_applied = Some(log_id);
            dedup.table.tick(log_id.index());
            let resp = match entry.payload {
                EntryPayload::Blank => Response::Done,
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(log_id), m);
                    Response::Done
                }
                EntryPayload::Normal(req) => {
                    let id = req.write_id();
                    let duplicate = id.is_some_and(|id| {
                        dedup.table.admit(id, log_id.index()) == Verdict::Duplicate
                    });
                    if duplicate {
                        tracing::info!(group = self.group, request = %req, "a resent write applied before: not applied again");
                        Response::Done
                    } else {
                        match (fenced(&req, fence.as_ref()), req) {
                            (Some(why), req) => {
                                tracing::warn!(group = self.group, request = %req, reason = %why, "write refused by the fence");
                                Response::Fenced(why)
                            }
                            (
                                None,
                                Request::Write { offset, data }
                                | Request::FencedWrite { offset, data, .. }
                                | Request::TaggedWrite { offset, data, .. },
                            ) => {
                                written += data.len() as u64;
                                let at = self.durable_ptr(log_id.index(), data.len())?;
                                overlay
                                    .write(self.engine.as_ref(), self.group, offset, &data, at)
                                    .map_err(io_err)?;
                                if let Some(id) = id {
                                    dedup.table.applied(id);
                                }
                                Response::Done
                            }
                            (
                                None,
                                Request::Discard { offset, len }
                                | Request::FencedDiscard { offset, len, .. }
                                | Request::TaggedDiscard { offset, len, .. },
                            ) => {
                                overlay
                                    .discard(self.engine.as_ref(), self.group, offset, len)
                                    .map_err(io_err)?;
                                if let Some(id) = id {
                                    dedup.table.applied(id);
                                }
                                Response::Done
                            }
                            (None, Request::Fence(f)) if self.group != META_GROUP => {
                                if f.supersedes(fence.as_ref()) {
                                    tracing::info!(group = self.group, generation = f.generation, holders = ?f.holders, "fence applied");
                                    fence = Some(f);
                                    fence_changed = true;
                                }
                                Response::Done
                            }
                            (None, Request::Fence(_)) => Response::Done,
                            (None, Request::Meta(cmd)) => match catalog.as_mut() {
                                Some(c) => {
                                    let r = c.apply(cmd);
                                    catalog_changed |= r.is_ok();
                                    Response::Meta(r)
                                }
                                None => Response::Done,
                            },
                        }
                    }
                }
            };
            if let Some(r) = responder {
                responses.push((r, resp));
            }
        }
        let mut batch = Batch::default();
        overlay.into_batch(self.group, &mut batch);
        batch.put(
            Cf::Meta,
            keys::named(self.group, APPLIED),
            encode(&(&last_applied, &membership))?,
        );
        if catalog_changed && let Some(c) = &catalog {
            batch.put(Cf::Meta, keys::named(self.group, CATALOG), encode(c)?);
        }
        if fence_changed && let Some(f) = &fence {
            batch.put(Cf::Meta, keys::named(self.group, FENCE), encode(f)?);
        }
        dedup.table.write_changes(self.group, &mut batch)?;
        drop(dedup);
        // Unlogged: the Raft log is the durable record, and a crash replays it from the
        // last persisted `applied` (written atomically with the data it covers).
        self.engine.write_unlogged(batch).map_err(io_err)?;
        *self.last.lock().expect("applied state poisoned") =
            Some((last_applied, membership, fence));
        if let (true, Some(c)) = (catalog_changed, catalog) {
            *self.shared.catalog.write().expect("catalog lock poisoned") = c;
            self.shared.changed.send_modify(|v| *v += 1);
        }
        for (r, resp) in responses {
            r.send(resp);
        }
        self.count_applied(written);
        if let (Some(w), Some(l)) = (&self.window, &last_applied) {
            w.applied(l.index(), written);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        // Spooled already when it came over the network; a local one is spooled here.
        let spool = snapshot.spool(&self.spool_dir, self.group).await?;
        let mut marker = Batch::default();
        marker.put(
            Cf::Meta,
            keys::named(self.group, INSTALLING),
            encode(&(
                meta.last_log_id,
                meta.last_membership.clone(),
                spool.path().to_path_buf(),
            ))?,
        );
        self.engine.write(marker, true).map_err(io_err)?;
        let path = spool.keep();
        self.install_from(meta.last_log_id, meta.last_membership.clone(), &path)
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        // Built on demand from the applied state: always at or after the last purge point.
        self.snapshot_now()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::StorageError;
    use openraft::testing::log::{StoreBuilder, Suite};

    use super::*;
    use crate::engine::MemEngine;
    #[cfg(feature = "rocks")]
    use crate::engine::RocksEngine;
    use crate::raft::dedup_apply_tests::apply_all;
    use crate::raft::log_store::LogStore;
    use crate::raft::wal_sync::WalSyncer;

    struct MemBuilder;
    #[cfg(feature = "rocks")]
    struct RocksBuilder;

    /// A log store and state machine of `group`; snapshots spool under `dir`.
    fn build(engine: Arc<dyn Engine>, group: u64, dir: &Path) -> (LogStore, GroupStateMachine) {
        let syncer = WalSyncer::start(engine.clone());
        let ls = LogStore::new(engine.clone(), group, syncer);
        let sm = GroupStateMachine::open(engine, group, Shared::new())
            .unwrap()
            .with_spool_dir(dir.join("snapshots"));
        (ls, sm)
    }

    impl StoreBuilder<TypeConfig, LogStore, GroupStateMachine, tempfile::TempDir> for MemBuilder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, GroupStateMachine), StorageError<TypeConfig>>
        {
            let dir = tempfile::tempdir().unwrap();
            let (l, s) = build(Arc::new(MemEngine::new()), 5, dir.path());
            Ok((dir, l, s))
        }
    }

    #[cfg(feature = "rocks")]
    impl StoreBuilder<TypeConfig, LogStore, GroupStateMachine, tempfile::TempDir> for RocksBuilder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, GroupStateMachine), StorageError<TypeConfig>>
        {
            let dir = tempfile::tempdir().unwrap();
            let engine = Arc::new(RocksEngine::open(&dir.path().join("db")).unwrap());
            // Use a non-zero group on a shared engine, as storaged does.
            let (l, s) = build(engine, 9, dir.path());
            Ok((dir, l, s))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_suite_on_mem_engine() {
        Suite::test_all(MemBuilder).await.unwrap();
    }

    #[cfg(feature = "rocks")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_suite_on_rocks_engine() {
        Suite::test_all(RocksBuilder).await.unwrap();
    }

    fn fence_to(generation: u64, holders: &[(&str, u64, bool)]) -> Fence {
        Fence {
            generation,
            holders: holders
                .iter()
                .map(|(node, generation, readonly)| crate::fence::Holder {
                    node: node.to_string(),
                    generation: *generation,
                    readonly: *readonly,
                })
                .collect(),
        }
    }

    fn write(byte: u8, generation: u64) -> Request {
        Request::FencedWrite {
            offset: 0,
            data: bytes::Bytes::from(vec![byte; 4096]),
            generation,
        }
    }

    /// The apply-time fence: only a publish in force writes, whichever node applies the
    /// log, and the fence travels with the group's state in a snapshot.
    #[tokio::test]
    async fn apply_refuses_writes_of_a_generation_not_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let group = 4;
        let chunk = |e: &Arc<dyn Engine>| e.get(Cf::Data, &keys::group_key(group, 0)).unwrap();
        let mut sm = GroupStateMachine::open(engine.clone(), group, Shared::new())
            .unwrap()
            .with_spool_dir(dir.path().join("spool"));
        // Unfenced (generation 0) writes apply; a generation the group never fenced does not.
        apply_all(&mut sm, 1, vec![write(1, 0), write(2, 5)]).await;
        assert_eq!(chunk(&engine), Some(vec![1; 4096]));
        // Published to a at 5: a writes. Then to b at 7: a is refused, b writes.
        let a = Request::Fence(fence_to(5, &[("a", 5, false)]));
        apply_all(&mut sm, 3, vec![a, write(3, 5)]).await;
        assert_eq!(chunk(&engine), Some(vec![3; 4096]));
        let b = Request::Fence(fence_to(7, &[("b", 7, false)]));
        let discard_a = Request::FencedDiscard {
            offset: 0,
            len: 4096,
            generation: 5,
        };
        apply_all(&mut sm, 5, vec![b, write(4, 5), discard_a, write(4, 0)]).await;
        assert_eq!(
            chunk(&engine),
            Some(vec![3; 4096]),
            "a's write and discard refused, and an unfenced write to a published volume"
        );
        // A fence that arrives late (older) changes nothing; an entry from before
        // fencing applies as unfenced.
        let late = Request::Fence(fence_to(6, &[("a", 6, false)]));
        apply_all(&mut sm, 9, vec![late, write(5, 7)]).await;
        assert_eq!(chunk(&engine), Some(vec![5; 4096]));
        let legacy = Request::Write {
            offset: 0,
            data: bytes::Bytes::from(vec![6; 4096]),
        };
        apply_all(&mut sm, 11, vec![legacy]).await;
        assert_eq!(chunk(&engine), Some(vec![6; 4096]));
        // A read-only publish: its writes are refused.
        let ro = fence_to(8, &[("c", 8, true)]);
        apply_all(&mut sm, 12, vec![Request::Fence(ro.clone()), write(7, 8)]).await;
        assert_eq!(chunk(&engine), Some(vec![6; 4096]));
        assert_eq!(
            GroupStateMachine::applied_fence(engine.as_ref(), group).unwrap(),
            Some(ro.clone())
        );

        // A replica installing the group's snapshot gets the fence with the data.
        let snap = sm.get_current_snapshot().await.unwrap().unwrap();
        let other: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let mut sm2 = GroupStateMachine::open(other.clone(), group, Shared::new())
            .unwrap()
            .with_spool_dir(dir.path().join("spool2"));
        sm2.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(
            GroupStateMachine::applied_fence(other.as_ref(), group).unwrap(),
            Some(ro)
        );
        assert_eq!(chunk(&other), Some(vec![6; 4096]));
        apply_all(&mut sm2, 14, vec![write(9, 7)]).await;
        assert_eq!(chunk(&other), Some(vec![6; 4096]), "b's generation is over");
    }

    /// A crash after the install marker was written, with the group's data half
    /// replaced: opening the group finishes the install from the spool file.
    #[cfg(feature = "rocks")]
    #[tokio::test]
    async fn an_interrupted_snapshot_install_is_finished_at_open() {
        use crate::raft::snapshot::{Page, SpoolWriter, spool_prefix};
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("snapshots");
        let group = 9;
        let chunk = |idx: u64| keys::group_key(group, idx).to_vec();
        let last = openraft::testing::log_id::<TypeConfig>(3, 1, 77);
        let path = {
            let engine: Arc<dyn Engine> =
                Arc::new(RocksEngine::open(&dir.path().join("db")).unwrap());
            // The old state: chunks 1 and 50.
            let mut b = Batch::default();
            b.put(Cf::Data, chunk(1), vec![0xaa; 4096]);
            b.put(Cf::Data, chunk(50), vec![0xbb; 4096]);
            engine.write(b, true).unwrap();
            // The snapshot: chunks 1 and 2, spooled.
            let mut w = SpoolWriter::create(&spool_dir, group).await.unwrap();
            let page = Page::Chunks(vec![
                (1, bytes::Bytes::from(vec![0x11; 4096])),
                (2, bytes::Bytes::from(vec![0x22; 4096])),
            ]);
            w.page(&encode(&page).unwrap()).await.unwrap();
            let path = w.finish().await.unwrap().keep();
            // The marker, then the crash part-way: chunk 1 replaced, 50 not yet gone.
            let mut b = Batch::default();
            b.put(
                Cf::Meta,
                keys::named(group, INSTALLING),
                encode(&(Some(last), StoredMembership::default(), path.clone())).unwrap(),
            );
            b.put(Cf::Data, chunk(1), vec![0x11; 4096]);
            engine.write(b, true).unwrap();
            path
        };
        // An orphan spool of the same group (a transfer cut by the crash) is cleared too.
        let orphan = spool_dir.join(format!("{}orphan.snap", spool_prefix(group)));
        std::fs::write(&orphan, b"partial").unwrap();

        let engine: Arc<dyn Engine> = Arc::new(RocksEngine::open(&dir.path().join("db")).unwrap());
        let mut sm = GroupStateMachine::open(engine.clone(), group, Shared::new())
            .unwrap()
            .with_spool_dir(spool_dir.clone());
        assert_eq!(
            engine.get(Cf::Data, &chunk(1)).unwrap(),
            Some(vec![0x11; 4096])
        );
        assert_eq!(
            engine.get(Cf::Data, &chunk(2)).unwrap(),
            Some(vec![0x22; 4096])
        );
        assert_eq!(engine.get(Cf::Data, &chunk(50)).unwrap(), None);
        assert_eq!(
            engine
                .get(Cf::Meta, &keys::named(group, INSTALLING))
                .unwrap(),
            None
        );
        assert_eq!(sm.applied_state().await.unwrap().0, Some(last));
        assert!(!path.exists(), "the installed spool is removed");
        assert!(!orphan.exists(), "an orphaned spool is removed");
    }
}
