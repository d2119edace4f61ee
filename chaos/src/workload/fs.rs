//! The filesystem workload: a volume attached on one node through storaged's NodeService (FUSE
//! frontend), ext4 on it, a writer of fsynced records and renamed files, and the read-back check.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::NodeClient;
use cairn_proto::cairn::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::history::{Recorder, Value};
use crate::workload::block::encode;

/// Bytes of one record of the append log (record `i` sits at `i * RECORD`).
pub const RECORD: usize = 512;
/// Bytes of one numbered file.
pub const FILE: usize = 4096;
/// The append log's name in the filesystem.
const LOG: &str = "records.log";
/// How long the writer may take to notice a stop (an fsync may wait out a fault).
const STOP_BOUND: Duration = Duration::from_secs(60);
/// How long one mount, fsck or mkfs may take.
const COMMAND_BOUND: Duration = Duration::from_secs(120);

/// The contents of record `i` of the append log: the first `RECORD` bytes of a block holding
/// version `i + 1` (self-identifying, different for every `i`).
pub fn record(i: u64) -> Vec<u8> {
    encode(Value(i + 1))[..RECORD].to_vec()
}

/// The contents of numbered file `i`: a whole block of version `i + 1` with its high bit set,
/// so no file equals a record's block.
pub fn file_contents(i: u64) -> Vec<u8> {
    encode(Value((i + 1) | 1 << 62))
}

fn file_name(i: u64) -> String {
    format!("f-{i:07}")
}

/// One acknowledged write (what its fsync, or the directory's, made durable), with its timing
/// on the run's history clock: `at` invocation, `latency_ns` until the acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub what: Written,
    pub at: u64,
    pub latency_ns: u64,
}

/// What an acknowledgement covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "index", rename_all = "snake_case")]
pub enum Written {
    /// Record `i` of the append log, written at its offset and `fdatasync`ed.
    Record(u64),
    /// File `f-i`, written and fsynced as `f-i.tmp`, renamed, and its directory fsynced.
    File(u64),
}

/// The filesystem workload's findings: acknowledged writes read back intact (`ok`), missing
/// (`lost`) or different (`corrupt`), write errors the writer saw, and whether `fsck.ext4 -n`
/// found the filesystem clean after the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsCounts {
    pub ok: u64,
    pub lost: u64,
    pub corrupt: u64,
    pub errors: u64,
    pub fsck_clean: bool,
}

impl FsCounts {
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.corrupt == 0 && self.fsck_clean
    }
}

/// A volume attached on a node, formatted and mounted; unmounted and detached by `finish`, or
/// at least unmounted (lazily) and its loop device released on drop.
pub struct FsVolume {
    pub volume: String,
    /// The node it is attached on (faults that stop processes must spare it).
    pub node: u64,
    pub device: String,
    /// The FUSE frontend's mount of the volume in the node's data dir.
    frontend: PathBuf,
    pub mount: PathBuf,
    api: NodeClient,
    mounted: bool,
    attached: bool,
}

impl FsVolume {
    /// Attaches `volume` on node `node` (its NodeService at `addr`, with the node's own CSI
    /// identity), runs `mkfs.ext4` on the device and mounts it at `mount` (created).
    pub async fn attach(
        volume: &str,
        node: u64,
        api: NodeClient,
        run_dir: &Path,
        mount: PathBuf,
    ) -> Result<FsVolume, Error> {
        let a = api
            .attach_volume(pb::AttachVolumeRequest {
                volume: volume.to_string(),
                frontend: pb::Frontend::Fuse as i32,
                readonly: false,
                generation: 0,
            })
            .await
            .map_err(|s| {
                Error::Cluster(format!("attach {volume} on node {node}: {}", s.message()))
            })?;
        std::fs::create_dir_all(&mount)?;
        let mut fs = FsVolume {
            volume: volume.to_string(),
            node,
            device: a.device_path.clone(),
            frontend: run_dir.join("fuse").join(volume),
            mount,
            api,
            mounted: false,
            attached: true,
        };
        sh("mkfs.ext4", &["-q", "-F", &fs.device]).await?;
        fs.mount().await?;
        tracing::info!(volume, node, device = %fs.device, mount = %fs.mount.display(), "fs workload volume mounted");
        Ok(fs)
    }

    async fn mount(&mut self) -> Result<(), Error> {
        sh("mount", &[&self.device, &path_str(&self.mount)?]).await?;
        self.mounted = true;
        Ok(())
    }

    async fn unmount(&mut self) -> Result<(), Error> {
        sh("umount", &[&path_str(&self.mount)?]).await?;
        self.mounted = false;
        Ok(())
    }

