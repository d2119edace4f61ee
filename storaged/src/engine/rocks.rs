//! RocksDB engine: two databases per node, the Raft log and vote in a logged one whose
//! WAL files are recycled, applied state in another that apply writes without the WAL.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rocksdb::{
    Cache, ColumnFamilyDescriptor, DB, DBCompressionType, Direction, FlushOptions, IteratorMode,
    Options, ReadOptions, WriteBatch, WriteOptions,
};

use super::vlog::ValueLog;
use super::{Batch, Cf, Engine, Kv, Op, Pages, send_pages};
use crate::{Error, Result};

/// Column families of the logged (Raft log) database.
const LOG_CFS: [Cf; 2] = [Cf::RaftLog, Cf::RaftState];
/// Column families of the state database, written without the WAL by apply.
const STATE_CFS: [Cf; 2] = [Cf::Data, Cf::Meta];
/// WAL files kept for reuse in the log database.
const RECYCLED_WALS: usize = 4;
/// Memtable of the Raft log; each WAL file of the log database is about this big.
const LOG_MEMTABLE_BYTES: usize = 64 << 20;
/// Live WAL of the log database past which RocksDB flushes the column families that pin
/// the oldest file (`raft_state`, a few bytes that would otherwise never flush). Unbounded
/// (RocksDB's default is 4 × the memtables), the WAL grew past 1 GiB of ever-new files,
/// and writing fresh page-cache pages costs 50× overwriting cached ones on this VM
/// (`dd` of 1 GiB: 5.8 s into a new file, 0.1 s over a cached one), pages cold for a minute
/// being reclaimed. Kept small, the WAL cycles through the same few hundred MiB of hot
/// pages: 3 volumes written at once went from 12.6–22.9 s to 5.4–7.8 s per round.
const LOG_WAL_BYTES: u64 = 160 << 20;

/// Why two databases: RocksDB refuses `disableWAL` writes (how apply writes) once WAL
/// files are recycled, and recycling is what makes a group-commit fdatasync cheap (a
/// reused, already sized file needs no size update in the journal). Apart, the log's
/// memtable also no longer flushes whenever `data` does (atomic flush). Batches never
/// span the two (the log store and the state machine own disjoint column families);
/// `write` refuses one that does.
pub struct RocksEngine {
    log: DB,
    state: DB,
    /// A logged, unsynced write went to the state database since its WAL was last synced.
    state_wal_dirty: AtomicBool,
    /// Whether blob GC is on for `data` now (see `blob_gc_wanted`).
    blob_gc: AtomicBool,
    /// Block payloads, written once (`<data-dir>/vlog`, decision 053).
    vlog: ValueLog,
    /// Held by every write of `data` (of `raft_log`) and by `swap`, so a collector's
    /// compare-and-swap of a pointer never overwrites a newer apply (append).
    data_writes: Mutex<()>,
    log_writes: Mutex<()>,
}

/// Garbage share of the live blob bytes at which blob GC is switched on, and below which
/// it is switched off again: overwritten and deleted chunks are reclaimed once they
/// are a third of what is stored, and data that is merely old is not rewritten.
const BLOB_GC_ON: f64 = 0.33;
const BLOB_GC_OFF: f64 = 0.15;

/// Whether blob GC should run, given the live blob bytes, the garbage among them, and
/// whether it runs now (hysteresis between `BLOB_GC_OFF` and `BLOB_GC_ON`).
pub fn blob_gc_wanted(live: u64, garbage: u64, on: bool) -> bool {
    if live == 0 {
        return false;
    }
    let share = garbage as f64 / live as f64;
    if on {
        share > BLOB_GC_OFF
    } else {
        share >= BLOB_GC_ON
    }
}

/// Memory for recently written and read block chunks, shared by every engine in the
/// process, unless `set_blob_cache_bytes` says otherwise (`storaged --cache-size`, whose
/// help states this default). Flushes put what they write in it, so reads of recent
/// writes stay off disk even though flushes bypass the page cache.
const BLOB_CACHE_BYTES: usize = 256 << 20;

static BLOB_CACHE: OnceLock<Cache> = OnceLock::new();

