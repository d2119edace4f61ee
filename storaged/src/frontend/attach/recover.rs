//! Start-up reconciliation of the attach manager with what the previous storaged process
//! left: frontend processes and loop devices adopted, dead FUSE mounts cleaned and re-made.

use std::path::PathBuf;

use cairn_proto::cairn::v1::Frontend;

use super::super::process::FrontendProcess;
use super::super::{fuse, loopdev};
use super::{
    AttachManager, Attached, Exposure, Record, RecoveryReport, attachment, fuse_attachment,
};
use crate::Result;

impl AttachManager {
    /// Reconciles with what a previous storaged process left behind; call once at startup,
    /// before serving:
    /// - FUSE frontend processes that still run and answer as the recorded frontend are adopted
    ///   with the loop device on their `disk` file (attached again if it is gone): their
    ///   volumes' filesystems never noticed the restart;
    /// - loop devices whose backing file is under `<run_dir>/fuse/` and that no adopted
    ///   frontend serves are detached (their FUSE server died, so every I/O on them fails; a
    ///   filesystem still mounted on one must be unstaged and staged again);
    /// - mounts under `<run_dir>/fuse/` that no adopted frontend serves are lazily unmounted;
    /// - a recorded frontend that died is started again (a new mount and loop device);
    /// - local-volume attachments whose loop device still backs the same pool file are adopted;
    ///   the others, and NBD attachments, are dropped from the table.
    ///
    /// Attachments made by this process are left alone.
    #[tracing::instrument(skip(self), err)]
    pub async fn recover(&self) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let records = self.load().await;
        let fuse_dir = std::path::absolute(self.fuse_dir())?;
        let loops = loopdev::list().await?;
        let mut restart: Vec<Record> = Vec::new();
        for r in &records {
            let (Some(pid), Some(control)) = (r.pid, r.control.clone()) else {
                continue;
            };
            if self.table_lock().contains_key(&r.volume) {
                continue;
            }
            match self.adopt_frontend(r, pid, control).await {
                Ok(true) => report.frontends.push(r.volume.clone()),
                Ok(false) => restart.push(r.clone()),
                Err(e) => {
                    tracing::warn!(volume = %r.volume, error = %e, "cannot adopt the frontend process");
                    restart.push(r.clone());
                }
            }
        }
        let live: Vec<PathBuf> = self
            .table_lock()
            .values()
            .filter_map(|a| match &a.exposure {
                Exposure::Fuse { loop_dev, .. }
                | Exposure::Local { loop_dev, .. }
                | Exposure::Process { loop_dev, .. } => Some(loop_dev.clone()),
                Exposure::Nbd { .. } => None,
            })
            .collect();
        for l in &loops {
            let Some(backing) = l.backing_path() else {
                continue;
            };
            if backing.starts_with(&fuse_dir) && !live.contains(&l.name) {
                match loopdev::detach(&l.name).await {
                    Ok(()) => report.detached_loops.push(l.name.clone()),
                    Err(e) => {
                        tracing::warn!(device = %l.name.display(), error = %e, "stale loop device not released yet")
                    }
                }
            }
        }
        let live_mounts: Vec<PathBuf> = self
            .table_lock()
            .values()
            .filter_map(|a| match &a.exposure {
                Exposure::Fuse { export, .. } => Some(export.mountpoint().to_path_buf()),
                Exposure::Process { mountpoint, .. } => Some(mountpoint.clone()),
                _ => None,
            })
            .collect();
        for m in fuse::mounts_under(&fuse_dir)? {
            if !live_mounts
                .iter()
                .any(|l| std::path::absolute(l).ok().as_deref() == Some(&m))
            {
                fuse::lazy_unmount(&m)?;
                report.unmounted.push(m);
            }
        }
        for r in records {
            if self.table_lock().contains_key(&r.volume) || r.pid.is_some() {
                continue;
            }
            let found = match (&r.kind[..], &r.backing) {
                ("local", Some(backing)) => loops
                    .iter()
                    .find(|l| l.backing_path().as_deref() == Some(backing.as_path())),
                _ => None,
            };
            let (Some(l), Some(path)) = (found, r.backing.clone()) else {
                report.dropped.push(r.volume);
                continue;
            };
            let size = loopdev::size(&l.name)?;
            let a = attachment(
                &r.volume,
                Frontend::Unspecified,
                &l.name.to_string_lossy(),
                "",
                size,
                l.ro,
            );
            let exposure = Exposure::Local {
                path,
                loop_dev: l.name.clone(),
            };
            self.table_lock().insert(
                r.volume.clone(),
                Attached {
                    attachment: a,
                    exposure,
                },
            );
            report.adopted.push(r.volume);
        }
        self.persist().await?;
        for r in restart {
            match self
                .attach(&r.volume, Frontend::Fuse, r.readonly, r.generation)
                .await
            {
                Ok(_) => report.reattached.push(r.volume),
                Err(e) => {
                    tracing::warn!(volume = %r.volume, error = %e, "cannot start the dead frontend again; dropping the attachment");
                    report.dropped.push(r.volume);
                }
            }
        }
        tracing::info!(adopted = ?report.adopted, frontends = ?report.frontends, reattached = ?report.reattached, dropped = ?report.dropped, detached = report.detached_loops.len(), unmounted = report.unmounted.len(), "recovered attachments");
        Ok(report)
    }

    /// Adopts the frontend process of record `r` if it still runs as that frontend; false
    /// when it is gone (killed first if it runs but does not answer).
    async fn adopt_frontend(&self, r: &Record, pid: u32, control: PathBuf) -> Result<bool> {
        let Some((process, status)) = FrontendProcess::adopt(&r.volume, pid, control).await else {
            return Ok(false);
        };
        let disk = status.mountpoint.join(fuse::DISK_FILE);
        // By identity: a device made from another container (the storaged before a container
        // restart) reads `/disk` here, relative to a mount this namespace does not see.
        let found = match loopdev::find(&disk).await {
            Ok(found) => found.into_iter().next(),
            Err(e) => {
                process.stop().await;
                return Err(e);
            }
        };
        let loop_dev = match found {
            Some(l) => l.name,
            None => match loopdev::attach(&disk, r.readonly).await {
                Ok(l) => l,
                Err(e) => {
                    process.stop().await;
                    return Err(e);
                }
            },
        };
        let mut a = fuse_attachment(&r.volume, &loop_dev, r.readonly)?;
        a.generation = status.generation;
        tracing::info!(volume = %r.volume, pid, device = %loop_dev.display(), generation = status.generation, "adopted a running frontend process");
        self.table_lock().insert(
            r.volume.clone(),
            Attached {
                attachment: a,
                exposure: Exposure::Process {
                    process,
                    mountpoint: status.mountpoint,
                    loop_dev,
                },
            },
        );
        Ok(true)
    }
}
