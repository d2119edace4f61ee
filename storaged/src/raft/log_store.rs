//! Raft log storage for one group in the shared engine: entries in `raft_log` (their block
//! data in the value log), vote/committed/last-purged in `raft_state`; durable after the fsync.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};

use super::log_cache::{DEFAULT_BUDGET, LogCache};
use super::wal_sync::WalSyncer;
use super::{
    Entry, LogId, TypeConfig, Vote, decode, encode, encode_sized, entry_data, entry_data_mut,
    entry_size_hint, io_err,
};
use crate::engine::vlog::{self, ValueLog, ValuePtr};
use crate::engine::{Batch, Cf, Engine, keys};

#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn Engine>,
    group: u64,
    syncer: WalSyncer,
    cache: LogCache,
    pointers: Pointers,
}

/// Where the value log holds the data of the entries this process appended to one group's
/// log and has not yet applied, by log index: what `raft_log` holds for them, kept so
/// apply need not read it back (one RocksDB point read per write entry on every replica).
/// Shared by the group's log store (which fills it) and state machine (which takes from it);
/// an entry missing here (appended before a restart) is looked up in `raft_log`.
#[derive(Clone, Default)]
pub struct Pointers {
    inner: Arc<std::sync::Mutex<std::collections::BTreeMap<u64, ValuePtr>>>,
}

impl Pointers {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, ValuePtr>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn appended(&self, at: impl IntoIterator<Item = (u64, ValuePtr)>) {
        self.lock().extend(at);
    }

    /// Forgets entries after `index` (`None`: all), as the log does on a conflict.
    fn truncate_after(&self, index: Option<u64>) {
        let mut m = self.lock();
        match index {
            Some(i) => drop(m.split_off(&(i + 1))),
            None => m.clear(),
        }
    }

    /// Forgets entries up to and including `index`.
    fn purge(&self, index: u64) {
        let mut m = self.lock();
        *m = m.split_off(&(index + 1));
    }

    /// The pointer of entry `index` (each is taken once, by its apply), or, for an entry
    /// not appended by this process, what `raft_log` holds.
    pub fn take(
        &self,
        engine: &dyn Engine,
        group: u64,
        index: u64,
    ) -> io::Result<Option<ValuePtr>> {
        let known = {
            let mut m = self.lock();
            let known = m.remove(&index);
            // Entries below it were applied, or skipped by a snapshot install.
            if m.first_key_value().is_some_and(|(i, _)| *i < index) {
                *m = m.split_off(&index);
            }
            known
        };
        match known {
            Some(p) => Ok(Some(p)),
            None => stored_ptr(engine, group, index),
        }
    }
}

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

/// Entries as stored in `raft_log`: whole, or (writes, with a value log) their data
/// appended to the value log, in one write, and the rest of each entry after its pointer.
pub fn stored_values(
    engine: &dyn Engine,
    group: u64,
    entries: &[Entry],
) -> io::Result<Vec<Vec<u8>>> {
    let vl = engine.value_log();
    fn apart(with_log: bool, e: &Entry) -> Option<(u64, &bytes::Bytes)> {
        entry_data(e).filter(|(_, d)| with_log && !d.is_empty())
    }
    let apart = |e| apart(vl.is_some(), e);
    let records: Vec<(vlog::Origin, &[u8])> = entries
        .iter()
        .filter_map(|e| {
            let (offset, data) = apart(e)?;
            let origin = vlog::Origin {
                group,
                index: e.index(),
                offset,
            };
            Some((origin, &data[..]))
        })
        .collect();
    let mut ptrs = match vl {
        Some(vl) if !records.is_empty() => vl.append_all(&records).map_err(io_err)?,
        _ => Vec::new(),
    }
    .into_iter();
    entries
        .iter()
        .map(|e| match apart(e) {
            Some(_) => {
                let ptr = ptrs.next().expect("one pointer per record");
                let mut rest = e.clone();
                if let Some(d) = entry_data_mut(&mut rest) {
                    *d = bytes::Bytes::new();
                }
                Ok(vlog::log_value(ptr, &encode(&rest)?))
            }
            None => encode_sized(e, entry_size_hint(e)),
        })
        .collect()
}

