//! Exactly-once block writes (RIFL-style): per writer, the sequence numbers a volume group
//! has applied, so a resent write or discard succeeds without taking effect twice.
//!
//! A writer (a `VolumeClient`, a node's `VolumeIo`) tags every logical write with its id, a
//! sequence number reused by every resend, and its lowest sequence number still in flight
//! (`first_incomplete`: everything below is finished and never sent again). At apply, a
//! write whose number is below the writer's low-water mark (the largest `first_incomplete`
//! seen) or among those applied is answered `Done` and not applied.
//!
//! The table is state-machine state: changed only by applied entries, written in the same
//! batch as the data, sent in snapshots, so every replica decides alike. Bounds:
//! - per writer at most `SEQ_WINDOW` applied numbers: a writer never runs more than
//!   `SEQ_WINDOW` ahead of its oldest write in flight (`cairn_client::WriteIds` waits); a
//!   write further ahead raises the low-water mark (that writer broke its promise);
//! - a writer no entry named for `IDLE_ENTRIES` log indices is dropped (checked every
//!   `SWEEP_EVERY` indices), and at most `MAX_WRITERS` are kept (the longest idle goes);
//!   a resend after that is applied again, as before deduplication.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::engine::{Batch, Cf, Engine};
use crate::raft::decode;

pub use cairn_client::SEQ_WINDOW;

/// A writer idle for this many log indices is forgotten: far beyond any resend (a client
/// gives up on a write after 8 s; a million entries is 4 GiB of 4 KiB writes).
pub const IDLE_ENTRIES: u64 = 1 << 20;
/// Idle writers are looked for when the applied index is a multiple of this.
pub const SWEEP_EVERY: u64 = 1024;
/// The most writers a volume group remembers (about `SEQ_WINDOW * 8` bytes each at worst).
pub const MAX_WRITERS: usize = 4096;

/// Which logical write an entry is, and what its writer has finished.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteId {
    /// The writer: random, non-zero.
    pub client: u64,
    /// The logical write, the same in every resend.
    pub seq: u64,
    /// The writer's lowest write whose outcome it did not know when it sent this.
    pub first_incomplete: u64,
}

impl WriteId {
    /// From a request's fields; client 0 is an older caller, not deduplicated.
    pub fn from_wire(client: u64, seq: u64, first_incomplete: u64) -> Option<WriteId> {
        (client != 0).then_some(WriteId {
            client,
            seq,
            first_incomplete: first_incomplete.min(seq),
        })
    }
}

/// What a volume group remembers of one writer.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Writer {
    /// Every write numbered below is finished: never applied from now on.
    pub low_water: u64,
    /// Writes applied at or above `low_water`.
    pub applied: BTreeSet<u64>,
    /// The log index of the last entry naming this writer (idleness is counted from it).
    pub last_index: u64,
}

/// Whether an entry's write takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Apply,
    /// Applied before, or finished by its writer: answered `Done`, not applied.
    Duplicate,
}

/// One volume group's writers; `dirty` is what the next apply batch must write.
#[derive(Debug, Default)]
pub struct DedupTable {
    writers: BTreeMap<u64, Writer>,
    dirty: BTreeSet<u64>,
}

/// Where a group's writers are kept in `Cf::Meta`: one key per writer.
fn prefix(group: u64) -> Vec<u8> {
    crate::engine::keys::named(group, "dedup/")
}

fn key(group: u64, client: u64) -> Vec<u8> {
    let mut k = prefix(group);
    k.extend_from_slice(&client.to_be_bytes());
    k
}

fn range_end(group: u64) -> Vec<u8> {
    let mut k = prefix(group);
    k.extend_from_slice(&[0xff; 9]);
    k
}

impl DedupTable {
    /// The group's table as last written; none stored (older data dirs) is empty.
    pub fn load(engine: &dyn Engine, group: u64) -> crate::Result<Self> {
        let mut t = DedupTable::default();
        for (_, v) in engine.scan(Cf::Meta, &prefix(group), &range_end(group), usize::MAX)? {
            let (client, w): (u64, Writer) = decode(&v).map_err(crate::Error::Io)?;
            t.writers.insert(client, w);
        }
        Ok(t)
    }

    /// A table holding `writers` (a snapshot's), every one to be written.
    pub fn from_writers(writers: Vec<(u64, Writer)>) -> Self {
        let writers: BTreeMap<u64, Writer> = writers.into_iter().collect();
        DedupTable {
            dirty: writers.keys().copied().collect(),
            writers,
        }
    }

