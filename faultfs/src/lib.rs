//! cairn-faultfs: a passthrough FUSE filesystem that keeps unsynced writes in memory so that a
//! simulated power loss drops them, and that injects disk faults (EIO, ENOSPC, slow fsync).
//!
//! # Durability rule
//!
//! The backing directory holds exactly what would survive a power loss right now:
//! - File data (writes, truncations, `fallocate` growth) stays in a per-file page cache
//!   until an `fsync`/`fdatasync` of that file (or a write on an `O_SYNC`/`O_DSYNC` handle)
//!   writes it to the backing file and syncs it. `close`, `flush`, `sync_file_range`, `sync`
//!   and `syncfs` make nothing durable.
//! - Namespace changes (create, mkdir, unlink, rmdir, rename) are applied to the backing
//!   directory at once and journaled. One is durable once every directory it changed has been
//!   fsynced since (a rename: both the source and the target directory). An fsync of a file
//!   never makes its name durable: a file created, written and fsynced whose directory was
//!   never fsynced disappears on power loss, data and all.
//! - A power loss drops every page cache and undoes the waiting namespace changes, newest
//!   first (an undone mkdir removes the directory with everything under it).
//! - Mode, owner and times are applied at once and are not undone.
//! - Unlinked and replaced entries wait in `.faultfs-undo/` in the backing root (hidden from
//!   the mount) until their directory's fsync; a new mount empties it (their unlinks count as
//!   durable). Hard links, symlinks, mknod and `RENAME_EXCHANGE` are not supported.
//!
//! # Faults
//!
//! Set through [`Controller`] or the control socket ([`control`]), they add up until cleared:
//! - `eio OP [GLOB]`: EIO on an operation ([`Op`]) on paths matching the glob (relative to the
//!   mount, `*` crossing `/`). A failed fsync leaves the file's data unsynced in memory, so a
//!   later fsync can still succeed and a power loss drops it.
//! - `enospc BYTES`: writes (and `O_SYNC` writes) that would take the bytes written from now
//!   past BYTES fail with ENOSPC, whole.
//! - `fsync-delay MS`: file and directory fsyncs answer after MS; other operations go on.
//! - `clear`: no faults (the caches and the journal are kept); `powerloss` is not a fault but
//!   the event above.

mod cache;
pub mod control;
mod error;
pub mod faults;
mod fs;
mod journal;
mod mount;
mod namespace;
mod nodes;
mod state;

pub use error::{Error, Result};
pub use faults::{Command, Op};
pub use mount::{Controller, FaultMount};
pub use state::PowerlossReport;
