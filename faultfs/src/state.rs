//! The filesystem's state behind one lock: the inode table, open handles, per-file page caches,
//! the undo journal and the faults; the file data operations and attributes live here.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, TimeOrNow};

use crate::cache::{Dirty, read_full};
use crate::faults::{Faults, Op};
use crate::journal::Journal;
use crate::nodes::{GRAVE_NAME, Nodes, ROOT_INO};

/// A callback's outcome: a value or the errno to answer.
pub type Res<T> = std::result::Result<T, i32>;

/// The errno of an I/O error (EIO when it has none).
pub fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// An open file: the backing file and how it was opened.
#[derive(Debug)]
pub(crate) struct Handle {
    pub ino: u64,
    pub file: File,
    /// `O_APPEND`: every write goes to the end, whatever offset the kernel sends.
    pub append: bool,
    /// `O_SYNC`/`O_DSYNC`: every write is made durable before it returns.
    pub sync: bool,
}

/// What a power loss took back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PowerlossReport {
    /// Files whose unsynced data was dropped.
    pub files: usize,
    /// Bytes of unsynced writes dropped.
    pub bytes: u64,
    /// Metadata undo steps applied (including ones that failed).
    pub undone: usize,
}

/// Everything the filesystem knows; one lock guards it.
#[derive(Debug)]
pub struct State {
    pub(crate) root: PathBuf,
    pub(crate) nodes: Nodes,
    pub(crate) journal: Journal,
    pub(crate) dirty: HashMap<u64, Dirty>,
    pub(crate) handles: HashMap<u64, Handle>,
    next_fh: u64,
    pub(crate) grave_seq: u64,
    pub faults: Faults,
}

impl State {
    /// A state over the backing directory `root`. The graveyard of a previous mount is emptied:
    /// what it held was unlinked, and that unlink now counts as durable.
    pub fn new(root: &Path) -> io::Result<State> {
        let root = root.canonicalize()?;
        let grave = root.join(GRAVE_NAME);
        match std::fs::remove_dir_all(&grave) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir(&grave)?;
        Ok(State {
            root,
            nodes: Nodes::default(),
            journal: Journal::default(),
            dirty: HashMap::new(),
            handles: HashMap::new(),
            next_fh: 1,
            grave_seq: 0,
            faults: Faults::default(),
        })
    }

    /// The backing path of `ino`.
    pub(crate) fn backing(&self, ino: u64) -> Res<PathBuf> {
        self.nodes
            .path(ino)
            .map(|p| self.root.join(p))
            .ok_or(libc::ENOENT)
    }

    /// The path of `name` in `parent` as faults match it: relative, without a leading `/`.
    pub(crate) fn rel(&self, parent: u64, name: Option<&OsStr>) -> String {
        let mut p = self.nodes.path(parent).unwrap_or_default();
        if let Some(name) = name {
            p.push(name);
        }
        p.to_string_lossy().into_owned()
    }

    /// EIO when a fault targets `op` on `name` in `parent` (or on `parent` itself).
    pub(crate) fn check(&self, op: Op, parent: u64, name: Option<&OsStr>) -> Res<()> {
        if self.faults.eio(op, &self.rel(parent, name)) {
            tracing::debug!(?op, path = %self.rel(parent, name), "injecting EIO");
            self.faults.count_injected();
            return Err(libc::EIO);
        }
        Ok(())
    }

    pub(crate) fn handle(&self, fh: u64) -> Res<&Handle> {
        self.handles.get(&fh).ok_or(libc::EBADF)
    }

    pub fn attr(&self, ino: u64) -> Res<FileAttr> {
        let meta = std::fs::symlink_metadata(self.backing(ino)?).map_err(errno)?;
        let size = self.dirty.get(&ino).map(Dirty::size);
        Ok(to_attr(ino, &meta, size))
    }