    /// Every writer, for a snapshot.
    pub fn writers(&self) -> Vec<(u64, Writer)> {
        self.writers.iter().map(|(c, w)| (*c, w.clone())).collect()
    }

    pub fn len(&self) -> usize {
        self.writers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writers.is_empty()
    }

    /// Takes in the write `id` of the entry at log `index`: notes what its writer finished,
    /// and says whether the write takes effect. `applied` records it once it did (a write
    /// the fence refused is not recorded: it took no effect).
    pub fn admit(&mut self, id: WriteId, index: u64) -> Verdict {
        if !self.writers.contains_key(&id.client) && self.writers.len() >= MAX_WRITERS {
            self.evict_longest_idle();
        }
        let w = self.writers.entry(id.client).or_default();
        w.last_index = index;
        w.low_water = w.low_water.max(id.first_incomplete);
        if id.seq >= w.low_water.saturating_add(SEQ_WINDOW) {
            // Further ahead than a writer ever runs: keep the newest window only.
            w.low_water = id.seq + 1 - SEQ_WINDOW;
        }
        let low = w.low_water;
        w.applied = w.applied.split_off(&low);
        self.dirty.insert(id.client);
        if id.seq < w.low_water || w.applied.contains(&id.seq) {
            Verdict::Duplicate
        } else {
            Verdict::Apply
        }
    }

    /// Records that write `id` (admitted) took effect.
    pub fn applied(&mut self, id: WriteId) {
        if let Some(w) = self.writers.get_mut(&id.client) {
            w.applied.insert(id.seq);
            self.dirty.insert(id.client);
        }
    }

    /// Run for every applied log index: every `SWEEP_EVERY` indices, forgets writers idle
    /// for over `IDLE_ENTRIES`.
    pub fn tick(&mut self, index: u64) {
        if !index.is_multiple_of(SWEEP_EVERY) || index < IDLE_ENTRIES {
            return;
        }
        let before = index - IDLE_ENTRIES;
        let idle: Vec<u64> = self
            .writers
            .iter()
            .filter(|(_, w)| w.last_index < before)
            .map(|(c, _)| *c)
            .collect();
        for c in idle {
            self.writers.remove(&c);
            self.dirty.insert(c);
        }
    }

    /// Drops the writer named longest ago (the smallest id among equals).
    fn evict_longest_idle(&mut self) {
        if let Some(c) = self
            .writers
            .iter()
            .min_by_key(|(c, w)| (w.last_index, **c))
            .map(|(c, _)| *c)
        {
            self.writers.remove(&c);
            self.dirty.insert(c);
        }
    }

    /// Adds the writers changed since the last call to `batch` (dropped ones deleted).
    pub fn write_changes(&mut self, group: u64, batch: &mut Batch) -> std::io::Result<()> {
        for c in std::mem::take(&mut self.dirty) {
            match self.writers.get(&c) {
                Some(w) => batch.put(Cf::Meta, key(group, c), crate::raft::encode(&(c, w))?),
                None => batch.delete(Cf::Meta, key(group, c)),
            }
        }
        Ok(())
    }

