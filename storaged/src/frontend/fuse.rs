//! The FUSE frontend: one mount per attached volume exposing a single regular file `disk`
//! backed by a [`BlockDevice`], served asynchronously so many requests are in flight at once.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fuser::{
    BackgroundSession, FileAttr, FileType, Filesystem, KernelConfig, MountOption, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow,
};
use nix::errno::Errno;
use nix::mount::{MntFlags, umount2};
use tokio::runtime::Handle;

use super::BlockDevice;
use crate::{Error, Result};

/// Name of the one file in every FUSE mount.
pub const DISK_FILE: &str = "disk";

const ROOT_INO: u64 = 1;
const DISK_INO: u64 = 2;
/// Largest read/write the kernel sends in one request (needs FUSE_MAX_PAGES).
const MAX_IO: u32 = 1 << 20;
/// How long an unmount waits for the session thread to see the connection close.
const UNMOUNT_DEADLINE: Duration = Duration::from_secs(5);

/// `FOPEN_PARALLEL_DIRECT_WRITES` (ABI 7.36); fuser only names it with a newer ABI feature.
const FOPEN_PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;

/// A mounted FUSE export. Dropping it unmounts too; [`FuseExport::unmount`] reports errors.
pub struct FuseExport {
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl std::fmt::Debug for FuseExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseExport")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

impl FuseExport {
    /// Mounts a filesystem at `mountpoint` (created if missing; a stale mount there is lazily
    /// unmounted first) whose file `disk` is `dev`. Callbacks complete on `rt`.
    pub fn mount(
        volume: &str,
        dev: Arc<dyn BlockDevice>,
        mountpoint: &Path,
        readonly: bool,
        rt: Handle,
    ) -> Result<Self> {
        std::fs::create_dir_all(mountpoint)
            .or_else(|e| {
                // A dead FUSE mount answers ENOTCONN; it is cleaned below.
                let dead = e.raw_os_error() == Some(Errno::ENOTCONN as i32);
                if dead || e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| {
                Error::Internal(format!(
                    "creating FUSE mountpoint {}: {e}",
                    mountpoint.display()
                ))
            })?;
        for stale in mounts_under(mountpoint)? {
            tracing::warn!(volume, mountpoint = %stale.display(), "lazily unmounting a stale mount");
            lazy_unmount(&stale)?;
        }
        let fs = DiskFs {
            dev,
            rt,
            readonly,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            created: SystemTime::now(),
        };
        let mut options = vec![
            MountOption::FSName(format!("cairn:{volume}")),
            MountOption::Subtype("cairn".into()),
            MountOption::DefaultPermissions,
            MountOption::AllowOther,
            MountOption::NoAtime,
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::NoExec,
        ];
        options.push(if readonly {
            MountOption::RO
        } else {
            MountOption::RW
        });
        let session = fuser::spawn_mount2(fs, mountpoint, &options).map_err(|e| {
            Error::Internal(format!("mounting FUSE at {}: {e}", mountpoint.display()))
        })?;
        tracing::info!(volume, mountpoint = %mountpoint.display(), readonly, "FUSE export mounted");
        Ok(FuseExport {
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The file to put a loop device on.
    pub fn disk_path(&self) -> PathBuf {
        self.mountpoint.join(DISK_FILE)
    }

    /// Whether the session has ended on its own (unmounted from outside, or the connection
    /// aborted through `/sys/fs/fuse/connections`).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Unmounts (lazily if still busy) and waits for the session thread to end. Blocking.
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let result = match umount2(&self.mountpoint, MntFlags::empty()) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EBUSY) => {
                tracing::warn!(mountpoint = %self.mountpoint.display(), "FUSE mount busy, unmounting lazily");
                lazy_unmount(&self.mountpoint)
            }
            Err(e) => Err(Error::Internal(format!(
                "unmounting FUSE at {}: {e}",
                self.mountpoint.display()
            ))),
        };
        // Dropping the rest of the session (its own unmount guard) before a new mount can reuse
        // the mountpoint; the thread ends once the kernel closes the connection.
        let guard = { session }.guard;
        let deadline = Instant::now() + UNMOUNT_DEADLINE;
        while !guard.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if guard.is_finished() {
            match guard.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "FUSE session ended with an error")
                }
                Err(_) => {
                    tracing::error!(mountpoint = %self.mountpoint.display(), "FUSE session thread panicked")
                }
            }
        } else {
            tracing::warn!(mountpoint = %self.mountpoint.display(), "FUSE session still draining; leaving its thread");
        }
        result
    }
}