fn blob_cache() -> &'static Cache {
    BLOB_CACHE.get_or_init(|| Cache::new_lru_cache(BLOB_CACHE_BYTES))
}

/// Sizes the process's blob cache; only before the first engine opens (`false` after).
pub fn set_blob_cache_bytes(bytes: usize) -> bool {
    BLOB_CACHE.set(Cache::new_lru_cache(bytes)).is_ok()
}

fn cf_options(cf: Cf) -> Options {
    let mut o = Options::default();
    match cf {
        Cf::Data => {
            // Block payloads: usually filesystem data that is already dense or
            // encrypted; compression costs CPU on every flush and read for little gain.
            o.set_write_buffer_size(64 << 20);
            o.set_compression_type(DBCompressionType::None);
            o.set_enable_blob_files(true);
            o.set_min_blob_size(1024);
            o.set_blob_cache(blob_cache());
            // Blob GC relocates every live blob of the oldest blob files that a
            // compaction meets, garbage or not: always on, it rewrote about a quarter of
            // all stored data at each compaction. It is switched on only while there is
            // garbage to reclaim (`tune_blob_gc`); whole-garbage files go without it.
            o.set_enable_blob_gc(false);
            // While on: the oldest half of the blob files are relocated, and compactions
            // are forced for them once half their bytes are garbage.
            o.set_blob_gc_age_cutoff(0.5);
            o.set_blob_gc_force_threshold(0.5);
        }
        Cf::RaftLog => {
            // Entries are short-lived: compressing them only costs CPU. The memtable
            // is twice what a group applies between snapshots (32 MiB), so entries of
            // small writes are mostly purged before a flush would write them out again;
            // it is also what bounds the WAL's footprint (see `LOG_WAL_BYTES`).
            o.set_write_buffer_size(LOG_MEMTABLE_BYTES);
            o.set_compression_type(DBCompressionType::None);
            // Entries that outlive the memtable (the window kept after a snapshot is
            // 1024 entries: up to 1 GiB of 1 MiB writes) are flushed once, into blob
            // files, so compaction moves only keys: with values inline it rewrote the
            // kept log again and again (hundreds of MB per compaction, most of the CPU
            // under sustained writes). The log is purged in order, so whole blob files
            // become garbage and are deleted without blob GC.
            o.set_enable_blob_files(true);
            o.set_min_blob_size(1024);
            o.set_blob_file_size(64 << 20);
        }
        Cf::RaftState | Cf::Meta => {}
    }
    if matches!(cf, Cf::Data | Cf::Meta) {
        // Each snapshot flushes both (every 32 MiB applied per group), so level-0 files
        // come several a second under heavy writes: at the default triggers (slow down
        // at 20, stop at 36) writes stalled for up to 0.4 s at a time. The files are
        // small (chunk index, applied marks), so more of them cost reads little.
        o.set_level_zero_file_num_compaction_trigger(8);
        o.set_level_zero_slowdown_writes_trigger(64);
        o.set_level_zero_stop_writes_trigger(128);
    }
    o
}

/// Options shared by both databases. `direct`: flushes and compactions write their
/// files with O_DIRECT (see `direct_io_works`).
fn db_options(direct: bool) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    opts.set_bytes_per_sync(1 << 20);
    opts.increase_parallelism(2);
    // Copying flushed files into the page cache cost more CPU than anything else under
    // sustained writes (fresh page-cache pages are dear to fault in on a VM), and
    // nothing reads them soon: recent chunks are read from the blob cache, which
    // flushes fill (`BLOB_CACHE_BYTES`).
    opts.set_use_direct_io_for_flush_and_compaction(direct);
    // RocksDB marks every file it opens for reads FADV_RANDOM by default, which turns
    // off kernel readahead: a scan of chunks not in the blob cache (a snapshot restore,
    // a clone, a follower's snapshot, a sequential read of a cold volume) then costs one
    // disk read per 4 KiB. Linux reads a lone random read as is and ramps readahead up
    // only for sequential ones, so random reads lose nothing.
    opts.set_advise_random_on_open(false);
    opts
}

