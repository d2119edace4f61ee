//! RocksDB engine: one database per node with the four column families.
//! Synced writes fsync the WAL, so concurrent synced writes share one fsync (group commit).

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    ColumnFamilyDescriptor, DB, DBCompressionType, Direction, FlushOptions, IteratorMode, Options,
    ReadOptions, WriteBatch, WriteOptions,
};

use super::{Batch, Cf, Engine, Kv, Op, PAGES_AHEAD, Pages, send_pages};
use crate::Result;

/// The column families that `write_unlogged` may touch.
const UNLOGGED: [Cf; 2] = [Cf::Data, Cf::Meta];

pub struct RocksEngine {
    db: DB,
}

impl RocksEngine {
    pub fn open(path: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        opts.increase_parallelism(2);
        // Applied state is written without the WAL (the Raft log is the record), so the
        // column families must flush together to stay mutually consistent.
        opts.set_atomic_flush(true);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = Options::default();
            if *cf == Cf::Data {
                // Block payloads: usually filesystem data that is already dense or
                // encrypted; compression costs CPU on every flush and read for little gain.
                o.set_write_buffer_size(64 << 20);
                o.set_compression_type(DBCompressionType::None);
                o.set_enable_blob_files(true);
                o.set_min_blob_size(1024);
                o.set_enable_blob_gc(true);
            }
            if *cf == Cf::RaftLog {
                // Entries are short-lived: compressing them only costs CPU. The memtable
                // is several times what a group applies between snapshots (32 MiB), so
                // most entries are purged before a flush would write them out again.
                o.set_write_buffer_size(256 << 20);
                o.set_compression_type(DBCompressionType::None);
            }
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(RocksEngine { db })
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

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(cf.name())
            .expect("column families are created at open")
    }
}

impl Engine for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    fn write(&self, batch: Batch, sync: bool) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(self.batch(batch), &wo)?;
        Ok(())
    }

    fn write_unlogged(&self, batch: Batch) -> Result<()> {
        let outside = batch.ops.iter().find_map(|op| match op {
            Op::Put(cf, ..) | Op::Delete(cf, ..) | Op::DeleteRange(cf, ..) => {
                (!UNLOGGED.contains(cf)).then_some(*cf)
            }
        });
        if let Some(cf) = outside {
            // `persist` would not flush it: the write could be lost after a purge.
            return Err(crate::Error::Internal(format!(
                "unlogged write to column family {}",
                cf.name()
            )));
        }
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db.write_opt(self.batch(batch), &wo)?;
        Ok(())
    }

    fn persist(&self) -> Result<()> {
        // Unlogged writes only ever touch data and meta; the Raft log and state are in
        // the WAL. Flushing the log too would write every live entry out to an SST.
        let cfs: Vec<&rocksdb::ColumnFamily> = UNLOGGED.iter().map(|cf| self.cf(*cf)).collect();
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        self.db.flush_cfs_opt(&cfs, &fo)?;
        self.db.flush_wal(true)?;
        Ok(())
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Kv>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end.to_vec());
        let it = self.db.iterator_cf_opt(
            self.cf(cf),
            ro,
            IteratorMode::From(start, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in it.take(limit) {
            let (k, v) = item?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn last_in_range(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<Kv>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        ro.set_iterate_upper_bound(end.to_vec());
        let mut it = self.db.iterator_cf_opt(self.cf(cf), ro, IteratorMode::End);
        match it.next() {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    fn sync_wal(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    fn approximate_size(&self, cf: Cf, start: &[u8], end: &[u8]) -> u64 {
        let r = rocksdb::Range::new(start, end);
        self.db
            .get_approximate_sizes_cf(self.cf(cf), &[r])
            .first()
            .copied()
            .unwrap_or(0)
    }

    fn scan_pages(
        self: Arc<Self>,
        cf: Cf,
        start: Vec<u8>,
        end: Vec<u8>,
        page_bytes: usize,
    ) -> Result<Pages> {
        let (tx, rx) = tokio::sync::mpsc::channel(PAGES_AHEAD);
        let (taken_tx, taken_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("cairn-scan-pages".into())
            .spawn(move || {
                // A RocksDB snapshot: the pages show the range as of this moment.
                let snap = self.db.snapshot();
                let _ = taken_tx.send(());
                let mut ro = ReadOptions::default();
                ro.set_snapshot(&snap);
                ro.set_iterate_upper_bound(end);
                // A one-off full read: keep the block cache for the hot set.
                ro.fill_cache(false);
                let it = self.db.iterator_cf_opt(
                    self.cf(cf),
                    ro,
                    IteratorMode::From(&start, Direction::Forward),
                );
                let items = it.map(|r| {
                    r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                        .map_err(crate::Error::from)
                });
                send_pages(items, page_bytes, &tx);
            })
            .map_err(crate::Error::Io)?;
        taken_rx.recv().map_err(|_| {
            crate::Error::Internal("snapshot reader thread ended before its view".into())
        })?;
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Engine;

    #[test]
    fn rocks_engine_passes_the_engine_suite() {
        let dir = tempfile::tempdir().unwrap();
        let e = super::RocksEngine::open(dir.path()).unwrap();
        super::super::suite::run(&e);
        drop(e);
        // Reopen: column families and data survive.
        let e = super::RocksEngine::open(dir.path()).unwrap();
        assert!(e.get(super::Cf::Meta, b"m").unwrap().is_some());
    }
}
