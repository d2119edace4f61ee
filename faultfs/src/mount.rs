//! Mounting: [`FaultMount`] owns a live FUSE session over a backing directory and unmounts on drop;
//! [`Controller`] injects faults and power losses into it from any thread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, MountOption};
use nix::errno::Errno;
use nix::mount::{MntFlags, umount2};

use crate::faults::{Command, Op};
use crate::fs::{FaultFs, lock};
use crate::state::{PowerlossReport, State};
use crate::{Error, Result};

/// How long an unmount waits for the session thread to see the connection close.
const UNMOUNT_DEADLINE: Duration = Duration::from_secs(5);

/// A handle on the faults and the page caches of one mount; cheap to clone.
#[derive(Clone, Debug)]
pub struct Controller {
    state: Arc<Mutex<State>>,
}

impl Controller {
    /// Drops every unsynced byte and undoes every metadata operation whose directory was not
    /// fsynced. Kill the processes using the mount first: their later writes would land.
    pub fn powerloss(&self) -> PowerlossReport {
        lock(&self.state).powerloss()
    }

    /// Answers EIO to `op` on paths (relative to the mount, no leading `/`) matching `glob`,
    /// or on every path when `glob` is `None`. Faults add up until [`Controller::clear`].
    pub fn eio(&self, op: Op, glob: Option<&str>) {
        lock(&self.state)
            .faults
            .add_eio(op, glob.map(str::to_string));
    }

    /// Answers ENOSPC to any write that would take the bytes written from now over `bytes`.
    pub fn enospc(&self, bytes: u64) {
        lock(&self.state).faults.set_enospc(bytes);
    }

    /// Delays every file and directory fsync by `delay` (zero: none).
    pub fn fsync_delay(&self, delay: Duration) {
        lock(&self.state).faults.set_fsync_delay(delay);
    }

    /// Removes every injected fault; the page caches and the journal are kept.
    pub fn clear(&self) {
        lock(&self.state).faults.clear();
    }

    /// Fsyncs of files matching `glob` (every file for `None`) answer success and make nothing
    /// durable, until [`Controller::clear`]: a disk that ignores cache flushes, to show that a
    /// chaos run catches the writes it loses.
    pub fn lie_fsync(&self, glob: Option<&str>) {
        lock(&self.state)
            .faults
            .add_lie_fsync(glob.map(str::to_string));
    }

    /// Operations answered EIO or ENOSPC since the faults were last cleared.
    pub fn errors_injected(&self) -> u64 {
        lock(&self.state).faults.injected()
    }

    /// Bytes written and not yet made durable.
    pub fn unsynced_bytes(&self) -> u64 {
        lock(&self.state).unsynced_bytes()
    }

    /// Metadata operations still waiting for a directory fsync.
    pub fn pending_ops(&self) -> usize {
        lock(&self.state).journal.len()
    }

    /// Carries out a control command; returns the line to answer.
    pub fn apply(&self, command: &Command) -> String {
        match command {
            Command::Powerloss => {
                let r = self.powerloss();
                format!("ok files={} bytes={} undone={}", r.files, r.bytes, r.undone)
            }
            Command::Eio { op, glob } => {
                self.eio(*op, glob.as_deref());
                "ok".into()
            }
            Command::Enospc(bytes) => {
                self.enospc(*bytes);
                "ok".into()
            }
            Command::FsyncDelay(delay) => {
                self.fsync_delay(*delay);
                "ok".into()
            }
            Command::Clear => {
                self.clear();
                "ok".into()
            }
            Command::Status => format!(
                "ok unsynced_bytes={} pending_ops={}",
                self.unsynced_bytes(),
                self.pending_ops()
            ),
        }
    }
}

/// A mounted fault filesystem. Dropping it unmounts; [`FaultMount::unmount`] reports errors.
/// It dereferences to its [`Controller`].
pub struct FaultMount {
    mountpoint: PathBuf,
    controller: Controller,
    session: Option<BackgroundSession>,
}

impl std::fmt::Debug for FaultMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultMount")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

impl std::ops::Deref for FaultMount {
    type Target = Controller;
    fn deref(&self) -> &Controller {
        &self.controller
    }
}

impl FaultMount {
    /// Mounts the fault filesystem over `backing` at `mountpoint` (both must exist). Needs root.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<FaultMount> {
        let state = State::new(backing).map_err(|e| Error::io(backing, e))?;
        let state = Arc::new(Mutex::new(state));
        let fs = FaultFs {
            state: Arc::clone(&state),
        };
        let options = [
            MountOption::FSName("cairn-faultfs".into()),
            MountOption::Subtype("cairn-faultfs".into()),
            MountOption::DefaultPermissions,
            MountOption::AllowOther,
            MountOption::RW,
        ];
        let session = fuser::spawn_mount2(fs, mountpoint, &options).map_err(|e| Error::Mount {
            path: mountpoint.to_path_buf(),
            source: e,
        })?;
        tracing::info!(backing = %backing.display(), mountpoint = %mountpoint.display(), "faultfs mounted");
        Ok(FaultMount {
            mountpoint: mountpoint.to_path_buf(),
            controller: Controller { state },
            session: Some(session),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// A handle that outlives borrows of the mount (for a control server thread).
    pub fn controller(&self) -> Controller {
        self.controller.clone()
    }

    /// Unmounts (lazily if busy) and waits, bounded, for the session thread to end.
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let flags = match umount2(&self.mountpoint, MntFlags::empty()) {
            Err(Errno::EBUSY) => MntFlags::MNT_DETACH,
            _ => MntFlags::empty(),
        };
        let result = match flags.is_empty() {
            true => Ok(()),
            false => match umount2(&self.mountpoint, flags) {
                Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(Error::Mount {
                    path: self.mountpoint.clone(),
                    source: e.into(),
                }),
            },
        };
        let guard = { session }.guard;
        let deadline = Instant::now() + UNMOUNT_DEADLINE;
        while !guard.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if guard.is_finished() {
            if let Ok(Err(e)) = guard.join() {
                tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "FUSE session ended with an error");
            }
        } else {
            tracing::warn!(mountpoint = %self.mountpoint.display(), "FUSE session still draining; leaving its thread");
        }
        tracing::info!(mountpoint = %self.mountpoint.display(), "faultfs unmounted");
        result
    }
}

impl Drop for FaultMount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::error!(mountpoint = %self.mountpoint.display(), error = %e, "unmount on drop failed");
        }
    }
}
