//! The tests' fixture: a fault filesystem mounted over a fresh backing directory, unmounted and
//! removed on drop (also when a test fails), plus small file helpers.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use cairn_faultfs::FaultMount;

/// A mount at `<tmp>/mnt` over `<tmp>/backing`.
pub struct Fixture {
    // Dropped first: unmount before the directories go.
    pub mount: FaultMount,
    dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let mount =
            FaultMount::mount(&backing, &mnt).expect("mount faultfs (needs root and /dev/fuse)");
        Fixture { mount, dir }
    }

    /// A path in the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mount.mountpoint().join(rel)
    }

    /// A path in the backing directory: what is durable.
    pub fn backing(&self, rel: &str) -> PathBuf {
        self.dir.path().join("backing").join(rel)
    }

    /// Writes `data` at offset 0 of `rel` (created if missing), optionally fsyncing the file.
    pub fn write(&self, rel: &str, data: &[u8], fsync: bool) {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.path(rel))
            .unwrap();
        f.write_all(data).unwrap();
        if fsync {
            f.sync_all().unwrap();
        }
    }

    /// fsyncs the directory `rel` of the mount ("" is the root).
    pub fn fsync_dir(&self, rel: &str) {
        File::open(self.path(rel)).unwrap().sync_all().unwrap();
    }

    pub fn read(&self, rel: &str) -> Option<Vec<u8>> {
        read(&self.path(rel))
    }

    /// Creates `rel` with `data`, durable: file and directory fsynced.
    pub fn durable(&self, rel: &str, data: &[u8]) {
        self.write(rel, data, true);
        let dir = Path::new(rel)
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        self.fsync_dir(&dir);
    }
}

/// The content of a file, `None` when it does not exist.
pub fn read(path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("reading {}: {e}", path.display()),
    }
}
