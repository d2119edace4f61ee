//! The loop devices over a node's FUSE frontends' `disk` files: recorded while those frontends
//! run (the kernel can no longer tell their backing file once they died), detached after.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_storaged::frontend::{fuse::DISK_FILE, loopdev};

use super::NODE_PATHS;

/// The source of a Cairn FUSE frontend's mount (`cairn:<volume>`, type `fuse`).
const FUSE_SOURCE: &str = "cairn:";
/// How long one `losetup` may take (asking a stopped FUSE server's file blocks).
const LOSETUP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a detached loop device may stay busy (a filesystem on it still being released).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// A loop device over one of a node's FUSE files and that file's identity. (The path sysfs
/// prints for it changes: it is relative to the mount once the namespace that made the
/// device is gone.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLoop {
    pub device: String,
    pub backing: loopdev::FileId,
}

/// The loop devices backed by a `disk` file of the Cairn FUSE mounts the processes `pids`
/// see (the node's mount namespace and its containers') below the node's own paths
/// (`NODE_PATHS` as the node sees them, or `node_dir`): each FUSE mount has a device number
/// of its own, so no other node's loop device is taken. Call while the frontends still run.
pub fn record(pids: &[i32], node_dir: &Path) -> Vec<NodeLoop> {
    let devs: BTreeSet<(u32, u32)> = pids
        .iter()
        .flat_map(|p| fuse_devices(&p.to_string(), node_dir))
        .collect();
    if devs.is_empty() {
        return Vec::new();
    }
    let Some(listed) = losetup(&loopdev::LIST_ARGS) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for l in loopdev::parse_list(&listed).unwrap_or_default() {
        let name = l.name.display().to_string();
        let on_disk_file = l
            .backing_path()
            .is_some_and(|p| p.file_name() == Some(DISK_FILE.as_ref()));
        if !on_disk_file {
            continue;
        }
        let mut args = loopdev::IDENTIFY_ARGS.to_vec();
        args.push(&name);
        let id = losetup(&args)
            .and_then(|o| loopdev::parse_list(&o).ok())
            .and_then(|ls| ls.into_iter().find(|x| x.name == l.name)?.backing_id());
        if let Some(id) = id.filter(|id| devs.contains(&(id.major, id.minor))) {
            out.push(NodeLoop {
                device: name,
                backing: id,
            });
        }
    }
    out
}

fn fuse_devices(pid: &str, node_dir: &Path) -> BTreeSet<(u32, u32)> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    cairn_csi::mount::parse_mountinfo(&info)
        .into_iter()
        .filter(|m| m.fs_type.starts_with("fuse") && m.source.starts_with(FUSE_SOURCE))
        .filter(|m| {
            m.mount_point.starts_with(node_dir)
                || NODE_PATHS.iter().any(|(p, _)| m.mount_point.starts_with(p))
        })
        .map(|m| (m.major, m.minor))
        .collect()
}

/// `/sys/block/loopN/loop/backing_file` of `/dev/loopN`; none once the device is free.
fn backing_file(device: &str) -> Option<String> {
    let name = Path::new(device)
        .file_name()?
        .to_string_lossy()
        .into_owned();
    std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()
}

/// `losetup ARGS`' output, or none if it failed or took longer than `LOSETUP_TIMEOUT`.
fn losetup(args: &[&str]) -> Option<String> {
    let mut child = Command::new("losetup")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| tracing::warn!(error = %e, "cannot run losetup"))
        .ok()?;
    let deadline = Instant::now() + LOSETUP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                tracing::warn!(?args, timeout = ?LOSETUP_TIMEOUT, "losetup did not answer in time");
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let out = child.wait_with_output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Those of `recorded` still attached to a FUSE `disk` file (by sysfs: the identity of a file
/// whose FUSE server died cannot be read any more).
pub fn still_attached(recorded: &[NodeLoop]) -> Vec<NodeLoop> {
    recorded
        .iter()
        .filter(|l| {
            backing_file(&l.device).is_some_and(|b| {
                let b = b.trim_end();
                let b = b.strip_suffix(" (deleted)").unwrap_or(b);
                Path::new(b).file_name() == Some(DISK_FILE.as_ref())
            })
        })
        .cloned()
        .collect()
}

/// Detaches the `recorded` loop devices that still back the same file (by sysfs; the node's
/// processes are gone) and waits (bounded) until the kernel released them; those detached.
pub fn detach(node: &str, recorded: &[NodeLoop]) -> Vec<String> {
    let mut detached = Vec::new();
    for l in recorded {
        if still_attached(std::slice::from_ref(l)).is_empty() {
            continue; // already free, or reused for another file
        }
        match losetup(&["--detach", &l.device]) {
            Some(_) => detached.push(l.device.clone()),
            None => tracing::warn!(node, device = %l.device, "loop detach failed"),
        }
    }
    // A device still open (ext4 on it, released with the last mount namespace) is
    // auto-cleared by the kernel once closed: wait for that, bounded.
    let deadline = Instant::now() + RELEASE_TIMEOUT;
    for dev in &detached {
        while backing_file(dev).is_some() {
            if Instant::now() >= deadline {
                tracing::warn!(node, device = %dev, timeout = ?RELEASE_TIMEOUT, "loop device still in use after detach");
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if !detached.is_empty() {
        tracing::info!(node, devices = ?detached, "detached the node's FUSE loop devices");
    }
    detached
}
