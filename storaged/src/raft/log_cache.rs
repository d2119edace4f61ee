//! The tail of one group's Raft log kept in memory, so replication and apply
//! read fresh entries without a RocksDB scan and decode; bounded by bytes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use openraft::entry::RaftEntry;

use super::Entry;

/// Per-group budget: a few times the bytes a busy volume has in flight.
pub const DEFAULT_BUDGET: usize = 8 << 20;

/// Contiguous run of the newest entries; shared by a log store and its readers.
#[derive(Clone)]
pub struct LogCache {
    inner: Arc<Mutex<Tail>>,
}

struct Tail {
    entries: VecDeque<Entry>,
    bytes: usize,
    budget: usize,
}

fn weight(e: &Entry) -> usize {
    super::entry_size_hint(e)
}

impl Tail {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index())
    }

    fn next(&self) -> Option<u64> {
        self.entries.back().map(|e| e.index() + 1)
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= weight(&e);
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

impl LogCache {
    pub fn new(budget: usize) -> Self {
        LogCache {
            inner: Arc::new(Mutex::new(Tail {
                entries: VecDeque::new(),
                bytes: 0,
                budget,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records entries just written to the engine. A gap restarts the cache.
    pub fn append(&self, entries: &[Entry]) {
        let mut t = self.lock();
        for e in entries {
            if t.next().is_some_and(|n| n != e.index()) {
                t.clear();
            }
            t.bytes += weight(e);
            t.entries.push_back(e.clone());
        }
        while t.bytes > t.budget && t.entries.len() > 1 {
            t.pop_front();
        }
    }

    /// Entries `[start, end)` if all of them are cached, else `None`.
    pub fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let t = self.lock();
        if start >= end {
            return Some(Vec::new());
        }
        let (first, next) = (t.first()?, t.next()?);
        if start < first || end > next {
            return None;
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(t.entries.range(from..to).cloned().collect())
    }

    /// Forgets entries after `index` (`None`: all), as the log does on a conflict.
    pub fn truncate_after(&self, index: Option<u64>) {
        let mut t = self.lock();
        while let Some(last) = t.entries.back() {
            if index.is_some_and(|i| last.index() <= i) {
                break;
            }
            let e = t.entries.pop_back().expect("back exists");
            t.bytes -= weight(&e);
        }
    }

    /// Forgets entries up to and including `index`.
    pub fn purge(&self, index: u64) {
        let mut t = self.lock();
        while t.first().is_some_and(|f| f <= index) {
            t.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;

    use super::super::Request;
    use super::*;

    fn entry(index: u64, len: usize) -> Entry {
        Entry::new_normal(
            openraft::testing::log_id::<super::super::TypeConfig>(1, 1, index),
            Request::Write {
                offset: index * 4096,
                data: bytes::Bytes::from(vec![index as u8; len]),
            },
        )
    }

    fn indexes(v: &[Entry]) -> Vec<u64> {
        v.iter().map(|e| e.index()).collect()
    }

    #[test]
    fn serves_only_fully_cached_ranges() {
        let c = LogCache::new(1 << 20);
        c.append(&[entry(5, 10), entry(6, 10), entry(7, 10)]);
        assert_eq!(indexes(&c.get(5, 8).unwrap()), vec![5, 6, 7]);
        assert_eq!(indexes(&c.get(6, 7).unwrap()), vec![6]);
        assert!(c.get(4, 6).is_none(), "start before the cached tail");
        assert!(c.get(7, 9).is_none(), "end past the last entry");
        assert!(c.get(9, 9).unwrap().is_empty());
    }

    #[test]
    fn gap_truncate_and_purge_keep_it_contiguous() {
        let c = LogCache::new(1 << 20);
        c.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        c.truncate_after(Some(1));
        assert!(c.get(2, 3).is_none());
        c.append(&[entry(2, 2)]);
        let got = c.get(1, 3).unwrap();
        assert_eq!(indexes(&got), vec![1, 2]);
        match &got[1].payload {
            EntryPayload::Normal(Request::Write { data, .. }) => assert_eq!(data.len(), 2),
            other => panic!("unexpected payload {other:?}"),
        }
        c.purge(1);
        assert!(c.get(1, 2).is_none());
        assert_eq!(indexes(&c.get(2, 3).unwrap()), vec![2]);
        // A gap (entries 3..9 never seen) restarts the cache at 10.
        c.append(&[entry(10, 1)]);
        assert!(c.get(2, 3).is_none());
        assert_eq!(indexes(&c.get(10, 11).unwrap()), vec![10]);
        c.truncate_after(None);
        assert!(c.get(10, 11).is_none());
    }

    #[test]
    fn budget_evicts_the_oldest() {
        let c = LogCache::new(3 * (64 + 100));
        c.append(&(1..=5).map(|i| entry(i, 100)).collect::<Vec<_>>());
        assert!(c.get(1, 3).is_none());
        assert_eq!(indexes(&c.get(3, 6).unwrap()), vec![3, 4, 5]);
        // One entry over budget is still kept: the newest is always served.
        let big = LogCache::new(10);
        big.append(&[entry(1, 1000)]);
        assert_eq!(indexes(&big.get(1, 2).unwrap()), vec![1]);
    }
}
