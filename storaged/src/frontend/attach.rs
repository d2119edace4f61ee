//! The attach manager: exposes volumes to this node's kernel (FUSE + loop, NBD, or a loop device
//! on a local-pool file), and persists the attachment table (`service::node_api` serves it).
//! FUSE frontends of a real node run in processes of their own, which it re-adopts at start.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use cairn_proto::cairn::v1 as pb;
use pb::Frontend;
use serde::{Deserialize, Serialize};

use super::fuse::{self, FuseExport};
use super::nbd::NbdServer;
use super::process::{Control, FrontendProcess, FrontendSpec, Launch};
use super::{BlockDevice, Opened, VolumeOpener, loopdev};
use crate::{Error, Result};

mod recover;

/// File in the run directory holding the attachment table.
pub const TABLE_FILE: &str = "attachments.json";

/// Attaches and detaches volumes on this node. Operations on one volume are serialised by a
/// per-volume lock; different volumes proceed in parallel.
///
/// The table is persisted to `<run_dir>/attachments.json` after every change. FUSE frontends
/// started as processes (`process.rs`) and loop devices are not this process's: they survive
/// it, and [`AttachManager::recover`] adopts them at startup. NBD servers, and FUSE mounts of
/// an opener that serves them in-process (test openers), die with this process.
pub struct AttachManager {
    opener: Arc<dyn VolumeOpener>,
    run_dir: PathBuf,
    table: Mutex<BTreeMap<String, Attached>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    persist_lock: tokio::sync::Mutex<()>,
}

struct Attached {
    attachment: pb::NodeAttachment,
    exposure: Exposure,
}

enum Exposure {
    Fuse {
        dev: Arc<dyn BlockDevice>,
        export: FuseExport,
        loop_dev: PathBuf,
    },
    Nbd {
        dev: Arc<dyn BlockDevice>,
        server: NbdServer,
    },
    Local {
        path: PathBuf,
        loop_dev: PathBuf,
    },
    /// A FUSE frontend in a process of its own, a loop device on its `disk` file.
    Process {
        process: FrontendProcess,
        mountpoint: PathBuf,
        loop_dev: PathBuf,
    },
}

/// One row of `attachments.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    volume: String,
    /// `fuse`, `nbd` or `local`.
    kind: String,
    device_path: String,
    nbd_uri: String,
    size_bytes: u64,
    readonly: bool,
    /// The file under the loop device: the FUSE `disk` file or the local-pool file.
    backing: Option<PathBuf>,
    /// A frontend process's pid and control socket.
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    control: Option<PathBuf>,
    #[serde(default)]
    generation: u64,
}

/// What [`AttachManager::recover`] found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Local volumes whose loop device survived and is attached again.
    pub adopted: Vec<String>,
    /// FUSE frontend processes still serving, adopted with their loop devices.
    pub frontends: Vec<String>,
    /// Volumes whose frontend process had died, attached again with a new one.
    pub reattached: Vec<String>,
    /// Attachments of the previous process that could not survive it (FUSE, NBD, vanished loops).
    pub dropped: Vec<String>,
    /// Loop devices detached because their FUSE backing died with the previous process.
    pub detached_loops: Vec<PathBuf>,
    /// Stale FUSE mounts lazily unmounted.
    pub unmounted: Vec<PathBuf>,
}