/// The column family of `batch` whose writes `swap` may race with (a batch targets one
/// database, so at most one of `data` and `raft_log`).
fn swapped_cf(batch: &Batch) -> Option<Cf> {
    batch.ops.iter().find_map(|op| {
        let (Op::Put(cf, ..) | Op::Delete(cf, ..) | Op::DeleteRange(cf, ..)) = op;
        matches!(cf, Cf::Data | Cf::RaftLog).then_some(*cf)
    })
}

/// Whether files in `dir` can be opened with O_DIRECT (not on every filesystem, e.g.
/// older tmpfs); probed with a scratch file, which is removed.
fn direct_io_works(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".direct-io-probe");
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    if !ok {
        tracing::warn!(dir = %dir.display(), "O_DIRECT is not supported here: flushes go through the page cache");
    }
    ok
}

fn descriptors(cfs: &[Cf]) -> Vec<ColumnFamilyDescriptor> {
    cfs.iter()
        .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(*cf)))
        .collect()
}

fn open_log_db(path: &Path, direct: bool) -> Result<DB> {
    let mut opts = db_options(direct);
    opts.set_recycle_log_file_num(RECYCLED_WALS);
    opts.set_max_total_wal_size(LOG_WAL_BYTES);
    Ok(DB::open_cf_descriptors(&opts, path, descriptors(&LOG_CFS))?)
}

fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Where the log database lives for a state database at `path` (`<data>/db.raftlog`).
fn log_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".raftlog");
    path.with_file_name(name)
}