impl Drop for FuseExport {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::error!(mountpoint = %self.mountpoint.display(), error = %e, "unmount on drop failed");
        }
    }
}

/// Detaches the mount at `path` now and lets the kernel finish it when unused (`umount -l`).
pub fn lazy_unmount(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::Internal(format!(
            "lazily unmounting {}: {e}",
            path.display()
        ))),
    }
}

/// Mount points at or below `dir`, deepest first, from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let text = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(t) => t,
        Err(e) => {
            return Err(Error::Internal(format!(
                "reading /proc/self/mountinfo: {e}"
            )));
        }
    };
    let dir = std::path::absolute(dir)?;
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(cairn_proto::mountinfo::unescape(m)))
        .filter(|m| m.starts_with(&dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    Ok(out)
}

/// The filesystem: `/` holding `/disk`.
struct DiskFs {
    dev: Arc<dyn BlockDevice>,
    rt: Handle,
    readonly: bool,
    uid: u32,
    gid: u32,
    created: SystemTime,
}

impl DiskFs {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = match ino {
            ROOT_INO => (FileType::Directory, 0o755, 0, 2),
            DISK_INO => (
                FileType::RegularFile,
                if self.readonly { 0o400 } else { 0o600 },
                self.dev.size(),
                1,
            ),
            _ => return None,
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            crtime: self.created,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Runs `op` on the runtime; `done` replies with its outcome (errors as `errno_of`).
    fn spawn<T, F, R>(&self, what: &'static str, op: F, done: R)
    where
        F: Future<Output = Result<T>> + Send + 'static,
        R: FnOnce(std::result::Result<T, i32>) + Send + 'static,
        T: Send + 'static,
    {
        self.rt.spawn(async move {
            let res = op.await.map_err(|e| {
                tracing::warn!(op = what, error = %e, "FUSE request failed");
                super::errno_of(&e)
            });
            done(res);
        });
    }
}

/// Converts a FUSE offset and length to a checked range within `size`.
fn range(offset: i64, len: u64, size: u64) -> std::result::Result<(u64, u64), i32> {
    let off = u64::try_from(offset).map_err(|_| Errno::EINVAL as i32)?;
    off.checked_add(len).ok_or(Errno::EINVAL as i32)?;
    crate::chunks::check_bounds(off, len, size).map_err(|_| Errno::ENOSPC as i32)?;
    Ok((off, len))
}

impl Filesystem for DiskFs {
    fn init(
        &mut self,
        _req: &Request<'_>,
        config: &mut KernelConfig,
    ) -> std::result::Result<(), i32> {
        // Async direct I/O lets a loop device keep many requests in flight.
        if config
            .add_capabilities(fuser::consts::FUSE_ASYNC_DIO)
            .is_err()
        {
            tracing::warn!("kernel lacks FUSE_ASYNC_DIO; direct I/O will be synchronous");
        }
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_background(256);
        let _ = config.set_congestion_threshold(192);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.attr(DISK_INO) {
            Some(attr) if parent == ROOT_INO && name == DISK_FILE => {
                reply.entry(&Duration::ZERO, &attr, 0)
            }
            _ => reply.error(Errno::ENOENT as i32),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&Duration::ZERO, &attr),
            None => reply.error(Errno::ENOENT as i32),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        // Ownership and times are fixed; the size belongs to the volume, not to truncate(2).
        match self.attr(ino) {
            Some(attr) if size.is_none_or(|s| s == attr.size) => reply.attr(&Duration::ZERO, &attr),
            Some(_) => reply.error(Errno::EPERM as i32),
            None => reply.error(Errno::ENOENT as i32),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if ino != DISK_INO {
            return reply.error(Errno::EISDIR as i32);
        }
        if self.readonly && flags & nix::libc::O_ACCMODE != nix::libc::O_RDONLY {
            return reply.error(Errno::EROFS as i32);
        }
        // Direct I/O: the page cache above the loop device already caches; do not cache twice.
        // Parallel direct writes: the kernel need not hold the inode lock across a write.
        reply.opened(
            0,
            fuser::consts::FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES,
        );
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        if ino != DISK_INO {
            return reply.error(Errno::EISDIR as i32);
        }
        let dev_size = self.dev.size();
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(Errno::EINVAL as i32);
        };
        if off >= dev_size {
            return reply.data(&[]);
        }
        let len = u64::from(size).min(dev_size - off) as u32;
        let dev = self.dev.clone();
        self.spawn(
            "read",
            async move { super::read_at(&*dev, off, len).await },
            move |r| match r {
                Ok(buf) => reply.data(&buf),
                Err(e) => reply.error(e),
            },
        );
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        if ino != DISK_INO {
            return reply.error(Errno::EISDIR as i32);
        }
        if self.readonly {
            return reply.error(Errno::EROFS as i32);
        }
        let (off, len) = match range(offset, data.len() as u64, self.dev.size()) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let sync = flags & (nix::libc::O_SYNC | nix::libc::O_DSYNC) != 0;
        let data = Bytes::copy_from_slice(data);
        let dev = self.dev.clone();
        let op = async move {
            super::write_at(&*dev, off, data).await?;
            if sync { dev.flush().await } else { Ok(()) }
        };
        self.spawn("write", op, move |r| match r {
            Ok(()) => reply.written(len as u32),
            Err(e) => reply.error(e),
        });
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        self.fsync_inner("flush", reply);
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.fsync_inner("fsync", reply);
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino != DISK_INO {
            return reply.error(Errno::EISDIR as i32);
        }
        if self.readonly {
            return reply.error(Errno::EROFS as i32);
        }
        let Ok(length) = u64::try_from(length) else {
            return reply.error(Errno::EINVAL as i32);
        };
        let (off, len) = match range(offset, length, self.dev.size()) {
            Ok(r) => r,
            Err(e) => {
                return reply.error(if mode & FALLOC_FL_KEEP_SIZE != 0 {
                    Errno::EINVAL as i32
                } else {
                    e
                });
            }
        };
        let dev = self.dev.clone();
        match mode & !FALLOC_FL_KEEP_SIZE {
            // Thin provisioning: allocation inside the device is a no-op.
            0 => reply.ok(),
            FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE => self.spawn(
                "fallocate",
                async move { super::zero_range(&*dev, off, len).await },
                move |r| match r {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(e),
                },
            ),
            _ => reply.error(Errno::EOPNOTSUPP as i32),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT_INO {
            return reply.error(Errno::ENOTDIR as i32);
        }
        let entries = [
            (ROOT_INO, FileType::Directory, "."),
            (ROOT_INO, FileType::Directory, ".."),
            (DISK_INO, FileType::RegularFile, DISK_FILE),
        ];
        let skip = usize::try_from(offset).unwrap_or(0);
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(skip) {
            if reply.add(*ino, (i + 1) as i64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let blocks = self.dev.size() / 4096;
        reply.statfs(blocks, 0, 0, 2, 0, 4096, 255, 4096);
    }
}

impl DiskFs {
    fn fsync_inner(&self, what: &'static str, reply: ReplyEmpty) {
        let dev = self.dev.clone();
        self.spawn(what, async move { dev.flush().await }, move |r| match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        });
    }
}

/// Whether `path` answers a stat: false for a missing file and for a dead FUSE connection
/// (`ENOTCONN`), which is what a mount left by a previous storaged process looks like.
pub fn is_alive(path: &Path) -> bool {
    std::fs::metadata(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked() {
        assert_eq!(range(0, 512, 1024), Ok((0, 512)));
        assert_eq!(range(-1, 512, 1024), Err(Errno::EINVAL as i32));
        assert_eq!(range(1000, 512, 1024), Err(Errno::ENOSPC as i32));
    }
}