impl AttachManager {
    /// `run_dir` is created if missing and canonicalised, so paths compare equal to the ones
    /// the kernel reports for mounts and loop devices.
    pub fn new(opener: Arc<dyn VolumeOpener>, run_dir: PathBuf) -> Self {
        if let Err(e) = std::fs::create_dir_all(&run_dir) {
            tracing::warn!(run_dir = %run_dir.display(), error = %e, "cannot create the run directory");
        }
        let run_dir = std::fs::canonicalize(&run_dir)
            .or_else(|_| std::path::absolute(&run_dir))
            .unwrap_or(run_dir);
        AttachManager {
            opener,
            run_dir,
            table: Mutex::new(BTreeMap::new()),
            locks: Mutex::new(HashMap::new()),
            persist_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    fn fuse_dir(&self) -> PathBuf {
        self.run_dir.join("fuse")
    }

    /// Exposes `volume` and returns how to reach it. An attachment that already exists with the
    /// same frontend and mode is returned as is; one with a different frontend or mode is
    /// `FailedPrecondition`. `Frontend::Unspecified` means FUSE. Local volumes always get a loop
    /// device on their pool file and report `Frontend::Unspecified`; NBD is refused for them.
    /// A replicated volume's writes carry publish `generation` (0: unfenced); attaching again
    /// under a newer publish moves the attachment to its generation, an older one is refused.
    #[tracing::instrument(skip(self), err)]
    pub async fn attach(
        &self,
        volume: &str,
        frontend: Frontend,
        readonly: bool,
        generation: u64,
    ) -> Result<pb::NodeAttachment> {
        super::validate_volume(volume)?;
        let frontend = if frontend == Frontend::Unspecified {
            Frontend::Fuse
        } else {
            frontend
        };
        let lock = self.lock_for(volume);
        let _guard = lock.lock().await;
        if let Some(existing) = self.get(volume) {
            let same_frontend = existing.frontend() == frontend
                || (existing.frontend() == Frontend::Unspecified && frontend == Frontend::Fuse);
            if same_frontend && existing.readonly == readonly {
                return self.regenerate(volume, existing, generation).await;
            }
            return Err(Error::FailedPrecondition(format!(
                "volume `{volume}` is already attached with frontend {} readonly={}",
                existing.frontend().as_str_name(),
                existing.readonly
            )));
        }
        let opened = self.opener.open(volume, generation).await?;
        let (attachment, exposure) = match opened {
            Opened::Replicated(dev) if frontend == Frontend::Nbd => {
                let server = NbdServer::start(volume, dev.clone(), readonly).await?;
                let mut a = attachment(
                    volume,
                    Frontend::Nbd,
                    "",
                    &server.uri(),
                    dev.size(),
                    readonly,
                );
                a.generation = generation;
                (a, Exposure::Nbd { dev, server })
            }
            Opened::Replicated(dev) => {
                let (mut a, exposure) = match self.opener.frontend_spec(volume).await? {
                    Some(spec) => {
                        let size = dev.size();
                        self.attach_process(volume, &spec, size, readonly, generation)
                            .await?
                    }
                    None => self.attach_fuse(volume, dev, readonly).await?,
                };
                a.generation = generation;
                (a, exposure)
            }
            Opened::Local { .. } if frontend == Frontend::Nbd => {
                return Err(Error::FailedPrecondition(format!(
                    "volume `{volume}` is a local volume: it is exposed with a loop device, not NBD"
                )));
            }
            Opened::Local { path, size } => {
                let loop_dev = loopdev::attach(&path, readonly).await?;
                let dev_size = loopdev::size(&loop_dev)?;
                if dev_size != size {
                    tracing::warn!(
                        volume,
                        size,
                        dev_size,
                        "local volume file and volume size differ"
                    );
                }
                let a = attachment(
                    volume,
                    Frontend::Unspecified,
                    &loop_dev.to_string_lossy(),
                    "",
                    dev_size,
                    readonly,
                );
                (a, Exposure::Local { path, loop_dev })
            }
        };
        tracing::info!(volume, device = %attachment.device_path, nbd_uri = %attachment.nbd_uri, size = attachment.size_bytes, "attached");
        self.table_lock().insert(
            volume.to_string(),
            Attached {
                attachment: attachment.clone(),
                exposure,
            },
        );
        self.persist().await?;
        Ok(attachment)
    }

    async fn attach_fuse(
        &self,
        volume: &str,
        dev: Arc<dyn BlockDevice>,
        readonly: bool,
    ) -> Result<(pb::NodeAttachment, Exposure)> {
        let mountpoint = self.fuse_dir().join(volume);
        // Loop devices left on this path by a dead process would be adopted by `losetup`.
        for stale in loopdev::find(&mountpoint.join(fuse::DISK_FILE)).await? {
            tracing::warn!(volume, device = %stale.name.display(), "detaching a stale loop device");
            loopdev::detach(&stale.name).await?;
        }
        let rt = tokio::runtime::Handle::current();
        let (d, m, v) = (dev.clone(), mountpoint.clone(), volume.to_string());
        let export =
            tokio::task::spawn_blocking(move || FuseExport::mount(&v, d, &m, readonly, rt))
                .await
                .map_err(|e| Error::Internal(format!("FUSE mount task: {e}")))??;
        let loop_dev = match loopdev::attach(&export.disk_path(), readonly).await {
            Ok(l) => l,
            Err(e) => {
                unmount_blocking(export).await;
                return Err(e);
            }
        };
        let a = fuse_attachment(volume, &loop_dev, readonly)?;
        Ok((
            a,
            Exposure::Fuse {
                dev,
                export,
                loop_dev,
            },
        ))
    }

    /// Starts a frontend process serving `volume` and puts a loop device on its `disk` file.
    async fn attach_process(
        &self,
        volume: &str,
        spec: &FrontendSpec,
        size: u64,
        readonly: bool,
        generation: u64,
    ) -> Result<(pb::NodeAttachment, Exposure)> {
        let mountpoint = self.fuse_dir().join(volume);
        let disk = mountpoint.join(fuse::DISK_FILE);
        for stale in loopdev::find(&disk).await? {
            tracing::warn!(volume, device = %stale.name.display(), "detaching a stale loop device");
            loopdev::detach(&stale.name).await?;
        }
        let launch = Launch {
            volume,
            mountpoint: &mountpoint,
            readonly,
            generation,
            size,
        };
        let process = FrontendProcess::spawn(spec, &self.run_dir, launch).await?;
        let loop_dev = match loopdev::attach(&disk, readonly).await {
            Ok(l) => l,
            Err(e) => {
                process.stop().await;
                return Err(e);
            }
        };
        let a = fuse_attachment(volume, &loop_dev, readonly)?;
        let exposure = Exposure::Process {
            process,
            mountpoint,
            loop_dev,
        };
        Ok((a, exposure))
    }

    /// An existing attachment asked for again, under publish `generation`: the same or an
    /// unfenced request returns it as is; a newer publish's writes carry its generation from
    /// now on; an older one is refused (a stage call that lost a race with a newer publish).
    async fn regenerate(
        &self,
        volume: &str,
        existing: pb::NodeAttachment,
        generation: u64,
    ) -> Result<pb::NodeAttachment> {
        if generation == existing.generation || generation == 0 {
            return Ok(existing);
        }
        if generation < existing.generation {
            return Err(Error::FailedPrecondition(format!(
                "volume `{volume}` is attached under publish generation {}, newer than {generation}",
                existing.generation
            )));
        }
        let process = match self.table_lock().get(volume).map(|a| &a.exposure) {
            Some(Exposure::Process { process, .. }) => Some(process.clone()),
            _ => None,
        };
        if let Some(process) = process {
            process
                .request(&Control::SetGeneration { generation })
                .await?;
        }
        let attachment = {
            let mut table = self.table_lock();
            let entry = table
                .get_mut(volume)
                .ok_or_else(|| Error::not_found("attachment", volume))?;
            match &entry.exposure {
                Exposure::Fuse { dev, .. } | Exposure::Nbd { dev, .. } => {
                    dev.set_generation(generation)
                }
                Exposure::Process { .. } => {}
                Exposure::Local { .. } => return Ok(entry.attachment.clone()),
            }
            entry.attachment.generation = generation;
            entry.attachment.clone()
        };
        tracing::info!(volume, generation, "attachment moved to a newer publish");
        self.persist().await?;
        Ok(attachment)
    }

    /// Removes `volume`'s exposure. Unknown volumes are success. A loop device still in use (a
    /// mounted filesystem) is `FailedPrecondition` and the attachment stays.
    #[tracing::instrument(skip(self), err)]
    pub async fn detach(&self, volume: &str) -> Result<()> {
        super::validate_volume(volume)?;
        let lock = self.lock_for(volume);
        let _guard = lock.lock().await;
        let Some(entry) = self.table_lock().remove(volume) else {
            return Ok(());
        };
        let loop_dev = match &entry.exposure {
            Exposure::Fuse { loop_dev, .. }
            | Exposure::Local { loop_dev, .. }
            | Exposure::Process { loop_dev, .. } => Some(loop_dev.clone()),
            Exposure::Nbd { .. } => None,
        };
        if let Some(loop_dev) = loop_dev
            && let Err(e) = loopdev::detach(&loop_dev).await
        {
            self.table_lock().insert(volume.to_string(), entry);
            return Err(e);
        }
        match entry.exposure {
            Exposure::Fuse { export, .. } => unmount_blocking(export).await,
            Exposure::Nbd { server, .. } => server.stop().await,
            Exposure::Local { .. } => {}
            Exposure::Process {
                process,
                mountpoint,
                ..
            } => {
                process.stop().await;
                // A frontend killed at the deadline leaves its mount behind.
                if !fuse::mounts_under(&mountpoint)?.is_empty() {
                    fuse::lazy_unmount(&mountpoint)?;
                }
            }
        }
        tracing::info!(volume, device = %entry.attachment.device_path, "detached");
        self.persist().await
    }

    /// At the process's exit: ends what lives in this process (NBD servers, in-process FUSE
    /// mounts) with their loop devices; frontend processes and local loop devices stay, for
    /// the next start to adopt.
    pub async fn shutdown(&self) {
        let in_process: Vec<String> = self
            .table_lock()
            .iter()
            .filter(|(_, a)| matches!(a.exposure, Exposure::Fuse { .. } | Exposure::Nbd { .. }))
            .map(|(v, _)| v.clone())
            .collect();
        for volume in in_process {
            if let Err(e) = self.detach(&volume).await {
                tracing::warn!(volume, error = %e, "detach at shutdown failed");
            }
        }
    }

    /// Every attachment, sorted by volume.
    pub fn list(&self) -> Vec<pb::NodeAttachment> {
        self.table_lock()
            .values()
            .map(|a| a.attachment.clone())
            .collect()
    }

    /// The attachment of `volume`, if attached.
    pub fn get(&self, volume: &str) -> Option<pb::NodeAttachment> {
        self.table_lock().get(volume).map(|a| a.attachment.clone())
    }

    /// After a resize: re-reads the volume's size and grows the exposed device to it.
    #[tracing::instrument(skip(self), err)]
    pub async fn refresh_size(&self, volume: &str) -> Result<pb::NodeAttachment> {
        super::validate_volume(volume)?;
        // A resize committed a moment ago may not be in this node's catalogue yet.
        self.opener.catch_up().await?;
        let lock = self.lock_for(volume);
        let _guard = lock.lock().await;
        enum Kind {
            Loop { loop_dev: PathBuf, backing: PathBuf },
            Nbd(Arc<dyn BlockDevice>),
        }
        let mut process = None;
        let kind = match self.table_lock().get(volume).map(|a| &a.exposure) {
            None => return Err(Error::not_found("attachment", volume)),
            Some(Exposure::Fuse {
                export, loop_dev, ..
            }) => Kind::Loop {
                loop_dev: loop_dev.clone(),
                backing: export.disk_path(),
            },
            Some(Exposure::Local { path, loop_dev }) => Kind::Loop {
                loop_dev: loop_dev.clone(),
                backing: path.clone(),
            },
            Some(Exposure::Nbd { dev, .. }) => Kind::Nbd(dev.clone()),
            Some(Exposure::Process {
                process: p,
                mountpoint,
                loop_dev,
            }) => {
                process = Some(p.clone());
                Kind::Loop {
                    loop_dev: loop_dev.clone(),
                    backing: mountpoint.join(fuse::DISK_FILE),
                }
            }
        };
        if let Some(process) = process {
            // The frontend process learns the size from here (it cannot read the catalogue).
            let size = match self.opener.open(volume, 0).await? {
                Opened::Replicated(dev) => dev.size(),
                Opened::Local { size, .. } => size,
            };
            process.request(&Control::SetSize { size }).await?;
        }
        let size = match kind {
            // New NBD connections see the new size; an open one keeps the size it negotiated.
            Kind::Nbd(dev) => dev.size(),
            Kind::Loop { loop_dev, backing } => {
                // A stat makes the kernel re-read the FUSE file's size (attribute TTL is zero).
                tokio::fs::metadata(&backing)
                    .await
                    .map_err(|e| Error::Internal(format!("stat {}: {e}", backing.display())))?;
                loopdev::refresh_capacity(&loop_dev).await?
            }
        };
        let attachment = {
            let mut table = self.table_lock();
            let entry = table
                .get_mut(volume)
                .ok_or_else(|| Error::not_found("attachment", volume))?;
            entry.attachment.size_bytes = size;
            entry.attachment.clone()
        };
        tracing::info!(volume, size, "refreshed size");
        self.persist().await?;
        Ok(attachment)
    }

    fn table_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Attached>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_for(&self, volume: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        locks.retain(|_, l| Arc::strong_count(l) > 1 || l.try_lock().is_err());
        locks.entry(volume.to_string()).or_default().clone()
    }

    async fn load(&self) -> Vec<Record> {
        let path = self.run_dir.join(TABLE_FILE);
        match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable attachment table");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the attachment table");
                Vec::new()
            }
        }
    }

    /// Writes the table atomically (temporary file, fsync, rename, fsync of the directory).
    async fn persist(&self) -> Result<()> {
        let _guard = self.persist_lock.lock().await;
        let records: Vec<Record> = self.table_lock().values().map(record).collect();
        let json = serde_json::to_vec_pretty(&records)
            .map_err(|e| Error::Internal(format!("encoding the attachment table: {e}")))?;
        let dir = self.run_dir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            std::fs::create_dir_all(&dir)?;
            let tmp = dir.join(format!("{TABLE_FILE}.tmp"));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(TABLE_FILE))?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(|e| Error::Internal(format!("persist task: {e}")))?
        .map_err(|e| {
            Error::Internal(format!(
                "writing {}: {e}",
                self.run_dir.join(TABLE_FILE).display()
            ))
        })
    }
}