    pub fn lookup(&mut self, parent: u64, name: &OsStr) -> Res<FileAttr> {
        if parent == ROOT_INO && name == GRAVE_NAME {
            return Err(libc::ENOENT);
        }
        let path = self.backing(parent)?.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) => {
                let ino = self.nodes.get_or_insert(parent, name);
                let size = self.dirty.get(&ino).map(Dirty::size);
                Ok(to_attr(ino, &meta, size))
            }
            Err(e) => {
                self.nodes.remove_place(parent, name);
                Err(errno(e))
            }
        }
    }

    /// Opens the backing file of `ino` for a new handle.
    pub fn open(&mut self, ino: u64, flags: i32) -> Res<u64> {
        self.check(Op::Open, ino, None)?;
        let path = self.backing(ino)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .or_else(|_| File::open(&path))
            .map_err(errno)?;
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            let len = file.metadata().map_err(errno)?.len();
            self.dirty
                .entry(ino)
                .or_insert_with(|| Dirty::new(len))
                .truncate(0);
        }
        Ok(self.add_handle(ino, file, flags))
    }

    pub(crate) fn add_handle(&mut self, ino: u64, file: File, flags: i32) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        let handle = Handle {
            ino,
            file,
            append: flags & libc::O_APPEND != 0,
            sync: flags & (libc::O_SYNC | libc::O_DSYNC) != 0,
        };
        self.handles.insert(fh, handle);
        fh
    }

    pub fn release(&mut self, fh: u64) {
        self.handles.remove(&fh);
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Res<Vec<u8>> {
        let h = self.handle(fh)?;
        self.check(Op::Read, h.ino, None)?;
        match self.dirty.get(&h.ino) {
            Some(d) => d.read(&h.file, offset, u64::from(size)).map_err(errno),
            None => {
                let mut buf = vec![0; size as usize];
                let n = read_full(&h.file, &mut buf, offset).map_err(errno)?;
                buf.truncate(n);
                Ok(buf)
            }
        }
    }

    /// Keeps `data` in the file's page cache (written through at once for `O_SYNC` handles).
    pub fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> Res<u32> {
        let h = self.handle(fh)?;
        let (ino, append, sync) = (h.ino, h.append, h.sync);
        self.check(Op::Write, ino, None)?;
        if !self.faults.charge(data.len() as u64) {
            self.faults.count_injected();
            tracing::debug!(path = %self.rel(ino, None), "injecting ENOSPC");
            return Err(libc::ENOSPC);
        }
        let dirty = self.dirty_of(ino, fh)?;
        let offset = if append { dirty.size() } else { offset };
        dirty.write(offset, data);
        if sync {
            self.sync_file(fh, true)?;
        }
        Ok(data.len() as u32)
    }

    /// The page cache of `ino`, made (clean) from the handle's backing file if there is none.
    fn dirty_of(&mut self, ino: u64, fh: u64) -> Res<&mut Dirty> {
        if !self.dirty.contains_key(&ino) {
            let len = self.handle(fh)?.file.metadata().map_err(errno)?.len();
            self.dirty.insert(ino, Dirty::new(len));
        }
        Ok(self.dirty.get_mut(&ino).expect("inserted above"))
    }

    /// `fsync`/`fdatasync`: writes the file's cache through and syncs the backing file.
    pub fn fsync(&mut self, fh: u64, datasync: bool) -> Res<()> {
        let ino = self.handle(fh)?.ino;
        self.check(Op::Fsync, ino, None)?;
        if self.faults.lies_fsync(&self.rel(ino, None)) {
            return Ok(());
        }
        self.sync_file(fh, datasync)
    }

    fn sync_file(&mut self, fh: u64, datasync: bool) -> Res<()> {
        let h = self.handle(fh)?;
        let ino = h.ino;
        if let Some(d) = self.dirty.get(&ino) {
            d.write_through(&h.file).map_err(errno)?;
        }
        let synced = if datasync {
            h.file.sync_data()
        } else {
            h.file.sync_all()
        };
        synced.map_err(errno)?;
        self.dirty.remove(&ino);
        Ok(())
    }

    /// `fallocate`: mode 0 grows the size in the cache; KEEP_SIZE changes nothing visible.
    pub fn fallocate(&mut self, fh: u64, offset: u64, len: u64, mode: i32) -> Res<()> {
        let ino = self.handle(fh)?.ino;
        self.check(Op::Write, ino, None)?;
        match mode {
            0 => {
                self.dirty_of(ino, fh)?.extend(offset + len);
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(libc::EOPNOTSUPP),
        }
    }

    /// `setattr`: a size change goes to the page cache; mode, owner and times go to the
    /// backing file at once (they are not part of the power-loss model).
    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &mut self,
        ino: u64,
        fh: Option<u64>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> Res<FileAttr> {
        self.check(Op::Setattr, ino, None)?;
        let path = self.backing(ino)?;
        if let Some(size) = size {
            let len = std::fs::metadata(&path).map_err(errno)?.len();
            self.dirty
                .entry(ino)
                .or_insert_with(|| Dirty::new(len))
                .truncate(size);
        }
        if let Some(mode) = mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(errno)?;
        }
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&path, uid, gid).map_err(errno)?;
        }
        if atime.is_some() || mtime.is_some() {
            let file = match fh.and_then(|fh| self.handles.get(&fh)) {
                Some(h) => h.file.try_clone().map_err(errno)?,
                None => File::open(&path).map_err(errno)?,
            };
            let mut times = std::fs::FileTimes::new();
            if let Some(t) = atime {
                times = times.set_accessed(system_time(t));
            }
            if let Some(t) = mtime {
                times = times.set_modified(system_time(t));
            }
            file.set_times(times).map_err(errno)?;
        }
        self.attr(ino)
    }

    /// The entries of directory `ino`: (inode, kind, name), `.` and `..` first.
    pub fn readdir(&mut self, ino: u64) -> Res<Vec<(u64, FileType, OsString)>> {
        let path = self.backing(ino)?;
        let parent = self.nodes.place(ino).map_or(ROOT_INO, |(p, _)| p);
        let mut out = vec![
            (ino, FileType::Directory, ".".into()),
            (parent, FileType::Directory, "..".into()),
        ];
        for entry in std::fs::read_dir(&path).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let name = entry.file_name();
            if ino == ROOT_INO && name == GRAVE_NAME {
                continue;
            }
            let kind = entry.file_type().map_err(errno)?;
            let child = self.nodes.get_or_insert(ino, &name);
            out.push((child, file_type(kind), name));
        }
        Ok(out)
    }

    /// Bytes held in page caches, summed over files.
    pub fn unsynced_bytes(&self) -> u64 {
        self.dirty.values().map(Dirty::held).sum()
    }

    /// Drops every page cache and undoes every metadata operation not made durable.
    pub fn powerloss(&mut self) -> PowerlossReport {
        let report = PowerlossReport {
            files: self.dirty.len(),
            bytes: self.unsynced_bytes(),
            undone: self.undo_all(),
        };
        self.dirty.clear();
        tracing::info!(
            files = report.files,
            bytes = report.bytes,
            undone = report.undone,
            "power loss"
        );
        report
    }
}

fn system_time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn file_type(t: std::fs::FileType) -> FileType {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_socket() {
        FileType::Socket
    } else {
        FileType::RegularFile
    }
}

fn since_epoch(secs: i64, nsecs: i64) -> SystemTime {
    if secs < 0 {
        return UNIX_EPOCH;
    }
    UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
}

/// The kernel's view of a backing entry, with the cache's size when it has one.
fn to_attr(ino: u64, m: &Metadata, size: Option<u64>) -> FileAttr {
    let size = size.unwrap_or(m.len());
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: since_epoch(m.atime(), m.atime_nsec()),
        mtime: since_epoch(m.mtime(), m.mtime_nsec()),
        ctime: since_epoch(m.ctime(), m.ctime_nsec()),
        crtime: since_epoch(m.ctime(), m.ctime_nsec()),
        kind: file_type(m.file_type()),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
        flags: 0,
    }
}
