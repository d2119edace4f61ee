//! Filesystem tools: probe a device with `blkid -p`, create ext4/xfs only on a blank
//! device, and grow a mounted filesystem online (`resize2fs`, `xfs_growfs`).

use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::error::{CsiError, Result};

/// What `blkid -p` found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No signature at all: safe to format.
    Blank,
    /// A filesystem of this type.
    Filesystem(String),
    /// Something else (partition table, LVM, RAID member...): never touched.
    Other(String),
}

/// Find an executable in PATH or the usual sbin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

async fn run(tool: &str, args: &[&str]) -> Result<std::process::Output> {
    let exe = find_tool(tool).ok_or_else(|| {
        CsiError::FailedPrecondition(format!("`{tool}` is not installed on this node"))
    })?;
    Command::new(exe)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| CsiError::io(format!("run {tool}"), e))
}

fn failed(tool: &str, args: &[&str], out: &std::process::Output) -> CsiError {
    CsiError::Command {
        command: format!("{tool} {}", args.join(" ")),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

/// Parse `blkid -o export` output.
pub fn parse_blkid_export(stdout: &str) -> Probe {
    let mut ty = None;
    let mut usage = None;
    let mut pttype = None;
    for line in stdout.lines() {
        match line.split_once('=') {
            Some(("TYPE", v)) => ty = Some(v.to_string()),
            Some(("USAGE", v)) => usage = Some(v.to_string()),
            Some(("PTTYPE", v)) => pttype = Some(v.to_string()),
            _ => {}
        }
    }
    match (ty, usage, pttype) {
        (Some(t), Some(u), _) if u == "filesystem" => Probe::Filesystem(t),
        (Some(t), None, None) => Probe::Filesystem(t),
        (Some(t), Some(u), _) => Probe::Other(format!("{t} ({u})")),
        (None, _, Some(p)) => Probe::Other(format!("partition table {p}")),
        _ => Probe::Other(format!("unrecognised signature: {}", stdout.trim())),
    }
}

/// Low-level probe of `device`; exit status 2 from blkid means no signature (blank).
pub async fn probe(device: &Path) -> Result<Probe> {
    let dev = device.to_string_lossy();
    let args = ["-p", "-o", "export", dev.as_ref()];
    let out = run("blkid", &args).await?;
    match out.status.code() {
        Some(0) => Ok(parse_blkid_export(&String::from_utf8_lossy(&out.stdout))),
        Some(2) => Ok(Probe::Blank),
        _ => Err(failed("blkid", &args, &out)),
    }
}

/// Create `fs_type` on a device that `probe` just reported blank.
pub async fn mkfs(device: &Path, fs_type: &str) -> Result<()> {
    let dev = device.to_string_lossy();
    // No discard: a fresh thin volume already reads as zeros.
    let (tool, args): (&str, Vec<&str>) = match fs_type {
        "ext4" => (
            "mkfs.ext4",
            vec![
                "-q",
                "-F",
                "-E",
                "nodiscard,lazy_itable_init=1",
                dev.as_ref(),
            ],
        ),
        "xfs" => ("mkfs.xfs", vec!["-q", "-K", dev.as_ref()]),
        other => {
            return Err(CsiError::InvalidArgument(format!(
                "cannot create filesystem `{other}`"
            )));
        }
    };
    let out = run(tool, &args).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(tool, &args, &out))
    }
}

/// Grow the filesystem mounted at `mount_point` (on `device`) to fill the device.
pub async fn grow(fs_type: &str, device: &Path, mount_point: &Path) -> Result<()> {
    let dev = device.to_string_lossy();
    let mp = mount_point.to_string_lossy();
    let (tool, args): (&str, Vec<&str>) = match fs_type {
        "ext4" | "ext3" | "ext2" => ("resize2fs", vec![dev.as_ref()]),
        "xfs" => ("xfs_growfs", vec![mp.as_ref()]),
        other => {
            return Err(CsiError::InvalidArgument(format!(
                "cannot grow filesystem `{other}`"
            )));
        }
    };
    let out = run(tool, &args).await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(tool, &args, &out))
    }
}

