//! Thin wrappers over `sys-mount` (mount, bind, read-only remount, unmount) and a parser for
//! `/proc/self/mountinfo`, which is the node plugin's only record of what is staged where.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use cairn_proto::mountinfo::unescape;
use sys_mount::{Mount, MountFlags, UnmountFlags};

use crate::error::{CsiError, Result};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    pub major: u32,
    pub minor: u32,
    /// The path inside the source filesystem that is mounted (`/` unless a bind of a subtree).
    pub root: String,
    pub mount_point: PathBuf,
    pub options: String,
    pub fs_type: String,
    pub source: String,
    pub super_options: String,
}

impl MountEntry {
    /// Mounted read-only (per-mount options).
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Parse mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (pre, post) = line.split_once(" - ")?;
    let mut f = pre.split(' ');
    let mount_id = f.next()?.parse().ok()?;
    let parent_id = f.next()?.parse().ok()?;
    let (major, minor) = f.next()?.split_once(':')?;
    let root = unescape(f.next()?);
    let mount_point = PathBuf::from(unescape(f.next()?));
    let options = f.next()?.to_string();
    let mut p = post.split(' ');
    let fs_type = p.next()?.to_string();
    let source = unescape(p.next()?);
    let super_options = p.next().unwrap_or("").to_string();
    Some(MountEntry {
        mount_id,
        parent_id,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root,
        mount_point,
        options,
        fs_type,
        source,
        super_options,
    })
}

/// The current mount table of this process.
pub fn read_mountinfo() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CsiError::io("read /proc/self/mountinfo", e))?;
    Ok(parse_mountinfo(&text))
}

/// The topmost mount at exactly `path`, if any.
pub fn mount_at<'a>(mounts: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    mounts.iter().rev().find(|m| m.mount_point == path)
}

/// The (major, minor) of a block device node.
pub fn device_numbers(device: &Path) -> Result<(u32, u32)> {
    let meta = std::fs::metadata(device)
        .map_err(|e| CsiError::io(format!("stat {}", device.display()), e))?;
    if !meta.file_type().is_block_device() {
        return Err(CsiError::Internal(format!(
            "{} is not a block device",
            device.display()
        )));
    }
    let rdev = meta.rdev();
    Ok((
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    ))
}

/// Every mount that exposes `device`: filesystems on it (matched by major:minor) and
/// bind mounts of its device node (a devtmpfs entry whose root is the node's name,
/// confirmed by stat-ing the mount point).
pub fn mounts_of_device<'a>(mounts: &'a [MountEntry], device: &Path) -> Vec<&'a MountEntry> {
    let Ok((major, minor)) = device_numbers(device) else {
        return Vec::new();
    };
    let name = device.file_name().map(|n| n.to_string_lossy().into_owned());
    mounts
        .iter()
        .filter(|m| {
            if (m.major, m.minor) == (major, minor) {
                return true;
            }
            let root_name = Path::new(&m.root)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            root_name.is_some()
                && root_name == name
                && std::fs::metadata(&m.mount_point).is_ok_and(|md| {
                    md.file_type().is_block_device()
                        && (
                            nix::sys::stat::major(md.rdev()) as u32,
                            nix::sys::stat::minor(md.rdev()) as u32,
                        ) == (major, minor)
                })
        })
        .collect()
}

