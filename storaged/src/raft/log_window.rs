//! The part of a volume group's Raft log kept behind a snapshot: what a member still
//! lacks (on the leader, within a byte bound) and a small window; the rest is purged.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Most bytes of writes the leader keeps behind a snapshot for members that lack them (a
/// node restarting catches up from the log, not from a whole-volume snapshot).
pub const KEEP_BYTES: u64 = 64 << 20;

/// Bytes every member keeps behind a snapshot whatever its peers hold, for a follower
/// that becomes leader with a peer a moment behind. Entries purged before the log's
/// memtable flushes are never written again, so this is kept well below its 64 MiB: a
/// window as large as the memtable wrote every entry twice (one more disk byte per user
/// byte on every replica; decision 031).
pub const FOLLOWER_KEEP_BYTES: u64 = 4 << 20;

/// Applied write bytes by log index, and the snapshots that call for a purge.
#[derive(Debug, Default)]
pub struct LogWindow {
    inner: Mutex<Marks>,
    /// Signalled when a snapshot leaves a purge to consider.
    pub built: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Marks {
    /// Write bytes applied since this process opened the group.
    total: u64,
    /// (last index of an apply batch, `total` after it), oldest first.
    marks: VecDeque<(u64, u64)>,
    /// The newest snapshot's last index, not yet considered for a purge.
    snapshot: Option<u64>,
    /// The newest snapshot's last index seen.
    newest: u64,
    /// The purge last asked for (inclusive).
    purged: u64,
}

impl LogWindow {
    /// Records an apply batch ending at log `index` that wrote `bytes`.
    pub fn applied(&self, index: u64, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut m = self.inner.lock().expect("log window lock poisoned");
        m.total += bytes;
        let total = m.total;
        m.marks.push_back((index, total));
    }

    /// A snapshot covers the log up to `index`.
    pub fn snapshot_at(&self, index: u64) {
        let mut m = self.inner.lock().expect("log window lock poisoned");
        if index > m.newest {
            m.newest = index;
            m.snapshot = Some(index);
            self.built.notify_one();
        }
    }

    /// The snapshot built since the last call, once.
    pub fn take_snapshot(&self) -> Option<u64> {
        self.inner
            .lock()
            .expect("log window lock poisoned")
            .snapshot
            .take()
    }

    /// How far the log may be purged behind a snapshot at `snapshot`: up to `held` (the
    /// lowest index every member holds, if known) and at least everything with `keep`
    /// bytes of writes after it; `None` if that is no further than the last purge.
    pub fn purge_upto(&self, snapshot: u64, keep: u64, held: Option<u64>) -> Option<u64> {
        let mut m = self.inner.lock().expect("log window lock poisoned");
        let at = m
            .marks
            .iter()
            .rev()
            .find(|(i, _)| *i <= snapshot)
            .map(|m| m.1);
        // The newest batch end with at least `keep` bytes after it, up to `snapshot`.
        let by_bytes = at.and_then(|at| {
            m.marks
                .iter()
                .rev()
                .find(|(i, t)| *i <= snapshot && at - t >= keep)
                .map(|m| m.0)
        });
        let upto = by_bytes.max(held.map(|h| h.min(snapshot)))?;
        if upto <= m.purged {
            return None;
        }
        m.purged = upto;
        m.marks.retain(|(i, _)| *i >= upto);
        Some(upto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn purge(w: &LogWindow, snapshot: u64, keep: u64, held: Option<u64>) -> Option<u64> {
        w.snapshot_at(snapshot);
        let s = w.take_snapshot().expect("a snapshot to consider");
        w.purge_upto(s, keep, held)
    }

    #[test]
    fn large_writes_keep_bytes_not_entries() {
        let w = LogWindow::default();
        // 100 entries of 1 MiB, one per apply batch.
        for i in 1..=100 {
            w.applied(i, MIB);
        }
        // Entries 37..=100 (64 MiB) stay.
        assert_eq!(purge(&w, 100, 64 * MIB, None), Some(36));
        assert_eq!(w.take_snapshot(), None, "considered once");
    }

    #[test]
    fn nothing_is_purged_while_the_log_holds_less_than_the_window() {
        let w = LogWindow::default();
        for i in 1..=10 {
            w.applied(i, 4 * MIB);
        }
        assert_eq!(purge(&w, 10, 64 * MIB, None), None);
    }

    #[test]
    fn entries_applied_after_the_snapshot_are_not_counted() {
        let w = LogWindow::default();
        for i in 1..=100 {
            w.applied(i, MIB);
        }
        // The snapshot covers up to 80; 81..=100 were applied while it was built.
        assert_eq!(purge(&w, 80, 64 * MIB, None), Some(16));
    }

    #[test]
    fn what_every_member_holds_goes_up_to_the_snapshot() {
        let w = LogWindow::default();
        for i in 1..=100 {
            w.applied(i, MIB);
        }
        // Every member holds up to 90: all the snapshot covers goes, the window aside.
        assert_eq!(purge(&w, 80, 64 * MIB, Some(90)), Some(80));
        // A member lacking entries keeps them, but no more than the byte bound.
        let w = LogWindow::default();
        for i in 1..=100 {
            w.applied(i, MIB);
        }
        assert_eq!(purge(&w, 100, 64 * MIB, Some(50)), Some(50));
        let w = LogWindow::default();
        for i in 1..=100 {
            w.applied(i, MIB);
        }
        assert_eq!(purge(&w, 100, 64 * MIB, Some(10)), Some(36));
    }

    #[test]
    fn batches_and_empty_entries_round_to_whole_batches() {
        let w = LogWindow::default();
        // Batches of 8 entries of 1 MiB each, ending at 8, 16, ... 96; blanks write nothing.
        for b in 1..=12 {
            w.applied(b * 8, 8 * MIB);
            w.applied(b * 8 + 1, 0);
        }
        // At least 30 MiB kept: the purge stops at the end of the batch ending at 64,
        // keeping entries 65..=96 (32 MiB).
        assert_eq!(purge(&w, 96, 30 * MIB, None), Some(64));
        // A later snapshot only moves the purge forward, and older marks were dropped.
        for b in 13..=20 {
            w.applied(b * 8, 8 * MIB);
        }
        assert_eq!(purge(&w, 160, 30 * MIB, None), Some(128));
        w.snapshot_at(100);
        assert_eq!(
            w.take_snapshot(),
            None,
            "an older snapshot than one considered asks nothing"
        );
        assert_eq!(
            w.purge_upto(100, 30 * MIB, None),
            None,
            "nothing older than what was already asked"
        );
    }
}
