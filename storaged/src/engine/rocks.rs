//! RocksDB engine: one database per node with the four column families.
//! Synced writes fsync the WAL, so concurrent synced writes share one fsync (group commit).

use std::path::Path;

use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions, WriteBatch,
    WriteOptions,
};

use super::{Batch, Cf, Engine, Kv, Op};
use crate::Result;

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
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = Options::default();
            if *cf == Cf::Data {
                o.set_write_buffer_size(64 << 20);
            }
            if *cf == Cf::RaftLog {
                o.set_write_buffer_size(64 << 20);
            }
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(RocksEngine { db })
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
        let mut wb = WriteBatch::default();
        for op in &batch.ops {
            match op {
                Op::Put(cf, k, v) => wb.put_cf(self.cf(*cf), k, v),
                Op::Delete(cf, k) => wb.delete_cf(self.cf(*cf), k),
                Op::DeleteRange(cf, s, e) => wb.delete_range_cf(self.cf(*cf), s, e),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo)?;
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