/// Split CSI mount flags into kernel flags and the filesystem's data string.
pub fn split_options(options: &[String]) -> (MountFlags, String) {
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for opt in options.iter().flat_map(|o| o.split(',')) {
        match opt.trim() {
            "" | "defaults" | "rw" => {}
            "ro" => flags |= MountFlags::RDONLY,
            "noatime" => flags |= MountFlags::NOATIME,
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "strictatime" => flags |= MountFlags::STRICTATIME,
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            "dirsync" => flags |= MountFlags::DIRSYNC,
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

/// Mount a filesystem from `device` at `target`.
pub fn mount_fs(
    device: &Path,
    target: &Path,
    fs_type: &str,
    options: &[String],
    readonly: bool,
) -> Result<()> {
    let (mut flags, data) = split_options(options);
    if readonly {
        flags |= MountFlags::RDONLY;
    }
    let mut b = Mount::builder().fstype(fs_type).flags(flags);
    if !data.is_empty() {
        b = b.data(&data);
    }
    b.mount(device, target).map(drop).map_err(|e| {
        CsiError::io(
            format!(
                "mount {} ({fs_type}) at {} with {options:?}",
                device.display(),
                target.display()
            ),
            e,
        )
    })
}

/// Bind-mount `source` onto `target`, then remount read-only if asked.
pub fn bind(source: &Path, target: &Path, readonly: bool) -> Result<()> {
    Mount::builder()
        .fstype("none")
        .flags(MountFlags::BIND)
        .mount(source, target)
        .map_err(|e| {
            CsiError::io(
                format!("bind {} onto {}", source.display(), target.display()),
                e,
            )
        })?;
    if readonly {
        let remount = Mount::builder()
            .fstype("none")
            .flags(MountFlags::BIND | MountFlags::REMOUNT | MountFlags::RDONLY)
            .mount("", target);
        if let Err(e) = remount {
            // Never leave a writable bind behind a read-only request.
            let _ = unmount_all(target);
            return Err(CsiError::io(
                format!("remount {} read-only", target.display()),
                e,
            ));
        }
    }
    Ok(())
}

/// Unmount everything stacked at `target`; Ok when nothing is mounted there.
pub fn unmount_all(target: &Path) -> Result<()> {
    for _ in 0..16 {
        let mounts = read_mountinfo()?;
        if mount_at(&mounts, target).is_none() {
            return Ok(());
        }
        sys_mount::unmount(target, UnmountFlags::empty())
            .map_err(|e| CsiError::io(format!("unmount {}", target.display()), e))?;
    }
    Err(CsiError::Internal(format!(
        "{} still mounted after 16 unmounts",
        target.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
25 22 0:5 / /dev rw,nosuid - devtmpfs udev rw,size=100k
40 22 7:3 / /var/lib/kubelet/plugins/kubernetes.io/csi/csi.cairn.dev/ab/globalmount rw,relatime shared:9 - ext4 /dev/loop3 rw
41 22 7:3 / /var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/pv\\0401/mount ro,relatime shared:9 - ext4 /dev/loop3 rw
42 22 0:5 /loop4 /var/lib/kubelet/pods/u/volumeDevices/pv2 rw - devtmpfs udev rw
bad line
";

    #[test]
    fn parses_fields_and_escapes() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 5);
        assert_eq!((m[2].major, m[2].minor), (7, 3));
        assert_eq!(m[2].source, "/dev/loop3");
        assert_eq!(m[2].fs_type, "ext4");
        assert!(!m[2].read_only());
        assert_eq!(
            m[3].mount_point,
            Path::new("/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/pv 1/mount")
        );
        assert!(m[3].read_only());
        assert_eq!(m[4].root, "/loop4");
        assert_eq!(m[0].parent_id, 1);
    }

    #[test]
    fn mount_at_finds_exact_path_only() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(mount_at(&m, Path::new("/dev")).unwrap().mount_id, 25);
        assert!(mount_at(&m, Path::new("/dev/x")).is_none());
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (f, d) = split_options(&["ro,noatime".into(), "errors=remount-ro".into()]);
        assert!(f.contains(MountFlags::RDONLY | MountFlags::NOATIME));
        assert_eq!(d, "errors=remount-ro");
        let (f, d) = split_options(&[]);
        assert!(f.is_empty() && d.is_empty());
    }

    #[test]
    fn reads_own_mountinfo() {
        let m = read_mountinfo().unwrap();
        assert!(mount_at(&m, Path::new("/")).is_some());
    }
}
