//! The state machine of one Raft group: block chunks for volume groups, the
//! catalogue for the meta group; applied state is written atomically with the data.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::{
    LogId, META_GROUP, Request, Response, Snapshot, SnapshotData, SnapshotMeta, StoredMembership,
    TypeConfig,
};
use super::{decode, encode, io_err};
use crate::engine::{Batch, Cf, Engine, keys};
use crate::meta::catalog::Catalog;
use crate::volume::blocks::Overlay;

const APPLIED: &str = "applied";
const CATALOG: &str = "catalog";

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

#[derive(Serialize, Deserialize)]
enum SnapshotPayload {
    /// (chunk index, contents); `Bytes` serialises as one byte string, not a sequence.
    Volume(Vec<(u64, bytes::Bytes)>),
    Meta(Catalog),
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
        Ok(GroupStateMachine {
            engine,
            group,
            shared,
            since_snapshot: Arc::new(AtomicU64::new(0)),
            want_snapshot: None,
        })
    }

    /// Asks for a snapshot on `tx` once `SNAPSHOT_BYTES` of writes are applied.
    pub fn with_snapshot_requests(mut self, tx: mpsc::Sender<()>) -> Self {
        self.want_snapshot = Some(tx);
        self
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

    /// Removes the group's data and applied state (after the volume is deleted).
    pub fn destroy(engine: &dyn Engine, group: u64) -> crate::Result<()> {
        let mut b = Batch::default();
        b.delete_range(
            Cf::Data,
            keys::group_start(group).to_vec(),
            keys::group_end(group),
        );
        b.delete(Cf::Meta, keys::named(group, APPLIED));
        engine.write(b, true)
    }

    /// The applied state as a snapshot; `None` if nothing is applied yet.
    fn snapshot_now(&self) -> io::Result<Option<Snapshot>> {
        let (last_log_id, last_membership) = self.read_applied()?;
        if last_log_id.is_none() {
            return Ok(None);
        }
        let payload = if self.group == META_GROUP {
            SnapshotPayload::Meta(self.shared.catalog())
        } else {
            let kvs = self
                .engine
                .scan(
                    Cf::Data,
                    &keys::group_start(self.group),
                    &keys::group_end(self.group),
                    usize::MAX,
                )
                .map_err(io_err)?;
            SnapshotPayload::Volume(
                kvs.into_iter()
                    .map(|(k, v)| (keys::suffix_of(&k), bytes::Bytes::from(v)))
                    .collect(),
            )
        };
        Ok(Some(Snapshot {
            meta: SnapshotMeta {
                last_log_id,
                last_membership,
            },
            snapshot: io::Cursor::new(encode(&payload)?),
        }))
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
        tracing::info!(group = self.group, ?last_log_id, "built snapshot");
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id,
                last_membership,
            },
            snapshot: io::Cursor::new(Vec::new()),
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
        let (mut last_applied, mut membership) = self.read_applied()?;
        let mut overlay = Overlay::default();
        let mut responses = Vec::new();
        let mut catalog_changed = false;
        let mut written = 0u64;
        let mut catalog = if self.group == META_GROUP {
            Some(self.shared.catalog())
        } else {
            None
        };
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id();
            last_applied = Some(log_id);
            let resp = match entry.payload {
                EntryPayload::Blank => Response::Done,
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(log_id), m);
                    Response::Done
                }
                EntryPayload::Normal(req) => match req {
                    Request::Write { offset, data } => {
                        written += data.len() as u64;
                        overlay
                            .write(self.engine.as_ref(), self.group, offset, &data)
                            .map_err(io_err)?;
                        Response::Done
                    }
                    Request::Discard { offset, len } => {
                        overlay
                            .discard(self.engine.as_ref(), self.group, offset, len)
                            .map_err(io_err)?;
                        Response::Done
                    }
                    Request::Meta(cmd) => match catalog.as_mut() {
                        Some(c) => {
                            let r = c.apply(cmd);
                            catalog_changed |= r.is_ok();
                            Response::Meta(r)
                        }
                        None => Response::Done,
                    },
                },
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
            encode(&(last_applied, membership))?,
        );
        if catalog_changed && let Some(c) = &catalog {
            batch.put(Cf::Meta, keys::named(self.group, CATALOG), encode(c)?);
        }
        // Unlogged: the Raft log is the durable record, and a crash replays it from the
        // last persisted `applied` (written atomically with the data it covers).
        self.engine.write_unlogged(batch).map_err(io_err)?;
        if let (true, Some(c)) = (catalog_changed, catalog) {
            *self.shared.catalog.write().expect("catalog lock poisoned") = c;
            self.shared.changed.send_modify(|v| *v += 1);
        }
        for (r, resp) in responses {
            r.send(resp);
        }
        self.count_applied(written);
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
        let payload: SnapshotPayload = decode(snapshot.get_ref())?;
        let mut batch = Batch::default();
        let mut new_catalog = None;
        match payload {
            SnapshotPayload::Volume(chunks) => {
                batch.delete_range(
                    Cf::Data,
                    keys::group_start(self.group).to_vec(),
                    keys::group_end(self.group),
                );
                for (idx, data) in chunks {
                    batch.put(
                        Cf::Data,
                        keys::group_key(self.group, idx).to_vec(),
                        data.to_vec(),
                    );
                }
            }
            SnapshotPayload::Meta(c) => {
                batch.put(Cf::Meta, keys::named(self.group, CATALOG), encode(&c)?);
                new_catalog = Some(c);
            }
        }
        batch.put(
            Cf::Meta,
            keys::named(self.group, APPLIED),
            encode(&(meta.last_log_id, meta.last_membership.clone()))?,
        );
        self.engine.write(batch, true).map_err(io_err)?;
        if let Some(c) = new_catalog {
            *self.shared.catalog.write().expect("catalog lock poisoned") = c;
            self.shared.changed.send_modify(|v| *v += 1);
        }
        tracing::info!(group = self.group, last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
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
    use crate::raft::log_store::LogStore;
    use crate::raft::wal_sync::WalSyncer;

    struct MemBuilder;
    #[cfg(feature = "rocks")]
    struct RocksBuilder;

    fn build(engine: Arc<dyn Engine>, group: u64) -> (LogStore, GroupStateMachine) {
        let syncer = WalSyncer::start(engine.clone());
        let ls = LogStore::new(engine.clone(), group, syncer);
        let sm = GroupStateMachine::open(engine, group, Shared::new()).unwrap();
        (ls, sm)
    }

    impl StoreBuilder<TypeConfig, LogStore, GroupStateMachine, ()> for MemBuilder {
        async fn build(
            &self,
        ) -> Result<((), LogStore, GroupStateMachine), StorageError<TypeConfig>> {
            let (l, s) = build(Arc::new(MemEngine::new()), 5);
            Ok(((), l, s))
        }
    }

    #[cfg(feature = "rocks")]
    impl StoreBuilder<TypeConfig, LogStore, GroupStateMachine, tempfile::TempDir> for RocksBuilder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, GroupStateMachine), StorageError<TypeConfig>>
        {
            let dir = tempfile::tempdir().unwrap();
            let engine = Arc::new(RocksEngine::open(dir.path()).unwrap());
            // Use a non-zero group on a shared engine, as storaged does.
            let (l, s) = build(engine, 9);
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
}