    /// Starts the writer on the mounted filesystem.
    pub fn start(&self, recorder: Arc<Recorder>) -> Result<Writer, Error> {
        let dir = self.mount.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (s, a, e) = (Arc::clone(&stop), Arc::clone(&acks), Arc::clone(&errors));
        std::thread::Builder::new()
            .name("chaos-fs-writer".into())
            .spawn(move || {
                write_loop(&dir, &recorder, &s, &a, &e);
                let _ = done_tx.send(());
            })?;
        Ok(Writer {
            stop,
            acks,
            errors,
            done: done_rx,
        })
    }

    /// After the run: unmounts, runs `fsck.ext4 -n`, mounts again, reads every acknowledged
    /// write back and compares it, then unmounts and detaches the volume.
    pub async fn finish(mut self, acks: &[Ack], errors: u64) -> Result<FsCounts, Error> {
        self.unmount().await?;
        let fsck = tokio::time::timeout(
            COMMAND_BOUND,
            tokio::process::Command::new("fsck.ext4")
                .args(["-n", "-f", &self.device])
                .output(),
        )
        .await
        .map_err(|_| Error::Cluster(format!("fsck.ext4 -n {} hung", self.device)))??;
        let fsck_clean = fsck.status.success();
        if !fsck_clean {
            tracing::error!(
                device = %self.device,
                status = ?fsck.status,
                out = %String::from_utf8_lossy(&fsck.stdout),
                "fsck.ext4 -n found problems"
            );
        }
        self.mount().await?;
        let dir = self.mount.clone();
        let acks = acks.to_vec();
        let mut counts = tokio::task::spawn_blocking(move || verify(&dir, &acks))
            .await
            .map_err(|e| Error::Cluster(format!("fs verification panicked: {e}")))??;
        counts.errors = errors;
        counts.fsck_clean = fsck_clean;
        self.unmount().await?;
        self.api
            .detach_volume(&self.volume)
            .await
            .map_err(|s| Error::Cluster(format!("detach {}: {}", self.volume, s.message())))?;
        self.attached = false;
        Ok(counts)
    }
}

impl Drop for FsVolume {
    /// A run that did not finish: unmount lazily, release the loop device and the frontend's
    /// FUSE mount, so that the node's fault filesystem can be unmounted after it.
    fn drop(&mut self) {
        if self.mounted {
            let _ = run_now("umount", &["-l", &self.mount.to_string_lossy()]);
        }
        if self.attached {
            let _ = run_now("losetup", &["-d", &self.device]);
            let _ = run_now("umount", &["-l", &self.frontend.to_string_lossy()]);
        }
    }
}

/// The running writer; `stop` waits (bounded) for it to finish its operation.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    errors: Arc<std::sync::atomic::AtomicU64>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Writer {
    /// Stops the writer; returns the acknowledged writes and the errors it saw.
    pub async fn stop(self) -> Result<(Vec<Ack>, u64), Error> {
        self.stop.store(true, Ordering::Relaxed);
        let done = self.done;
        tokio::task::spawn_blocking(move || done.recv_timeout(STOP_BOUND))
            .await
            .map_err(|e| Error::Cluster(format!("fs writer join: {e}")))?
            .map_err(|_| {
                Error::Cluster(format!(
                    "the fs writer did not stop within {STOP_BOUND:?} (an I/O hangs)"
                ))
            })?;
        let acks = self.acks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok((acks, self.errors.load(Ordering::Relaxed)))
    }
}