    /// Deletes every stored writer of `group` (before an install, or with the group).
    pub fn delete_all(group: u64, batch: &mut Batch) {
        batch.delete_range(Cf::Meta, prefix(group), range_end(group));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::MemEngine;

    fn id(client: u64, seq: u64, first_incomplete: u64) -> WriteId {
        WriteId::from_wire(client, seq, first_incomplete).unwrap()
    }

    /// Admits and, when it takes effect, records `id`; returns the verdict.
    fn apply(t: &mut DedupTable, id: WriteId, index: u64) -> Verdict {
        let v = t.admit(id, index);
        if v == Verdict::Apply {
            t.applied(id);
        }
        v
    }

    #[test]
    fn a_resend_after_completion_is_a_duplicate_and_client_zero_is_not_tracked() {
        assert_eq!(WriteId::from_wire(0, 5, 5), None);
        let mut t = DedupTable::default();
        assert_eq!(apply(&mut t, id(1, 5, 5), 10), Verdict::Apply);
        assert_eq!(
            apply(&mut t, id(2, 5, 5), 11),
            Verdict::Apply,
            "another writer"
        );
        assert_eq!(apply(&mut t, id(1, 5, 5), 12), Verdict::Duplicate);
        assert_eq!(apply(&mut t, id(1, 6, 5), 13), Verdict::Apply);
        assert_eq!(apply(&mut t, id(1, 6, 5), 14), Verdict::Duplicate);
    }

    #[test]
    fn out_of_order_writes_within_the_window_both_apply_once() {
        let mut t = DedupTable::default();
        // 7 overtakes 6 (both in flight, first_incomplete 6).
        assert_eq!(apply(&mut t, id(1, 7, 6), 1), Verdict::Apply);
        assert_eq!(apply(&mut t, id(1, 6, 6), 2), Verdict::Apply);
        assert_eq!(apply(&mut t, id(1, 7, 6), 3), Verdict::Duplicate);
        assert_eq!(apply(&mut t, id(1, 6, 6), 4), Verdict::Duplicate);
    }

    #[test]
    fn the_low_water_mark_drops_finished_writes_and_refuses_them() {
        let mut t = DedupTable::default();
        for seq in 1..=4 {
            apply(&mut t, id(1, seq, 1), seq);
        }
        assert_eq!(t.writers[&1].applied.len(), 4);
        // The writer finished everything below 4.
        assert_eq!(apply(&mut t, id(1, 5, 4), 5), Verdict::Apply);
        assert_eq!(t.writers[&1].applied, BTreeSet::from([4, 5]));
        // A late copy of 2 (never resent, but delayed in the network) is not applied.
        assert_eq!(apply(&mut t, id(1, 2, 2), 6), Verdict::Duplicate);
        assert_eq!(t.writers[&1].low_water, 4, "an older mark never lowers it");
        // A writer far ahead of its promise keeps only the newest window.
        let far = 5 + 2 * SEQ_WINDOW;
        assert_eq!(apply(&mut t, id(1, far, 4), 7), Verdict::Apply);
        assert_eq!(t.writers[&1].low_water, far + 1 - SEQ_WINDOW);
        assert_eq!(t.writers[&1].applied, BTreeSet::from([far]));
    }

    #[test]
    fn idle_writers_expire_by_log_index_and_the_cap_drops_the_longest_idle() {
        let mut t = DedupTable::default();
        apply(&mut t, id(1, 1, 1), 10);
        apply(&mut t, id(2, 1, 1), IDLE_ENTRIES + 5);
        // Not on a sweep index: nothing goes.
        t.tick(IDLE_ENTRIES + 11);
        assert_eq!(t.len(), 2);
        // The first sweep more than IDLE_ENTRIES after index 10.
        let sweep = (IDLE_ENTRIES + 11).next_multiple_of(SWEEP_EVERY);
        t.tick(sweep);
        assert_eq!(t.writers.keys().copied().collect::<Vec<_>>(), vec![2]);
        // Forgotten: its resend applies again (the documented bound).
        assert_eq!(apply(&mut t, id(1, 1, 1), sweep + 1), Verdict::Apply);

        let mut t = DedupTable::default();
        for c in 1..=MAX_WRITERS as u64 {
            apply(&mut t, id(c, 1, 1), 100 + c);
        }
        apply(&mut t, id(1, 2, 2), 10_000);
        apply(&mut t, id(9_999, 1, 1), 10_001);
        assert_eq!(t.len(), MAX_WRITERS);
        assert!(t.writers.contains_key(&1), "named recently");
        assert!(!t.writers.contains_key(&2), "the longest idle went");
    }

    #[test]
    fn the_table_round_trips_through_the_engine_and_a_snapshot() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let mut t = DedupTable::default();
        apply(&mut t, id(1, 5, 3), 1);
        apply(&mut t, id(u64::MAX, 9, 9), 2);
        let mut b = Batch::default();
        t.write_changes(7, &mut b).unwrap();
        engine.write(b, true).unwrap();
        assert!(DedupTable::load(engine.as_ref(), 8).unwrap().is_empty());
        let mut back = DedupTable::load(engine.as_ref(), 7).unwrap();
        assert_eq!(back.writers, t.writers);
        assert_eq!(apply(&mut back, id(1, 5, 3), 3), Verdict::Duplicate);

        let mut copy = DedupTable::from_writers(t.writers());
        assert_eq!(copy.writers, t.writers);
        let mut b = Batch::default();
        DedupTable::delete_all(7, &mut b);
        copy.write_changes(9, &mut b).unwrap();
        engine.write(b, true).unwrap();
        assert!(DedupTable::load(engine.as_ref(), 7).unwrap().is_empty());
        assert_eq!(
            DedupTable::load(engine.as_ref(), 9).unwrap().writers,
            t.writers
        );
    }
}
