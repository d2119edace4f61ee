//! The undo journal of metadata operations not yet made durable: each entry waits for an fsync
//! of every directory it changed; a power loss undoes the waiting entries, newest first.

use std::collections::BTreeSet;
use std::ffi::OsString;

/// How to take back one step of a metadata operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// A created file or directory: remove it (a directory with everything under it).
    Remove { ino: u64 },
    /// A moved entry (renamed, or unlinked into the graveyard): move it back to this place.
    MoveBack {
        ino: u64,
        parent: u64,
        name: OsString,
    },
}

/// One metadata operation: the directories whose fsync it waits for and its undo steps.
#[derive(Debug)]
struct Entry {
    waiting: BTreeSet<u64>,
    /// Applied last to first.
    undo: Vec<Undo>,
}

/// The metadata operations that a power loss would take back, in the order they were done.
#[derive(Debug, Default)]
pub struct Journal {
    entries: Vec<Entry>,
}

impl Journal {
    /// Records an operation that changed the directories `dirs`.
    pub fn record(&mut self, dirs: &[u64], undo: Vec<Undo>) {
        self.entries.push(Entry {
            waiting: dirs.iter().copied().collect(),
            undo,
        });
    }

    /// An fsync of directory `dir`: entries that waited only for it become durable. Returns
    /// their undo steps, so the caller can drop what they kept (graveyard entries).
    pub fn sync_dir(&mut self, dir: u64) -> Vec<Undo> {
        let mut durable = Vec::new();
        self.entries.retain_mut(|e| {
            e.waiting.remove(&dir);
            if e.waiting.is_empty() {
                durable.append(&mut e.undo);
                false
            } else {
                true
            }
        });
        durable
    }

    /// Empties the journal for a power loss: every undo step, in the order to apply them.
    pub fn take_undo(&mut self) -> Vec<Undo> {
        std::mem::take(&mut self.entries)
            .into_iter()
            .rev()
            .flat_map(|e| e.undo.into_iter().rev())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn back(ino: u64) -> Undo {
        Undo::MoveBack {
            ino,
            parent: 1,
            name: "x".into(),
        }
    }

    #[test]
    fn an_entry_is_durable_once_every_directory_it_changed_is_synced() {
        let mut j = Journal::default();
        j.record(&[1], vec![Undo::Remove { ino: 10 }]);
        j.record(&[1, 5], vec![back(11)]);
        j.record(&[5], vec![Undo::Remove { ino: 12 }]);
        assert_eq!(j.sync_dir(1), vec![Undo::Remove { ino: 10 }]);
        assert_eq!(j.len(), 2);
        assert_eq!(j.sync_dir(7), vec![]);
        assert_eq!(j.sync_dir(5), vec![back(11), Undo::Remove { ino: 12 }]);
        assert_eq!(j.len(), 0);
    }

    #[test]
    fn power_loss_undoes_newest_first_and_steps_in_reverse() {
        let mut j = Journal::default();
        j.record(&[1], vec![Undo::Remove { ino: 10 }]);
        j.record(&[1], vec![back(20), back(21)]);
        assert_eq!(
            j.take_undo(),
            vec![back(21), back(20), Undo::Remove { ino: 10 }]
        );
        assert_eq!(j.len(), 0);
    }
}
