//! The storage engine trait: four column families, atomic batches, range scans.
//! RocksDB (`rocks`) is the real engine; `mem` is an in-memory engine for tests.

pub mod mem;
#[cfg(feature = "rocks")]
pub mod rocks;
pub mod vlog;
pub mod vlog_gc;

use crate::Result;

pub use mem::MemEngine;
#[cfg(feature = "rocks")]
pub use rocks::RocksEngine;

/// Column families shared by every Raft group on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    RaftLog,
    RaftState,
    Data,
    Meta,
}

impl Cf {
    pub const ALL: [Cf; 4] = [Cf::RaftLog, Cf::RaftState, Cf::Data, Cf::Meta];

    pub fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => "raft_log",
            Cf::RaftState => "raft_state",
            Cf::Data => "data",
            Cf::Meta => "meta",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    /// Deletes keys in `[start, end)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// An atomic group of writes.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(cf, key.into(), value.into()));
    }
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(cf, key.into()));
    }
    pub fn delete_range(&mut self, cf: Cf, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) {
        self.ops.push(Op::DeleteRange(cf, start.into(), end.into()));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

pub type Kv = (Vec<u8>, Vec<u8>);

/// The sending side a page reader thread writes to (see `send_pages`).
pub type PageSender = tokio::sync::mpsc::Sender<Result<Vec<Kv>>>;

/// Pages of key-values produced by a reader thread (see `Engine::scan_pages`).
/// Dropping it stops the reader and waits for it to end, so the thread never outlives
/// its consumer: an engine last released on a detached thread could still be closing
/// RocksDB while the process exits, which aborts the process.
pub struct Pages {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<Kv>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Pages {
    /// Runs `read` on a new thread called `name`; it sends the pages.
    pub fn spawn(name: &str, read: impl FnOnce(PageSender) + Send + 'static) -> Result<Pages> {
        let (tx, rx) = tokio::sync::mpsc::channel(PAGES_AHEAD);
        let reader = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || read(tx))
            .map_err(crate::Error::Io)?;
        Ok(Pages {
            rx,
            reader: Some(reader),
        })
    }

    /// The next page; `None` once the reader is done.
    pub async fn recv(&mut self) -> Option<Result<Vec<Kv>>> {
        self.rx.recv().await
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // A reader waiting for room gets an error at once and returns.
        self.rx.close();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// What storaged needs from a key-value engine.
pub trait Engine: Send + Sync + 'static {
    /// A value; a `data` chunk kept in the value log is read from it (`vlog.rs`).
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// A value as stored: a `data` chunk in the value log is its pointer.
    fn get_raw(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get(cf, key)
    }
    /// `get_raw` of several keys of `cf` (any order; answers in that order), in one
    /// lookup where the engine can (value log collection surveys thousands at a time).
    fn get_raw_many(&self, cf: Cf, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get_raw(cf, k)).collect()
    }
    /// Where block payloads are written once, if this engine has one (test engines
    /// keep payloads inline).
    fn value_log(&self) -> Option<&vlog::ValueLog> {
        None
    }
    /// For each `(key, expected, new)`: the raw value at `key` in `cf` (`data` or
    /// `raft_log`) becomes `new` if it is still `expected`, atomically with respect to
    /// every other write of that column family (value log collection); written like the
    /// column family's own writes (unlogged for `data`), durable at `persist`. Returns how
    /// many changed.
    fn swap(&self, cf: Cf, swaps: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>) -> Result<usize> {
        let _ = (cf, swaps);
        Err(crate::Error::Internal(
            "this engine keeps no value log".into(),
        ))
    }
    /// Applies `batch` atomically; with `sync` it is durable (WAL fsynced) on return.
    fn write(&self, batch: Batch, sync: bool) -> Result<()>;
    /// Keys in `[start, end)` in order, at most `limit`.
    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Kv>>;
    /// The last key-value in `[start, end)`.
    fn last_in_range(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<Kv>>;
    /// Makes every earlier write durable.
    fn sync_wal(&self) -> Result<()>;
    /// Applies `batch` atomically without logging it: it is lost by a crash until
    /// `persist` runs. Only for state a replay rebuilds (applied Raft entries).
    fn write_unlogged(&self, batch: Batch) -> Result<()> {
        self.write(batch, false)
    }
    /// Makes every earlier write durable, unlogged ones included (flushes memtables).
    fn persist(&self) -> Result<()> {
        self.sync_wal()
    }
    /// Approximate bytes stored under `[start, end)`, values included (what a scan of the
    /// range reads; for rebuild progress). Cheap: no data is read.
    fn approximate_size(&self, cf: Cf, start: &[u8], end: &[u8]) -> u64;
    /// Gives back the disk space of `[start, end)`'s deleted keys: compacts the range, so its
    /// tombstones go and so do the blob files that only it referenced. Blocking, and can take
    /// seconds; the default does nothing (engines in memory free space as they delete).
    fn reclaim(&self, _cf: Cf, _start: &[u8], _end: &[u8]) -> Result<()> {
        Ok(())
    }
    /// `[start, end)` as it is now, in pages of about `page_bytes`, read while later
    /// writes go on. Returns once the point-in-time view is taken; dropping the
    /// receiver stops the reader. The default reads everything up front (test engines).
    fn scan_pages(
        self: std::sync::Arc<Self>,
        cf: Cf,
        start: Vec<u8>,
        end: Vec<u8>,
        page_bytes: usize,
    ) -> Result<Pages> {
        let all = self.scan(cf, &start, &end, usize::MAX)?;
        Pages::spawn("cairn-scan-pages", move |tx| {
            send_pages(all.into_iter().map(Ok), page_bytes, &tx)
        })
    }
}

/// Pages a reader may produce ahead of its consumer.
pub const PAGES_AHEAD: usize = 2;

/// Cuts an ordered key-value stream into pages of about `page_bytes` and sends them;
/// stops early (returning) when the receiver is gone. For engine reader threads.
pub fn send_pages(items: impl Iterator<Item = Result<Kv>>, page_bytes: usize, tx: &PageSender) {
    let mut page = Vec::new();
    let mut bytes = 0;
    for item in items {
        match item {
            Ok(kv) => {
                bytes += kv.0.len() + kv.1.len();
                page.push(kv);
                if bytes >= page_bytes {
                    if tx.blocking_send(Ok(std::mem::take(&mut page))).is_err() {
                        return;
                    }
                    bytes = 0;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
    if !page.is_empty() {
        let _ = tx.blocking_send(Ok(page));
    }
}

/// Big-endian key helpers: group id first, so every group owns a contiguous range.
pub mod keys {
    pub fn group_key(group: u64, suffix: u64) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&group.to_be_bytes());
        k[8..].copy_from_slice(&suffix.to_be_bytes());
        k
    }

    pub fn group_start(group: u64) -> [u8; 16] {
        group_key(group, 0)
    }

    /// Exclusive end of a group's range.
    pub fn group_end(group: u64) -> Vec<u8> {
        let mut k = group.to_be_bytes().to_vec();
        k.extend_from_slice(&[0xff; 9]);
        k
    }

    pub fn suffix_of(key: &[u8]) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&key[8..16]);
        u64::from_be_bytes(b)
    }

    pub fn named(group: u64, name: &str) -> Vec<u8> {
        let mut k = group.to_be_bytes().to_vec();
        k.extend_from_slice(name.as_bytes());
        k
    }
}

#[cfg(test)]
pub(crate) mod suite {
    //! One engine test suite, run against every engine.
    use super::*;

    pub fn run(e: &dyn Engine) {
        let mut b = Batch::default();
        b.put(Cf::Data, keys::group_key(1, 1).to_vec(), b"a".to_vec());
        b.put(Cf::Data, keys::group_key(1, 2).to_vec(), b"b".to_vec());
        b.put(Cf::Data, keys::group_key(2, 1).to_vec(), b"c".to_vec());
        b.put(Cf::Meta, b"m".to_vec(), b"x".to_vec());
        e.write(b, true).unwrap();
        assert_eq!(
            e.get(Cf::Data, &keys::group_key(1, 2)).unwrap(),
            Some(b"b".to_vec())
        );
        assert_eq!(
            e.get(Cf::Meta, &keys::group_key(1, 2)).unwrap(),
            None,
            "column families are separate"
        );
        let all = e
            .scan(Cf::Data, &keys::group_start(1), &keys::group_end(1), 100)
            .unwrap();
        assert_eq!(all.len(), 2);
        let last = e
            .last_in_range(Cf::Data, &keys::group_start(1), &keys::group_end(1))
            .unwrap();
        assert_eq!(last.unwrap().1, b"b".to_vec());
        let mut b = Batch::default();
        b.delete_range(Cf::Data, keys::group_start(1).to_vec(), keys::group_end(1));
        e.write(b, false).unwrap();
        assert!(
            e.scan(Cf::Data, &keys::group_start(1), &keys::group_end(1), 100)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            e.get(Cf::Data, &keys::group_key(2, 1)).unwrap(),
            Some(b"c".to_vec()),
            "other group kept"
        );
        let mut b = Batch::default();
        b.delete(Cf::Data, keys::group_key(2, 1).to_vec());
        e.write(b, false).unwrap();
        assert_eq!(e.get(Cf::Data, &keys::group_key(2, 1)).unwrap(), None);
        e.sync_wal().unwrap();
    }
}