/// Bytes an ext2/3/4 filesystem spans, from its superblock (`dumpe2fs -h`).
fn ext_fs_bytes(dumpe2fs: &str) -> Option<u64> {
    let field = |name: &str| {
        dumpe2fs
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(field("Block count:")? * field("Block size:")?)
}

/// Grows an unmounted ext2/3/4 filesystem that is smaller than `device_bytes` (its volume
/// was expanded while unstaged, or the online grow was refused: the kernel's online resize
/// needs CAP_SYS_RESOURCE, the offline one does not). `e2fsck -f -p` first, as resize2fs
/// requires; a filesystem with errors fsck cannot fix is refused, not resized. Returns
/// whether it grew.
pub async fn grow_offline(fs_type: &str, device: &Path, device_bytes: u64) -> Result<bool> {
    if !matches!(fs_type, "ext2" | "ext3" | "ext4") {
        return Ok(false);
    }
    let dev = device.to_string_lossy();
    let info = run("dumpe2fs", &["-h", dev.as_ref()]).await?;
    let Some(fs_bytes) = ext_fs_bytes(&String::from_utf8_lossy(&info.stdout)) else {
        return Err(failed("dumpe2fs", &["-h", dev.as_ref()], &info));
    };
    // resize2fs rounds down to whole blocks (and ext4 to its flex groups' needs): a gap
    // under 1 MiB is not worth a fsck.
    if fs_bytes + (1 << 20) > device_bytes {
        return Ok(false);
    }
    let fsck_args = ["-f", "-p", dev.as_ref()];
    let fsck = run("e2fsck", &fsck_args).await?;
    // 0: clean, 1: errors corrected; anything else needs a person.
    if !matches!(fsck.status.code(), Some(0 | 1)) {
        return Err(CsiError::FailedPrecondition(format!(
            "{} needs growing but e2fsck found errors it could not fix: {}",
            device.display(),
            String::from_utf8_lossy(&fsck.stdout).trim()
        )));
    }
    let out = run("resize2fs", &[dev.as_ref()]).await?;
    if !out.status.success() {
        return Err(failed("resize2fs", &[dev.as_ref()], &out));
    }
    tracing::info!(device = %device.display(), from = fs_bytes, to = device_bytes, "filesystem grown offline");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blkid_export() {
        assert_eq!(
            parse_blkid_export("DEVNAME=/dev/loop3\nUUID=x\nTYPE=ext4\nUSAGE=filesystem\n"),
            Probe::Filesystem("ext4".into())
        );
        assert_eq!(
            parse_blkid_export("PTUUID=1\nPTTYPE=gpt\n"),
            Probe::Other("partition table gpt".into())
        );
        assert_eq!(
            parse_blkid_export("TYPE=LVM2_member\nUSAGE=raid\n"),
            Probe::Other("LVM2_member (raid)".into())
        );
    }

    /// A real probe/mkfs/probe cycle on a plain file (blkid and mkfs work on files).
    #[tokio::test]
    async fn blank_file_is_blank_until_formatted() {
        if find_tool("blkid").is_none() || find_tool("mkfs.ext4").is_none() {
            panic!("blkid and mkfs.ext4 are required for this test");
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        assert_eq!(probe(&img).await.unwrap(), Probe::Blank);
        mkfs(&img, "ext4").await.unwrap();
        assert_eq!(probe(&img).await.unwrap(), Probe::Filesystem("ext4".into()));
        let e = mkfs(&img, "btrfs").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    /// An ext4 smaller than its (grown) device is grown offline, once; other
    /// filesystems and a filesystem that already fills its device are left alone.
    #[tokio::test]
    async fn a_smaller_ext4_is_grown_offline_once() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(32 << 20).unwrap();
        mkfs(&img, "ext4").await.unwrap();
        let size = |img: &Path| {
            let o = std::process::Command::new("dumpe2fs")
                .args(["-h", img.to_str().unwrap()])
                .output()
                .unwrap();
            ext_fs_bytes(&String::from_utf8_lossy(&o.stdout)).unwrap()
        };
        assert_eq!(size(&img), 32 << 20);
        assert!(!grow_offline("ext4", &img, 32 << 20).await.unwrap());
        assert!(!grow_offline("xfs", &img, 64 << 20).await.unwrap());
        f.set_len(64 << 20).unwrap();
        assert!(grow_offline("ext4", &img, 64 << 20).await.unwrap());
        assert_eq!(size(&img), 64 << 20);
        assert!(!grow_offline("ext4", &img, 64 << 20).await.unwrap());
    }
}
