//! The metadata operations (create, mkdir, unlink, rmdir, rename, directory fsync): applied to
//! the backing directory at once, journaled for undo, and undone on a power loss.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

use fuser::FileAttr;

use crate::faults::Op;
use crate::journal::Undo;
use crate::nodes::{GRAVE_INO, GRAVE_NAME, ROOT_INO};
use crate::state::{Res, State, errno};

impl State {
    /// Refuses names that would reach the graveyard.
    fn guard_name(parent: u64, name: &OsStr) -> Res<()> {
        if parent == ROOT_INO && name == GRAVE_NAME {
            return Err(libc::EPERM);
        }
        Ok(())
    }

    /// Creates and opens a regular file; its name is durable once `parent` is fsynced.
    pub fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Res<(FileAttr, u64)> {
        Self::guard_name(parent, name)?;
        self.check(Op::Create, parent, Some(name))?;
        let path = self.backing(parent)?.join(name);
        let existed = std::fs::symlink_metadata(&path).is_ok();
        if existed && flags & libc::O_EXCL != 0 {
            return Err(libc::EEXIST);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(mode & !umask & 0o7777)
            .open(&path)
            .map_err(errno)?;
        let ino = self.nodes.get_or_insert(parent, name);
        if !existed {
            self.journal.record(&[parent], vec![Undo::Remove { ino }]);
        }
        let fh = self.add_handle(ino, file, flags);
        if existed && flags & libc::O_TRUNC != 0 {
            self.setattr(ino, Some(fh), None, None, None, Some(0), None, None)?;
        }
        Ok((self.attr(ino)?, fh))
    }

    /// Creates a directory; it is durable once `parent` is fsynced.
    pub fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32, umask: u32) -> Res<FileAttr> {
        Self::guard_name(parent, name)?;
        self.check(Op::Mkdir, parent, Some(name))?;
        let path = self.backing(parent)?.join(name);
        std::fs::DirBuilder::new()
            .mode(mode & !umask & 0o7777)
            .create(&path)
            .map_err(errno)?;
        let ino = self.nodes.get_or_insert(parent, name);
        self.journal.record(&[parent], vec![Undo::Remove { ino }]);
        self.attr(ino)
    }

    /// `unlink` (`dir` false) or `rmdir` (`dir` true): the entry moves to the graveyard until
    /// `parent` is fsynced.
    pub fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Res<()> {
        Self::guard_name(parent, name)?;
        self.check(if dir { Op::Rmdir } else { Op::Unlink }, parent, Some(name))?;
        let path = self.backing(parent)?.join(name);
        let meta = std::fs::symlink_metadata(&path).map_err(errno)?;
        match (dir, meta.is_dir()) {
            (true, false) => return Err(libc::ENOTDIR),
            (false, true) => return Err(libc::EISDIR),
            (true, true) if !is_empty_dir(&path).map_err(errno)? => return Err(libc::ENOTEMPTY),
            _ => {}
        }
        let ino = self.nodes.get_or_insert(parent, name);
        self.bury(ino)?;
        self.journal.record(
            &[parent],
            vec![Undo::MoveBack {
                ino,
                parent,
                name: name.to_owned(),
            }],
        );
        Ok(())
    }

    /// Moves `ino` into the graveyard, where a power loss can find it again.
    fn bury(&mut self, ino: u64) -> Res<()> {
        self.grave_seq += 1;
        let slot = std::ffi::OsString::from(self.grave_seq.to_string());
        let to = self.backing(GRAVE_INO)?.join(&slot);
        std::fs::rename(self.backing(ino)?, to).map_err(errno)?;
        self.nodes.relocate(ino, GRAVE_INO, &slot);
        Ok(())
    }