/// An entry of `group` from its `raft_log` value, its data read back from the value log
/// (checked: the record must be whole and that entry's).
pub fn decode_stored(engine: &dyn Engine, group: u64, v: &[u8]) -> io::Result<Entry> {
    let Some((ptr, rest)) = vlog::split_log_value(v) else {
        return decode(v);
    };
    let vl = engine
        .value_log()
        .ok_or_else(|| io::Error::other("a log entry points into a value log this engine lacks"))?;
    let mut e: Entry = decode(rest)?;
    let data = vl.read_record(ptr, group, e.index()).map_err(io_err)?;
    if let Some(d) = entry_data_mut(&mut e) {
        *d = bytes::Bytes::from(data);
    }
    Ok(e)
}

/// After a crash, for every group with log entries, drops the log's tail from the first
/// entry whose data did not reach the value log whole, and a `committed` mark that pointed
/// into what was dropped. Such an entry was never reported durable here (an append completes
/// only after both the value log and the WAL are synced), so no quorum counted this node's
/// copy; but RocksDB's WAL may have been synced with it in for another reason (a vote). Runs
/// at start, before any group opens or appends: only entries past the previous run's durable
/// position are read (`ValueLog::previous_mark`). Returns how many groups were cut.
pub fn recover_torn_tails(engine: &dyn Engine) -> crate::Result<usize> {
    let Some(vl) = engine.value_log() else {
        return Ok(0);
    };
    let mark = vl.previous_mark();
    let mut cut = 0;
    let mut cursor = keys::group_start(0).to_vec();
    let last = keys::group_end(u64::MAX);
    while let Some((k, _)) = engine.scan(Cf::RaftLog, &cursor, &last, 1)?.pop() {
        let group = u64::from_be_bytes(k[..8].try_into().expect("16-byte log keys"));
        if let Some(from) = torn_from(engine, vl, mark, group)? {
            tracing::warn!(
                group,
                from,
                "dropping log entries whose data was not durable at the crash"
            );
            let mut b = Batch::default();
            b.delete_range(
                Cf::RaftLog,
                keys::group_key(group, from).to_vec(),
                keys::group_end(group),
            );
            let committed = engine.get(Cf::RaftState, &keys::named(group, COMMITTED))?;
            let committed: Option<LogId> = committed
                .map(|b| decode::<Option<LogId>>(&b))
                .transpose()?
                .flatten();
            if committed.is_some_and(|c| c.index() >= from) {
                // Known again from the leader; a mark past the log's end would stop the
                // group from opening.
                b.delete(Cf::RaftState, keys::named(group, COMMITTED));
            }
            engine.write(b, true)?;
            cut += 1;
        }
        if group == u64::MAX {
            break;
        }
        cursor = keys::group_start(group + 1).to_vec();
    }
    Ok(cut)
}

/// The first index of `group`'s log whose value log record is not whole, walking back
/// from the end past entries without data (they may follow a torn one) until an entry
/// whose data lies before `mark`, or a write stored whole (from a build before the value
/// log: durable before any mark), or the log's start.
fn torn_from(
    engine: &dyn Engine,
    vl: &ValueLog,
    mark: u64,
    group: u64,
) -> crate::Result<Option<u64>> {
    let start = keys::group_start(group);
    let mut end = keys::group_end(group);
    let mut torn = None;
    while let Some((k, v)) = engine.last_in_range(Cf::RaftLog, &start, &end)? {
        let index = keys::suffix_of(&k);
        match vlog::split_log_value(&v) {
            Some((ptr, _)) if ValueLog::before(ptr, mark) => break,
            Some((ptr, _)) => {
                if !vl.check(ptr, group, index) {
                    torn = Some(index);
                }
            }
            None => {
                let whole_write = decode::<Entry>(&v)
                    .ok()
                    .as_ref()
                    .and_then(entry_data)
                    .is_some_and(|(_, d)| !d.is_empty());
                if whole_write {
                    break;
                }
            }
        }
        end = k;
    }
    Ok(torn)
}