impl RocksEngine {
    /// Opens (creating if missing) the state database at `path` and the log database
    /// next to it. A data dir from before the split (one database with all four column
    /// families) is migrated: the log column families are copied into a new log
    /// database, which appears atomically by rename, and then dropped from the old one.
    pub fn open(path: &Path) -> Result<Self> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let direct = direct_io_works(dir);
        let mut state_opts = db_options(direct);
        // Applied state is written without the WAL, so its column families must flush
        // together to stay mutually consistent.
        state_opts.set_atomic_flush(true);
        let existing = DB::list_cf(&Options::default(), path).unwrap_or_default();
        let legacy: Vec<Cf> = LOG_CFS
            .into_iter()
            .filter(|cf| existing.iter().any(|n| n == cf.name()))
            .collect();
        let mut cfs = descriptors(&STATE_CFS);
        cfs.extend(descriptors(&legacy));
        let mut state = DB::open_cf_descriptors(&state_opts, path, cfs)?;
        let log_dir = log_path(path);
        if !log_dir.exists() {
            if legacy.is_empty() {
                // A new node: nothing to migrate. Created under a temporary name too, so
                // a half-created log database is never mistaken for a migrated one.
                Self::create_log_db(&log_dir, direct, |_| Ok(0))?;
            } else {
                let copied =
                    Self::create_log_db(&log_dir, direct, |log| copy_log_cfs(&state, log))?;
                tracing::info!(entries = copied, path = %log_dir.display(), "moved the Raft log into its own database");
            }
        }
        for cf in legacy {
            state.drop_cf(cf.name())?;
        }
        let log = open_log_db(&log_dir, direct)?;
        let mark = log
            .get_cf(
                log.cf_handle(Cf::RaftState.name())
                    .expect("column families are created at open"),
                super::vlog::synced_key(),
            )?
            .and_then(|b| Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)))
            .unwrap_or(0);
        let vlog = ValueLog::open(&dir.join("vlog"), mark)?;
        let engine = RocksEngine {
            log,
            state,
            state_wal_dirty: AtomicBool::new(false),
            blob_gc: AtomicBool::new(false),
            vlog,
            data_writes: Mutex::new(()),
            log_writes: Mutex::new(()),
        };
        // Not settable through `Options` in this binding; a mutable option, so set here.
        engine.state.set_options_cf(
            engine.cf(Cf::Data),
            &[("prepopulate_blob_cache", "kFlushOnly")],
        )?;
        engine.tune_blob_gc()?;
        Ok(engine)
    }

    /// Switches blob GC of `data` on or off by its garbage share (`blob_gc_wanted`).
    fn tune_blob_gc(&self) -> Result<()> {
        let cf = self.cf(Cf::Data);
        let prop = |name: &str| -> Result<u64> {
            Ok(self.state.property_int_value_cf(cf, name)?.unwrap_or(0))
        };
        let live = prop("rocksdb.live-blob-file-size")?;
        let garbage = prop("rocksdb.live-blob-file-garbage-size")?;
        let on = self.blob_gc.load(Ordering::Acquire);
        let want = blob_gc_wanted(live, garbage, on);
        if want != on {
            let v = if want { "true" } else { "false" };
            self.state
                .set_options_cf(cf, &[("enable_blob_garbage_collection", v)])?;
            self.blob_gc.store(want, Ordering::Release);
            tracing::info!(
                live_bytes = live,
                garbage_bytes = garbage,
                enabled = want,
                "blob garbage collection switched"
            );
        }
        Ok(())
    }

    /// Whether blob GC runs on `data` now.
    pub fn blob_gc_enabled(&self) -> bool {
        self.blob_gc.load(Ordering::Acquire)
    }

    /// Builds the log database in `<dir>.tmp` with `fill`, makes it durable, and renames
    /// it to `dir`. Returns what `fill` returns.
    fn create_log_db(
        dir: &Path,
        direct: bool,
        fill: impl FnOnce(&DB) -> Result<u64>,
    ) -> Result<u64> {
        let mut tmp = dir.as_os_str().to_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        let n = {
            let log = open_log_db(&tmp, direct)?;
            let n = fill(&log)?;
            log.flush_wal(true)?;
            n
        };
        fsync_dir(&tmp)?;
        std::fs::rename(&tmp, dir)?;
        if let Some(parent) = dir.parent() {
            fsync_dir(parent)?;
        }
        Ok(n)
    }

    /// The lock `swap` holds for `cf` (`data` or `raft_log`).
    fn lock_writes(&self, cf: Cf) -> std::sync::MutexGuard<'_, ()> {
        let lock = if cf == Cf::Data {
            &self.data_writes
        } else {
            &self.log_writes
        };
        lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A `data` value as its chunk's bytes: one the value log holds is read from it.
    fn resolve(&self, cf: Cf, v: Vec<u8>) -> Result<Vec<u8>> {
        if cf == Cf::Data {
            self.vlog.resolve(v)
        } else {
            Ok(v)
        }
    }

    fn db(&self, cf: Cf) -> &DB {
        if LOG_CFS.contains(&cf) {
            &self.log
        } else {
            &self.state
        }
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db(cf)
            .cf_handle(cf.name())
            .expect("column families are created at open")
    }

    /// The database every op of `batch` targets; an error if they span both.
    fn target(&self, batch: &Batch) -> Result<Option<&DB>> {
        let mut target: Option<bool> = None;
        for op in &batch.ops {
            let (Op::Put(cf, ..) | Op::Delete(cf, ..) | Op::DeleteRange(cf, ..)) = op;
            let is_log = LOG_CFS.contains(cf);
            if target.is_some_and(|t| t != is_log) {
                return Err(Error::Internal(
                    "a write batch spans the Raft log and the applied state".into(),
                ));
            }
            target = Some(is_log);
        }
        Ok(target.map(|is_log| if is_log { &self.log } else { &self.state }))
    }

    fn batch(&self, batch: Batch) -> WriteBatch {
        // Reserved up front: RocksDB's batch is one string, grown by copying otherwise.
        let bytes: usize = batch
            .ops
            .iter()
            .map(|op| match op {
                Op::Put(_, k, v) | Op::DeleteRange(_, k, v) => k.len() + v.len() + 16,
                Op::Delete(_, k) => k.len() + 16,
            })
            .sum();
        let mut wb = WriteBatch::with_capacity_bytes(bytes + 16);
        for op in &batch.ops {
            match op {
                Op::Put(cf, k, v) => wb.put_cf(self.cf(*cf), k, v),
                Op::Delete(cf, k) => wb.delete_cf(self.cf(*cf), k),
                Op::DeleteRange(cf, s, e) => wb.delete_range_cf(self.cf(*cf), s, e),
            }
        }
        wb
    }
}