    /// `rename`: an entry replaced at the target goes to the graveyard; both directories must
    /// be fsynced for the rename to be durable. `RENAME_EXCHANGE` is not supported.
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Res<()> {
        Self::guard_name(parent, name)?;
        Self::guard_name(newparent, newname)?;
        self.check(Op::Rename, parent, Some(name))?;
        self.check(Op::Rename, newparent, Some(newname))?;
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(libc::EINVAL);
        }
        let from = self.backing(parent)?.join(name);
        let to = self.backing(newparent)?.join(newname);
        let src = std::fs::symlink_metadata(&from).map_err(errno)?;
        if to.starts_with(&from) && to != from {
            return Err(libc::EINVAL);
        }
        let mut undo = Vec::new();
        if let Ok(dst) = std::fs::symlink_metadata(&to) {
            if from == to {
                return Ok(());
            }
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(libc::EEXIST);
            }
            match (src.is_dir(), dst.is_dir()) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                (true, true) if !is_empty_dir(&to).map_err(errno)? => return Err(libc::ENOTEMPTY),
                _ => {}
            }
            let target = self.nodes.get_or_insert(newparent, newname);
            self.bury(target)?;
            undo.push(Undo::MoveBack {
                ino: target,
                parent: newparent,
                name: newname.to_owned(),
            });
        }
        let ino = self.nodes.get_or_insert(parent, name);
        if let Err(e) = std::fs::rename(&from, &to) {
            // Put the replaced target back before answering.
            for step in undo.into_iter().rev() {
                self.apply(step);
            }
            return Err(errno(e));
        }
        self.nodes.relocate(ino, newparent, newname);
        undo.push(Undo::MoveBack {
            ino,
            parent,
            name: name.to_owned(),
        });
        self.journal.record(&[parent, newparent], undo);
        Ok(())
    }

    /// `fsyncdir`: the metadata operations waiting only for this directory become durable,
    /// and what they buried is deleted for good.
    pub fn fsyncdir(&mut self, ino: u64) -> Res<()> {
        self.check(Op::Fsyncdir, ino, None)?;
        let path = self.backing(ino)?;
        std::fs::File::open(&path)
            .and_then(|d| d.sync_all())
            .map_err(errno)?;
        for step in self.journal.sync_dir(ino) {
            let Undo::MoveBack { ino: buried, .. } = step else {
                continue;
            };
            if self
                .nodes
                .place(buried)
                .is_some_and(|(p, _)| p == GRAVE_INO)
            {
                if let Err(e) = self.backing(buried).map(|p| remove_all(&p)) {
                    tracing::warn!(ino = buried, errno = e, "dropping a buried entry");
                }
                self.nodes.remove(buried);
            }
        }
        Ok(())
    }

    /// Applies every undo step of the journal (power loss); returns how many there were.
    pub(crate) fn undo_all(&mut self) -> usize {
        let steps = self.journal.take_undo();
        let n = steps.len();
        for step in steps {
            self.apply(step);
        }
        n
    }

    /// Applies one undo step, logging (not failing) when the backing directory refuses it.
    fn apply(&mut self, step: Undo) {
        let done = match &step {
            Undo::Remove { ino } => self
                .backing(*ino)
                .and_then(|p| remove_all(&p).map_err(errno)),
            Undo::MoveBack { ino, parent, name } => self.backing(*ino).and_then(|from| {
                let to = self.backing(*parent)?.join(name);
                std::fs::rename(from, to).map_err(errno)
            }),
        };
        match (&step, done) {
            (Undo::Remove { ino }, Ok(())) => self.nodes.remove(*ino),
            (Undo::MoveBack { ino, parent, name }, Ok(())) => {
                self.nodes.relocate(*ino, *parent, name)
            }
            (_, Err(errno)) => tracing::warn!(?step, errno, "undo step failed"),
        }
    }
}

fn is_empty_dir(path: &std::path::Path) -> io::Result<bool> {
    Ok(std::fs::read_dir(path)?.next().is_none())
}

/// Removes a file, or a directory with everything under it.
fn remove_all(path: &std::path::Path) -> io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}