/// Where the data of entry `index` of `group` lies in the value log, if it does.
pub fn stored_ptr(engine: &dyn Engine, group: u64, index: u64) -> io::Result<Option<ValuePtr>> {
    let v = engine
        .get_raw(Cf::RaftLog, &keys::group_key(group, index))
        .map_err(io_err)?;
    Ok(v.as_deref().and_then(vlog::split_log_value).map(|(p, _)| p))
}

impl LogStore {
    pub fn new(engine: Arc<dyn Engine>, group: u64, syncer: WalSyncer) -> Self {
        LogStore {
            engine,
            group,
            syncer,
            cache: LogCache::new(DEFAULT_BUDGET),
            pointers: Pointers::default(),
        }
    }

    /// Records the value-log pointers of appended entries in `pointers` (shared with the
    /// group's state machine, `GroupStateMachine::with_pointers`).
    pub fn with_pointers(mut self, pointers: Pointers) -> Self {
        self.pointers = pointers;
        self
    }

    fn get_state<T: for<'de> serde::Deserialize<'de>>(&self, name: &str) -> io::Result<Option<T>> {
        match self
            .engine
            .get(Cf::RaftState, &keys::named(self.group, name))
            .map_err(io_err)?
        {
            Some(b) => Ok(Some(decode(&b)?)),
            None => Ok(None),
        }
    }

    fn put_state<T: serde::Serialize>(&self, name: &str, v: &T, sync: bool) -> io::Result<()> {
        let mut b = Batch::default();
        b.put(Cf::RaftState, keys::named(self.group, name), encode(v)?);
        self.engine.write(b, sync).map_err(io_err)
    }

