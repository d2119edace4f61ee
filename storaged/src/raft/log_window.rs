//! The bytes of a volume group's Raft log kept behind a snapshot: openraft keeps a count
//! of entries (up to 1024), which for 1 MiB writes is 1 GiB per group on every node.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Bytes of writes kept in the log behind a snapshot, for followers slightly behind (a
/// node restarting). 1024 entries of 64 KiB: smaller writes keep openraft's 1024 entries.
pub const KEEP_BYTES: u64 = 64 << 20;

/// Applied write bytes by log index, and the purge they call for at the last snapshot.
#[derive(Debug, Default)]
pub struct LogWindow {
    inner: Mutex<Marks>,
    /// Signalled when a snapshot leaves a purge to take.
    pub built: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Marks {
    /// Write bytes applied since this process opened the group.
    total: u64,
    /// (last index of an apply batch, `total` after it), oldest first.
    marks: VecDeque<(u64, u64)>,
    /// The index to purge up to (inclusive), not yet asked for.
    purge_upto: Option<u64>,
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

    /// A snapshot covers the log up to `index`: the newest entries behind it holding at
    /// least `keep` bytes stay, and everything older may go.
    pub fn snapshot_at(&self, index: u64, keep: u64) {
        let mut m = self.inner.lock().expect("log window lock poisoned");
        let Some(at) = m.marks.iter().rev().find(|(i, _)| *i <= index).map(|m| m.1) else {
            return;
        };
        // The newest batch end with at least `keep` bytes after it, up to `index`.
        let Some(upto) = m
            .marks
            .iter()
            .rev()
            .find(|(i, t)| *i <= index && at - t >= keep)
            .map(|m| m.0)
        else {
            return;
        };
        m.marks.retain(|(i, _)| *i >= upto);
        if m.purge_upto.is_none_or(|p| p < upto) {
            m.purge_upto = Some(upto);
            self.built.notify_one();
        }
    }

    /// The purge the last snapshots called for, once.
    pub fn take_purge(&self) -> Option<u64> {
        self.inner
            .lock()
            .expect("log window lock poisoned")
            .purge_upto
            .take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn large_writes_keep_bytes_not_entries() {
        let w = LogWindow::default();
        // 100 entries of 1 MiB, one per apply batch.
        for i in 1..=100 {
            w.applied(i, MIB);
        }
        w.snapshot_at(100, 64 * MIB);
        // Entries 37..=100 (64 MiB) stay.
        assert_eq!(w.take_purge(), Some(36));
        assert_eq!(w.take_purge(), None, "asked for once");
    }

    #[test]
    fn nothing_is_purged_while_the_log_holds_less_than_the_window() {
        let w = LogWindow::default();
        for i in 1..=10 {
            w.applied(i, 4 * MIB);
        }
        w.snapshot_at(10, 64 * MIB);
        assert_eq!(w.take_purge(), None);
    }

    #[test]
    fn entries_applied_after_the_snapshot_are_not_counted() {
        let w = LogWindow::default();
        for i in 1..=100 {
            w.applied(i, MIB);
        }
        // The snapshot covers up to 80; 81..=100 were applied while it was built.
        w.snapshot_at(80, 64 * MIB);
        assert_eq!(w.take_purge(), Some(16));
    }

    #[test]
    fn batches_and_empty_entries_round_to_whole_batches() {
        let w = LogWindow::default();
        // Batches of 8 entries of 1 MiB each, ending at 8, 16, ... 96; blanks write nothing.
        for b in 1..=12 {
            w.applied(b * 8, 8 * MIB);
            w.applied(b * 8 + 1, 0);
        }
        w.snapshot_at(96, 30 * MIB);
        // At least 30 MiB kept: the purge stops at the end of the batch ending at 64,
        // keeping entries 65..=96 (32 MiB).
        assert_eq!(w.take_purge(), Some(64));
        // A later snapshot only moves the purge forward, and older marks were dropped.
        for b in 13..=20 {
            w.applied(b * 8, 8 * MIB);
        }
        w.snapshot_at(160, 30 * MIB);
        assert_eq!(w.take_purge(), Some(128));
        w.snapshot_at(100, 30 * MIB);
        assert_eq!(
            w.take_purge(),
            None,
            "nothing older than what was already asked"
        );
    }
}