impl Drop for RocksEngine {
    fn drop(&mut self) {
        // Wait for flushes and compactions before the databases close: RocksDB's
        // background threads must not be left working while the process exits.
        self.state.cancel_all_background_work(true);
        self.log.cancel_all_background_work(true);
    }
}

/// Copies every key of the old database's log column families into `log`, in batches.
fn copy_log_cfs(old: &DB, log: &DB) -> Result<u64> {
    let mut n = 0;
    for cf in LOG_CFS {
        let (Some(from), Some(to)) = (old.cf_handle(cf.name()), log.cf_handle(cf.name())) else {
            continue;
        };
        let mut wb = WriteBatch::default();
        for item in old.iterator_cf(from, IteratorMode::Start) {
            let (k, v) = item?;
            wb.put_cf(to, k, v);
            n += 1;
            if wb.size_in_bytes() >= 8 << 20 {
                log.write(std::mem::take(&mut wb))?;
            }
        }
        log.write(wb)?;
    }
    Ok(n)
}

impl Engine for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db(cf)
            .get_cf(self.cf(cf), key)?
            .map(|v| self.resolve(cf, v))
            .transpose()
    }

    fn get_raw(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db(cf).get_cf(self.cf(cf), key)?)
    }

    fn get_raw_many(&self, cf: Cf, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.db(cf)
            .batched_multi_get_cf(self.cf(cf), keys, false)
            .into_iter()
            .map(|r| Ok(r?.map(|v| v.to_vec())))
            .collect()
    }

    fn value_log(&self) -> Option<&ValueLog> {
        Some(&self.vlog)
    }

    fn write(&self, batch: Batch, sync: bool) -> Result<()> {
        let Some(db) = self.target(&batch)? else {
            return Ok(());
        };
        let _held = swapped_cf(&batch).map(|cf| self.lock_writes(cf));
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        db.write_opt(self.batch(batch), &wo)?;
        if !sync && std::ptr::eq(db, &self.state) {
            self.state_wal_dirty.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn write_unlogged(&self, batch: Batch) -> Result<()> {
        if batch.ops.iter().any(|op| {
            let (Op::Put(cf, ..) | Op::Delete(cf, ..) | Op::DeleteRange(cf, ..)) = op;
            !STATE_CFS.contains(cf)
        }) {
            // The log database recycles its WAL and refuses unlogged writes; they would
            // also not be flushed by `persist`.
            return Err(Error::Internal(
                "unlogged write outside the applied state".into(),
            ));
        }
        let _held = swapped_cf(&batch).map(|cf| self.lock_writes(cf));
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.state.write_opt(self.batch(batch), &wo)?;
        Ok(())
    }

    fn swap(&self, cf: Cf, swaps: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>) -> Result<usize> {
        if !matches!(cf, Cf::Data | Cf::RaftLog) {
            return Err(Error::Internal(format!("no swaps in {}", cf.name())));
        }
        let _held = self.lock_writes(cf);
        let mut b = Batch::default();
        for (key, expected, new) in swaps {
            if self.get_raw(cf, &key)?.as_deref() == Some(&expected[..]) {
                b.put(cf, key, new);
            }
        }
        let n = b.ops.len();
        let mut wo = WriteOptions::default();
        wo.disable_wal(cf == Cf::Data);
        self.db(cf).write_opt(self.batch(b), &wo)?;
        Ok(n)
    }

    fn persist(&self) -> Result<()> {
        // Only the state database holds unlogged writes; the log's memtable stays put.
        let cfs: Vec<&rocksdb::ColumnFamily> = STATE_CFS.iter().map(|cf| self.cf(*cf)).collect();
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        self.state.flush_cfs_opt(&cfs, &fo)?;
        self.state.flush_wal(true)?;
        self.log.flush_wal(true)?;
        // Snapshots (the callers) come every 32 MiB applied: a cadence that follows writes.
        self.tune_blob_gc()
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Kv>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end.to_vec());
        let it = self.db(cf).iterator_cf_opt(
            self.cf(cf),
            ro,
            IteratorMode::From(start, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in it.take(limit) {
            let (k, v) = item?;
            out.push((k.to_vec(), self.resolve(cf, v.to_vec())?));
        }
        Ok(out)
    }

    fn last_in_range(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<Kv>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        ro.set_iterate_upper_bound(end.to_vec());
        let mut it = self
            .db(cf)
            .iterator_cf_opt(self.cf(cf), ro, IteratorMode::End);
        match it.next() {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((k.to_vec(), self.resolve(cf, v.to_vec())?)))
            }
            None => Ok(None),
        }
    }

    fn sync_wal(&self) -> Result<()> {
        self.log.flush_wal(true)?;
        if self.state_wal_dirty.swap(false, Ordering::AcqRel) {
            self.state.flush_wal(true)?;
        }
        Ok(())
    }

    fn reclaim(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<()> {
        let mut o = rocksdb::CompactOptions::default();
        // The bottom level too: that is where a deleted volume's keys (and the references
        // that keep its blob files alive) mostly are.
        o.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        self.db(cf)
            .compact_range_cf_opt(self.cf(cf), Some(start), Some(end), &o);
        Ok(())
    }

    fn approximate_size(&self, cf: Cf, start: &[u8], end: &[u8]) -> u64 {
        let r = rocksdb::Range::new(start, end);
        let db = self.db(cf);
        let handle = self.cf(cf);
        let sst = db
            .get_approximate_sizes_cf(handle, &[r])
            .first()
            .copied()
            .unwrap_or(0);
        let prop = |name: &str| db.property_int_value_cf(handle, name).ok().flatten();
        if cf == Cf::Data {
            // Every `data` key is a 4 KiB chunk, its value inline (in a blob file, the SST
            // holding an index) or in the value log (the SST holding a pointer): the
            // range's share of the keys, by its share of the SST bytes, times 4 KiB.
            // Memtables are not counted.
            return match (
                prop("rocksdb.live-sst-files-size"),
                prop("rocksdb.estimate-num-keys"),
            ) {
                (Some(all), Some(keys)) if all > 0 => {
                    (sst as u128 * keys as u128 / all as u128) as u64 * crate::chunks::CHUNK
                }
                _ => 0,
            };
        }
        // Large values live in blob files, which the binding's estimate leaves out: add
        // the range's share of the live blob bytes, prorated by its share of the SSTs (as
        // RocksDB's own `include_blob_files` does). Memtables are not counted.
        let blobs = prop("rocksdb.live-blob-file-size")
            .unwrap_or(0)
            .saturating_sub(prop("rocksdb.live-blob-file-garbage-size").unwrap_or(0));
        match prop("rocksdb.live-sst-files-size") {
            Some(all) if all > 0 && blobs > 0 => {
                sst + (sst as u128 * blobs as u128 / all as u128) as u64
            }
            _ => sst,
        }
    }

    fn scan_pages(
        self: Arc<Self>,
        cf: Cf,
        start: Vec<u8>,
        end: Vec<u8>,
        page_bytes: usize,
    ) -> Result<Pages> {
        let (taken_tx, taken_rx) = std::sync::mpsc::sync_channel(1);
        let pages = Pages::spawn("cairn-scan-pages", move |tx| {
            // The view may point at value log segments collected meanwhile: keep them.
            let _pin = self.vlog.pin();
            let db = self.db(cf);
            // A RocksDB snapshot: the pages show the range as of this moment.
            let snap = db.snapshot();
            let _ = taken_tx.send(());
            let mut ro = ReadOptions::default();
            ro.set_snapshot(&snap);
            ro.set_iterate_upper_bound(end);
            // A one-off full read: keep the block cache for the hot set.
            ro.fill_cache(false);
            let it = db.iterator_cf_opt(
                self.cf(cf),
                ro,
                IteratorMode::From(&start, Direction::Forward),
            );
            let items = it.map(|r| {
                let (k, v) = r?;
                Ok((k.to_vec(), self.resolve(cf, v.to_vec())?))
            });
            send_pages(items, page_bytes, &tx);
        })?;
        taken_rx.recv().map_err(|_| {
            crate::Error::Internal("snapshot reader thread ended before its view".into())
        })?;
        Ok(pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::keys;

    #[test]
    fn rocks_engine_passes_the_engine_suite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let e = RocksEngine::open(&path).unwrap();
        crate::engine::suite::run(&e);
        drop(e);
        // Reopen: column families and data survive.
        let e = RocksEngine::open(&path).unwrap();
        assert!(e.get(Cf::Meta, b"m").unwrap().is_some());
    }

    /// The estimate of a group's bytes counts its chunks, inline or in the value log, and
    /// only that group's.
    #[test]
    fn approximate_size_counts_the_chunks_of_the_range_only() {
        let dir = tempfile::tempdir().unwrap();
        let e = RocksEngine::open(&dir.path().join("db")).unwrap();
        let put = |group: u64, chunks: u64| {
            let mut b = Batch::default();
            // Incompressible contents (xorshift), so file bytes are the data's bytes.
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ group;
            for idx in 0..chunks {
                let v: Vec<u8> = (0..4096)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                b.put(Cf::Data, keys::group_key(group, idx).to_vec(), v);
            }
            e.write(b, false).unwrap();
        };
        put(3, 512); // 2 MiB inline
        put(4, 256); // 1 MiB
        // And 2 MiB more of group 3 in the value log.
        let vl = e.value_log().unwrap();
        let mut b = Batch::default();
        for idx in 512..1024u64 {
            let origin = super::super::vlog::Origin {
                group: 3,
                index: idx,
                offset: idx * 4096,
            };
            let ptr = vl.append(origin, &[idx as u8; 4096]).unwrap();
            let v = super::super::vlog::chunk_value(ptr, crc32fast::hash(&[idx as u8; 4096]));
            b.put(Cf::Data, keys::group_key(3, idx).to_vec(), v);
        }
        e.write(b, false).unwrap();
        e.persist().unwrap();
        let size =
            |g: u64| e.approximate_size(Cf::Data, &keys::group_start(g), &keys::group_end(g));
        let (three, four) = (size(3), size(4));
        assert!(
            (3 << 20..6 << 20).contains(&three),
            "group 3 holds 4 MiB: estimated {three}"
        );
        assert!(
            (1 << 19..3 << 19).contains(&four),
            "group 4 holds 1 MiB: estimated {four}"
        );
    }

    /// Both databases open their files without FADV_RANDOM, so scans get readahead
    /// (RocksDB records the options it opened with in an OPTIONS file).
    #[test]
    fn files_are_opened_with_kernel_readahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let _e = RocksEngine::open(&path).unwrap();
        for db in [path.clone(), log_path(&path)] {
            let options: Vec<_> = std::fs::read_dir(&db)
                .unwrap()
                .filter_map(|f| f.ok())
                .filter(|f| f.file_name().to_string_lossy().starts_with("OPTIONS-"))
                .map(|f| std::fs::read_to_string(f.path()).unwrap())
                .collect();
            assert!(!options.is_empty(), "{} has an OPTIONS file", db.display());
            for text in options {
                assert!(
                    text.lines()
                        .any(|l| l.trim() == "advise_random_on_open=false"),
                    "{}: files are advised random",
                    db.display()
                );
            }
        }
    }

    #[test]
    fn blob_gc_runs_only_while_garbage_is_a_third_of_the_stored_bytes() {
        assert!(!blob_gc_wanted(0, 0, false), "nothing stored");
        assert!(!blob_gc_wanted(1000, 320, false), "below the on mark");
        assert!(blob_gc_wanted(1000, 330, false), "at the on mark");
        assert!(
            blob_gc_wanted(1000, 200, true),
            "stays on down to the off mark"
        );
        assert!(!blob_gc_wanted(1000, 150, true), "off at the off mark");
        assert!(
            !blob_gc_wanted(1000, 200, false),
            "no flapping between the marks"
        );
    }

    /// Overwritten chunks turn blob GC on at the next `persist`; once a compaction has
    /// relocated the live blobs and dropped the old file, it turns off again, and the
    /// data reads back unchanged throughout.
    #[test]
    fn blob_gc_follows_the_garbage_of_overwritten_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let e = RocksEngine::open(&dir.path().join("db")).unwrap();
        let write = |keys: std::ops::Range<u64>, fill: u8| {
            let mut b = Batch::default();
            for k in keys {
                b.put(Cf::Data, keys::group_key(1, k).to_vec(), vec![fill; 4096]);
            }
            e.write_unlogged(b).unwrap();
            e.persist().unwrap();
        };
        let compact = || {
            let mut o = rocksdb::CompactOptions::default();
            o.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
            e.state
                .compact_range_cf_opt(e.cf(Cf::Data), None::<&[u8]>, None::<&[u8]>, &o);
        };
        write(0..256, 1);
        assert!(!e.blob_gc_enabled(), "no garbage yet");
        write(0..192, 2);
        compact();
        e.persist().unwrap();
        assert!(e.blob_gc_enabled(), "3/4 of the first file is garbage");
        compact();
        e.persist().unwrap();
        assert!(!e.blob_gc_enabled(), "the garbage was reclaimed");
        for (k, want) in [(0, 2u8), (191, 2), (192, 1), (255, 1)] {
            let got = e.get(Cf::Data, &keys::group_key(1, k)).unwrap().unwrap();
            assert_eq!(got, vec![want; 4096], "chunk {k}");
        }
    }

    #[test]
    fn batches_spanning_log_and_state_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let e = RocksEngine::open(&dir.path().join("db")).unwrap();
        let mut b = Batch::default();
        b.put(
            Cf::RaftLog,
            keys::group_key(1, 1).to_vec(),
            b"entry".to_vec(),
        );
        b.put(Cf::Data, keys::group_key(1, 1).to_vec(), b"block".to_vec());
        assert!(e.write(b, true).is_err());
        assert_eq!(e.get(Cf::RaftLog, &keys::group_key(1, 1)).unwrap(), None);
        assert_eq!(e.get(Cf::Data, &keys::group_key(1, 1)).unwrap(), None);
        let mut b = Batch::default();
        b.put(Cf::RaftState, b"vote".to_vec(), b"v".to_vec());
        assert!(
            e.write_unlogged(b).is_err(),
            "the log is never written unlogged"
        );
    }

    #[test]
    fn a_single_database_data_dir_is_migrated_once_and_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            // The layout before the split: one database, four column families.
            let mut opts = db_options(false);
            opts.set_atomic_flush(true);
            let db = DB::open_cf_descriptors(&opts, &path, descriptors(&Cf::ALL)).unwrap();
            for i in 0..1000u64 {
                let cf = db.cf_handle(Cf::RaftLog.name()).unwrap();
                db.put_cf(cf, keys::group_key(3, i), vec![i as u8; 100])
                    .unwrap();
            }
            let cf = db.cf_handle(Cf::RaftState.name()).unwrap();
            db.put_cf(cf, keys::named(3, "vote"), b"term-7").unwrap();
            let cf = db.cf_handle(Cf::Data.name()).unwrap();
            db.put_cf(cf, keys::group_key(3, 9), b"block").unwrap();
            db.flush_wal(true).unwrap();
        }
        // A crash during an earlier migration left a partial copy behind.
        std::fs::create_dir_all(dir.path().join("db.raftlog.tmp")).unwrap();
        std::fs::write(dir.path().join("db.raftlog.tmp/junk"), b"x").unwrap();
        for round in 0..2 {
            let e = RocksEngine::open(&path).unwrap();
            let log = e
                .scan(
                    Cf::RaftLog,
                    &keys::group_start(3),
                    &keys::group_end(3),
                    usize::MAX,
                )
                .unwrap();
            assert_eq!(log.len(), 1000, "round {round}: every log entry is kept");
            assert_eq!(log[999].1, vec![231u8; 100]);
            assert_eq!(
                e.get(Cf::RaftState, &keys::named(3, "vote")).unwrap(),
                Some(b"term-7".to_vec())
            );
            assert_eq!(
                e.get(Cf::Data, &keys::group_key(3, 9)).unwrap(),
                Some(b"block".to_vec())
            );
            drop(e);
            let left = DB::list_cf(&Options::default(), &path).unwrap();
            assert!(
                !left.iter().any(|n| n == "raft_log" || n == "raft_state"),
                "round {round}: the old database keeps no log column family: {left:?}"
            );
            assert!(!dir.path().join("db.raftlog.tmp").exists());
        }
    }
}