    /// Whether `group` holds any Raft state here (a log entry, a vote, a commit or purge
    /// mark): read before the group's Raft runs, to tell an empty node from one that made promises.
    pub fn holds_state(engine: &dyn Engine, group: u64) -> crate::Result<bool> {
        let logged = engine
            .last_in_range(
                Cf::RaftLog,
                &keys::group_start(group),
                &keys::group_end(group),
            )?
            .is_some();
        if logged {
            return Ok(true);
        }
        for name in [VOTE, COMMITTED, PURGED] {
            if engine
                .get(Cf::RaftState, &keys::named(group, name))?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes every trace of this group's log and Raft state.
    pub fn destroy(engine: &dyn Engine, group: u64) -> crate::Result<()> {
        let mut b = Batch::default();
        b.delete_range(
            Cf::RaftLog,
            keys::group_start(group).to_vec(),
            keys::group_end(group),
        );
        for name in [VOTE, COMMITTED, PURGED] {
            b.delete(Cf::RaftState, keys::named(group, name));
        }
        engine.write(b, true)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x + 1,
            Bound::Unbounded => 0,
        };
        let end_index = match range.end_bound() {
            Bound::Included(x) => Some(x + 1),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        if let Some(hit) = end_index.and_then(|end| self.cache.get(start, end)) {
            return Ok(hit);
        }
        let end = match end_index {
            Some(e) => keys::group_key(self.group, e).to_vec(),
            None => keys::group_end(self.group),
        };
        let kvs = self
            .engine
            .scan(
                Cf::RaftLog,
                &keys::group_key(self.group, start),
                &end,
                usize::MAX,
            )
            .map_err(io_err)?;
        kvs.iter()
            .map(|(_, v)| decode_stored(self.engine.as_ref(), self.group, v))
            .collect()
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.get_state(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last = self
            .engine
            .last_in_range(
                Cf::RaftLog,
                &keys::group_start(self.group),
                &keys::group_end(self.group),
            )
            .map_err(io_err)?;
        let last_purged_log_id: Option<LogId> = self.get_state(PURGED)?;
        let last_log_id = match last {
            Some((_, v)) => Some(decode_stored(self.engine.as_ref(), self.group, &v)?.log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        // Durable before returning: a vote must never be forgotten.
        self.put_state(VOTE, vote, true)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        self.put_state(COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.get_state::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut b = Batch::default();
        let values = stored_values(self.engine.as_ref(), self.group, &entries)?;
        self.pointers.appended(
            entries
                .iter()
                .zip(&values)
                .filter_map(|(e, v)| vlog::split_log_value(v).map(|(p, _)| (e.index(), p))),
        );
        for (e, v) in entries.iter().zip(values) {
            b.put(
                Cf::RaftLog,
                keys::group_key(self.group, e.index()).to_vec(),
                v,
            );
        }
        // Readable on return; durable when the shared syncer's fsync completes.
        self.engine.write(b, false).map_err(io_err)?;
        self.cache.append(&entries);
        self.syncer.after_sync(callback);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        self.cache
            .truncate_after(last_log_id.as_ref().map(|l| l.index()));
        self.pointers
            .truncate_after(last_log_id.as_ref().map(|l| l.index()));
        let from = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        let mut b = Batch::default();
        b.delete_range(
            Cf::RaftLog,
            keys::group_key(self.group, from).to_vec(),
            keys::group_end(self.group),
        );
        self.engine.write(b, false).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        self.cache.purge(log_id.index());
        self.pointers.purge(log_id.index());
        // Record last-purged first: entries at or before it are ignored from then on.
        self.put_state(PURGED, &log_id, false)?;
        let mut b = Batch::default();
        b.delete_range(
            Cf::RaftLog,
            keys::group_start(self.group).to_vec(),
            keys::group_key(self.group, log_id.index() + 1).to_vec(),
        );
        self.engine.write(b, false).map_err(io_err)
    }
}

#[cfg(all(test, feature = "rocks"))]
mod tests {
    use super::*;
    use crate::engine::RocksEngine;
    use crate::raft::Request;

    fn write_entry(index: u64) -> Entry {
        let id = openraft::testing::log_id::<TypeConfig>(1, 1, index);
        let data = bytes::Bytes::from(vec![index as u8; 4096]);
        Entry::new_normal(id, Request::write(index * 4096, data, 0, None))
    }

    /// Apply points chunks at what this process's log store appended, without reading
    /// `raft_log` back: it still does when `raft_log` lost the entry's value behind the
    /// store's back; an entry replaced after a conflict is applied with its new data.
    #[tokio::test]
    async fn apply_takes_the_pointers_the_log_store_appended() {
        use crate::raft::dedup_apply_tests::apply_all;
        use crate::raft::state_machine::{GroupStateMachine, Shared};
        use crate::raft::wal_sync::WalSyncer;
        let dir = tempfile::tempdir().unwrap();
        let engine: Arc<dyn Engine> = Arc::new(RocksEngine::open(&dir.path().join("db")).unwrap());
        let (group, pointers) = (7, Pointers::default());
        let syncer = WalSyncer::start(engine.clone());
        let mut ls = LogStore::new(engine.clone(), group, syncer).with_pointers(pointers.clone());
        let mut sm = GroupStateMachine::open(engine.clone(), group, Shared::new())
            .unwrap()
            .with_spool_dir(dir.path().join("spool"))
            .with_pointers(pointers);
        let payload = |e: &Entry| match &e.payload {
            openraft::EntryPayload::Normal(r) => r.clone(),
            _ => unreachable!("write entries"),
        };
        let (one, two) = (write_entry(1), write_entry(2));
        ls.append(vec![one.clone(), two.clone()], IOFlushed::noop())
            .await
            .unwrap();
        let mut b = Batch::default();
        b.delete(Cf::RaftLog, keys::group_key(group, 1).to_vec());
        engine.write(b, false).unwrap();
        apply_all(&mut sm, 1, vec![payload(&one)]).await;
        let chunk = |idx: u64| {
            engine
                .get_raw(Cf::Data, &keys::group_key(group, idx))
                .unwrap()
        };
        assert_eq!(
            chunk(1).map(|v| v.len()),
            Some(vlog::CHUNK_PTR_LEN),
            "entry 1's chunk points into the value log"
        );
        // A new leader's entry 2 replaces ours: applied with its own data.
        ls.truncate_after(Some(one.log_id())).await.unwrap();
        let id = openraft::testing::log_id::<TypeConfig>(2, 1, 2);
        let other = Entry::new_normal(
            id,
            Request::write(2 * 4096, bytes::Bytes::from(vec![0xee; 4096]), 0, None),
        );
        ls.append(vec![other.clone()], IOFlushed::noop())
            .await
            .unwrap();
        apply_all(&mut sm, 2, vec![payload(&other)]).await;
        assert_eq!(chunk(2).map(|v| v.len()), Some(vlog::CHUNK_PTR_LEN));
        assert_eq!(
            crate::chunks::read(engine.as_ref(), group, 4096, 2 * 4096).unwrap(),
            [vec![1u8; 4096], vec![0xee; 4096]].concat()
        );
    }

    /// An entry whose record is not whole is cut with everything after it (an entry
    /// without data included), and so is a `committed` mark that pointed past the cut;
    /// entries before it, and other groups, are kept.
    #[test]
    fn a_torn_tail_is_cut_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let e = RocksEngine::open(&dir.path().join("db")).unwrap();
        let mut entries: Vec<Entry> = (1..=4).map(write_entry).collect();
        entries.push(Entry::new_normal(
            openraft::testing::log_id::<TypeConfig>(1, 1, 5),
            Request::discard(0, 4096, 0, None),
        ));
        let values = stored_values(&e, 7, &entries).unwrap();
        let other = stored_values(&e, 8, &[write_entry(1)]).unwrap();
        let mut b = Batch::default();
        for (i, v) in values.into_iter().enumerate() {
            let v = if i == 2 {
                // Entry 3's pointer names entry 2's record: not that entry's, so not whole.
                let (p, rest) = vlog::split_log_value(&v).unwrap();
                let p2 = ValuePtr {
                    off: p.off - (vlog::HEADER as u32 + 4096),
                    ..p
                };
                vlog::log_value(p2, rest)
            } else {
                v
            };
            b.put(Cf::RaftLog, keys::group_key(7, i as u64 + 1).to_vec(), v);
        }
        b.put(
            Cf::RaftLog,
            keys::group_key(8, 1).to_vec(),
            other.into_iter().next().unwrap(),
        );
        let committed = Some(openraft::testing::log_id::<TypeConfig>(1, 1, 4));
        b.put(
            Cf::RaftState,
            keys::named(7, COMMITTED),
            encode(&committed).unwrap(),
        );
        e.write(b, true).unwrap();
        e.value_log().unwrap().sync().unwrap();

        assert_eq!(recover_torn_tails(&e).unwrap(), 1);
        let left = |g| {
            e.scan(Cf::RaftLog, &keys::group_start(g), &keys::group_end(g), 100)
                .unwrap()
                .len()
        };
        assert_eq!(left(7), 2, "entries 1 and 2 kept, 3 to 5 cut");
        assert_eq!(left(8), 1);
        assert_eq!(
            e.get(Cf::RaftState, &keys::named(7, COMMITTED)).unwrap(),
            None
        );
        let kept = e.get(Cf::RaftLog, &keys::group_key(7, 2)).unwrap().unwrap();
        let entry = decode_stored(&e, 7, &kept).unwrap();
        assert_eq!(entry_data(&entry).unwrap().1[..], vec![2u8; 4096][..]);
        assert_eq!(recover_torn_tails(&e).unwrap(), 0, "nothing more to cut");
    }
}
