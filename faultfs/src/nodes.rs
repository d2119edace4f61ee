//! The inode table: each inode number the kernel knows names a (parent, name) place, so a
//! rename moves one entry and paths are resolved by walking up to the root.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

pub const ROOT_INO: u64 = 1;
/// The hidden directory (in the backing root) holding unlinked entries until their unlink is
/// durable, so that a power loss can bring them back.
pub const GRAVE_INO: u64 = 2;
pub const GRAVE_NAME: &str = ".faultfs-undo";

#[derive(Debug)]
struct Node {
    parent: u64,
    name: OsString,
}

/// Inode numbers ↔ places. Numbers are never reused while mounted.
#[derive(Debug)]
pub struct Nodes {
    by_ino: HashMap<u64, Node>,
    by_place: HashMap<(u64, OsString), u64>,
    next: u64,
}

impl Default for Nodes {
    fn default() -> Self {
        let mut nodes = Nodes {
            by_ino: HashMap::new(),
            by_place: HashMap::new(),
            next: GRAVE_INO + 1,
        };
        nodes.insert_at(GRAVE_INO, ROOT_INO, OsStr::new(GRAVE_NAME));
        nodes
    }
}

impl Nodes {
    fn insert_at(&mut self, ino: u64, parent: u64, name: &OsStr) {
        self.by_place.insert((parent, name.to_owned()), ino);
        self.by_ino.insert(
            ino,
            Node {
                parent,
                name: name.to_owned(),
            },
        );
    }

    /// The inode at `name` in `parent`, if known.
    pub fn get(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.by_place.get(&(parent, name.to_owned())).copied()
    }

    /// The inode at `name` in `parent`, numbered now if new.
    pub fn get_or_insert(&mut self, parent: u64, name: &OsStr) -> u64 {
        if let Some(ino) = self.get(parent, name) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.insert_at(ino, parent, name);
        ino
    }

    /// Where `ino` sits: its parent and name.
    pub fn place(&self, ino: u64) -> Option<(u64, OsString)> {
        self.by_ino.get(&ino).map(|n| (n.parent, n.name.clone()))
    }

    /// The path of `ino` relative to the backing root (empty for the root).
    pub fn path(&self, ino: u64) -> Option<PathBuf> {
        let mut parts = Vec::new();
        let mut at = ino;
        while at != ROOT_INO {
            let node = self.by_ino.get(&at)?;
            parts.push(node.name.as_os_str());
            at = node.parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        Some(parts.iter().rev().collect())
    }

    /// Moves `ino` to `name` in `parent`, forgetting whatever inode was there.
    pub fn relocate(&mut self, ino: u64, parent: u64, name: &OsStr) {
        if let Some(old) = self.by_ino.remove(&ino) {
            self.by_place.remove(&(old.parent, old.name));
        }
        if let Some(displaced) = self.by_place.remove(&(parent, name.to_owned())) {
            self.by_ino.remove(&displaced);
        }
        self.insert_at(ino, parent, name);
    }

    /// Forgets `ino` (its entry is gone from the backing directory).
    pub fn remove(&mut self, ino: u64) {
        if let Some(old) = self.by_ino.remove(&ino) {
            self.by_place.remove(&(old.parent, old.name));
        }
    }

    /// Forgets the entry at `name` in `parent`, if any.
    pub fn remove_place(&mut self, parent: u64, name: &OsStr) {
        if let Some(ino) = self.by_place.remove(&(parent, name.to_owned())) {
            self.by_ino.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renaming_a_directory_moves_its_children_paths() {
        let mut n = Nodes::default();
        let d = n.get_or_insert(ROOT_INO, OsStr::new("d"));
        let f = n.get_or_insert(d, OsStr::new("f"));
        assert_eq!(n.path(f).unwrap(), PathBuf::from("d/f"));
        n.relocate(d, ROOT_INO, OsStr::new("e"));
        assert_eq!(n.path(f).unwrap(), PathBuf::from("e/f"));
        assert_eq!(n.get(ROOT_INO, OsStr::new("d")), None);
        assert_eq!(n.get_or_insert(d, OsStr::new("f")), f);
        assert_eq!(n.path(ROOT_INO).unwrap(), PathBuf::new());
        assert_eq!(n.path(GRAVE_INO).unwrap(), PathBuf::from(GRAVE_NAME));
    }

    #[test]
    fn relocating_over_an_entry_forgets_it() {
        let mut n = Nodes::default();
        let a = n.get_or_insert(ROOT_INO, OsStr::new("a"));
        let b = n.get_or_insert(ROOT_INO, OsStr::new("b"));
        n.relocate(a, ROOT_INO, OsStr::new("b"));
        assert_eq!(n.get(ROOT_INO, OsStr::new("b")), Some(a));
        assert_eq!(n.path(b), None);
        n.remove(a);
        assert_eq!(n.path(a), None);
    }
}