async fn unmount_blocking(export: FuseExport) {
    let mountpoint = export.mountpoint().to_path_buf();
    match tokio::task::spawn_blocking(move || export.unmount()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "FUSE unmount failed")
        }
        Err(e) => {
            tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "FUSE unmount task failed")
        }
    }
}

fn attachment(
    volume: &str,
    frontend: Frontend,
    device: &str,
    nbd_uri: &str,
    size: u64,
    readonly: bool,
) -> pb::NodeAttachment {
    pb::NodeAttachment {
        volume: volume.to_string(),
        frontend: frontend as i32,
        device_path: device.to_string(),
        nbd_uri: nbd_uri.to_string(),
        size_bytes: size,
        readonly,
        generation: 0,
    }
}

/// A FUSE attachment through `loop_dev`, sized as the loop device is.
fn fuse_attachment(volume: &str, loop_dev: &Path, readonly: bool) -> Result<pb::NodeAttachment> {
    let size = loopdev::size(loop_dev)?;
    Ok(attachment(
        volume,
        Frontend::Fuse,
        &loop_dev.to_string_lossy(),
        "",
        size,
        readonly,
    ))
}

fn record(a: &Attached) -> Record {
    let (kind, backing) = match &a.exposure {
        Exposure::Fuse { export, .. } => ("fuse", Some(export.disk_path())),
        Exposure::Nbd { .. } => ("nbd", None),
        Exposure::Local { path, .. } => ("local", Some(path.clone())),
        Exposure::Process { mountpoint, .. } => ("fuse", Some(mountpoint.join(fuse::DISK_FILE))),
    };
    let (pid, control) = match &a.exposure {
        Exposure::Process { process, .. } => (Some(process.pid), Some(process.control.clone())),
        _ => (None, None),
    };
    let at = &a.attachment;
    Record {
        volume: at.volume.clone(),
        kind: kind.to_string(),
        device_path: at.device_path.clone(),
        nbd_uri: at.nbd_uri.clone(),
        size_bytes: at.size_bytes,
        readonly: at.readonly,
        backing,
        pid,
        control,
        generation: at.generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_json() {
        let r = Record {
            volume: "v".into(),
            kind: "local".into(),
            device_path: "/dev/loop3".into(),
            nbd_uri: String::new(),
            size_bytes: 4096,
            readonly: false,
            backing: Some("/pool/v.img".into()),
            pid: Some(42),
            control: Some("/run/fe-1.sock".into()),
            generation: 3,
        };
        // A table written before frontend processes existed still reads.
        let old = r#"[{"volume":"w","kind":"fuse","device_path":"/dev/loop1","nbd_uri":"","size_bytes":1,"readonly":true,"backing":null}]"#;
        let read: Vec<Record> = serde_json::from_str(old).unwrap();
        assert_eq!((read[0].pid, read[0].generation), (None, 0));
        let json = serde_json::to_string(std::slice::from_ref(&r)).unwrap();
        assert_eq!(serde_json::from_str::<Vec<Record>>(&json).unwrap(), vec![r]);
    }
}