/// Record `i` at its offset, fdatasync; file `f-i` through a fsynced temporary, a rename and a
/// directory fsync; each acknowledged once its sync returned. An error counts and the writer
/// goes on with the next index (after a pause, so a failing disk is not hammered).
fn write_loop(
    dir: &Path,
    recorder: &Recorder,
    stop: &AtomicBool,
    acks: &Mutex<Vec<Ack>>,
    errors: &std::sync::atomic::AtomicU64,
) {
    let opened = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(dir.join(LOG))
        .and_then(|log| Ok((log, std::fs::File::open(dir)?)));
    let (log, dir_handle) = match opened {
        Ok(files) => files,
        Err(e) => {
            tracing::error!(error = %e, "fs writer could not open its files");
            errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let ack = |what, at: u64| {
        let latency_ns = recorder.now().saturating_sub(at);
        acks.lock().unwrap_or_else(|p| p.into_inner()).push(Ack {
            what,
            at,
            latency_ns,
        });
    };
    let failed = |what: Written, e: std::io::Error| {
        tracing::warn!(?what, error = %e, "fs write failed");
        errors.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let at = recorder.now();
        match log
            .write_all_at(&record(i), i * RECORD as u64)
            .and_then(|()| log.sync_data())
        {
            Ok(()) => ack(Written::Record(i), at),
            Err(e) => failed(Written::Record(i), e),
        }
        let at = recorder.now();
        match write_file(dir, &dir_handle, i) {
            Ok(()) => ack(Written::File(i), at),
            Err(e) => failed(Written::File(i), e),
        }
        i += 1;
    }
}

fn write_file(dir: &Path, dir_handle: &std::fs::File, i: u64) -> std::io::Result<()> {
    use std::io::Write;
    let name = file_name(i);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&file_contents(i))?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    dir_handle.sync_all()
}

/// Reads every acknowledged write back and counts it intact, missing or different.
pub fn verify(dir: &Path, acks: &[Ack]) -> Result<FsCounts, Error> {
    let mut counts = FsCounts::default();
    let log = std::fs::read(dir.join(LOG)).unwrap_or_default();
    for ack in acks {
        let (expected, got) = match ack.what {
            Written::Record(i) => {
                let at = i as usize * RECORD;
                (record(i), log.get(at..at + RECORD).map(<[u8]>::to_vec))
            }
            Written::File(i) => (
                file_contents(i),
                match std::fs::read(dir.join(file_name(i))) {
                    Ok(bytes) => Some(bytes),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e.into()),
                },
            ),
        };
        match got {
            None => {
                tracing::error!(what = ?ack.what, "acknowledged fs write missing");
                counts.lost += 1;
            }
            Some(bytes) if bytes == expected => counts.ok += 1,
            // A record slot of zeroes is a write that never reached the disk: lost.
            Some(bytes) if bytes.iter().all(|&b| b == 0) => {
                tracing::error!(what = ?ack.what, "acknowledged fs write reads as zeroes");
                counts.lost += 1;
            }
            Some(_) => {
                tracing::error!(what = ?ack.what, "acknowledged fs write reads differently");
                counts.corrupt += 1;
            }
        }
    }
    Ok(counts)
}

fn path_str(p: &Path) -> Result<String, Error> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Config(format!("path {} is not UTF-8", p.display())))
}

/// Runs a command to completion within `COMMAND_BOUND`; an error carries its output.
async fn sh(cmd: &str, args: &[&str]) -> Result<(), Error> {
    let out = tokio::time::timeout(
        COMMAND_BOUND,
        tokio::process::Command::new(cmd).args(args).output(),
    )
    .await
    .map_err(|_| {
        Error::Cluster(format!(
            "{cmd} {args:?} did not finish within {COMMAND_BOUND:?}"
        ))
    })?
    .map_err(|e| Error::Cluster(format!("{cmd}: {e} (is it installed?)")))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(Error::Cluster(format!(
            "{cmd} {args:?}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))),
    }
}

/// A blocking best-effort command, for drop paths.
fn run_now(cmd: &str, args: &[&str]) -> bool {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(what: Written) -> Ack {
        Ack {
            what,
            at: 0,
            latency_ns: 1,
        }
    }

    #[test]
    fn verification_counts_intact_missing_and_different_writes() {
        let dir = tempfile_dir();
        let mut log = vec![0u8; 4 * RECORD];
        for i in [0u64, 1, 3] {
            log[i as usize * RECORD..][..RECORD].copy_from_slice(&record(i));
        }
        // Record 3 torn: its last byte differs.
        log[4 * RECORD - 1] ^= 0xff;
        std::fs::write(dir.join(LOG), &log).unwrap();
        std::fs::write(dir.join(file_name(0)), file_contents(0)).unwrap();
        std::fs::write(dir.join(file_name(1)), file_contents(2)).unwrap();
        let acks: Vec<Ack> = [
            Written::Record(0),
            Written::Record(1),
            Written::Record(2),
            Written::Record(3),
            Written::Record(9),
            Written::File(0),
            Written::File(1),
            Written::File(2),
        ]
        .into_iter()
        .map(ack)
        .collect();
        let counts = verify(&dir, &acks).unwrap();
        assert_eq!(
            (counts.ok, counts.lost, counts.corrupt),
            (3, 3, 2),
            "ok: r0 r1 f0; lost: r2 (zeroes) r9 (past the end) f2; corrupt: r3 f1"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_ne!(record(0), record(1));
        assert_ne!(file_contents(0)[..RECORD], record(0)[..]);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cairn-chaos-fs-verify-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
