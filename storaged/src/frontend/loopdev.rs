//! Loop devices over a backing file, driven through util-linux `losetup`: attach (direct I/O
//! when the backing file allows it), find by backing file (its inode and device, else its
//! path), capacity refresh, detach.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use crate::{Error, Result};

/// How long a detach may take before the device is reported as busy.
const DETACH_DEADLINE: Duration = Duration::from_secs(10);
/// How long a `stat` of a backing file may take (a FUSE server that hangs) before the file is
/// matched by path instead.
const STAT_DEADLINE: Duration = Duration::from_secs(5);
/// How long losetup may take to give a loop device's backing identity (see `identify`).
const IDENTIFY_DEADLINE: Duration = Duration::from_secs(2);

/// The identity of a file: its device (major, minor) and inode number, as `stat(2)` gives
/// them and as the kernel keeps them for a loop device's backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub major: u32,
    pub minor: u32,
    pub ino: u64,
}

impl FileId {
    /// The identity of `file` (follows symlinks); an error if it cannot be stat'ed (gone, or
    /// a FUSE mount whose server died).
    pub fn of(file: &Path) -> std::io::Result<FileId> {
        let m = std::fs::metadata(file)?;
        let dev = m.dev();
        Ok(FileId {
            major: libc::major(dev),
            minor: libc::minor(dev),
            ino: m.ino(),
        })
    }
}

/// [`FileId::of`] off the async workers, bounded by `STAT_DEADLINE`; none when it fails.
pub async fn file_id(file: &Path) -> Option<FileId> {
    let f = file.to_path_buf();
    let stat = tokio::task::spawn_blocking(move || FileId::of(&f));
    match tokio::time::timeout(STAT_DEADLINE, stat).await {
        Ok(Ok(Ok(id))) => Some(id),
        Ok(Ok(Err(e))) => {
            tracing::debug!(file = %file.display(), error = %e, "cannot stat a backing file");
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(file = %file.display(), error = %e, "stat task failed");
            None
        }
        Err(_) => {
            tracing::warn!(file = %file.display(), deadline = ?STAT_DEADLINE, "stat of a backing file timed out");
            None
        }
    }
}

/// One row of `losetup --list --json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LoopInfo {
    /// `/dev/loopN`.
    pub name: PathBuf,
    /// The backing file's path as the kernel prints it for the reader: absolute when its
    /// mount is visible from the reader's mount namespace, else relative to that mount's root
    /// (a FUSE `disk` made from another container reads `/disk`). Not an identity.
    #[serde(rename = "back-file")]
    pub back_file: Option<String>,
    /// The backing file's inode number (`BACK-INO`).
    #[serde(rename = "back-ino", default, deserialize_with = "de_ino")]
    pub back_ino: Option<u64>,
    /// The backing file's device, `major:minor` (`BACK-MAJ:MIN`, padded by losetup).
    #[serde(rename = "back-maj:min", default)]
    pub back_maj_min: Option<String>,
    #[serde(default)]
    pub dio: bool,
    #[serde(default)]
    pub ro: bool,
}

/// `back-ino` is a JSON number in util-linux 2.38 and a string in some older releases.
fn de_ino<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    use serde::de::Error as _;
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("back-ino: not an inode number: {n}"))),
        Some(serde_json::Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| D::Error::custom(format!("back-ino: `{s}`: {e}"))),
        Some(other) => Err(D::Error::custom(format!(
            "back-ino: not an inode number: {other}"
        ))),
    }
}

impl LoopInfo {
    /// The backing file path without the kernel's ` (deleted)` suffix.
    pub fn backing_path(&self) -> Option<PathBuf> {
        let f = self.back_file.as_deref()?;
        Some(PathBuf::from(f.strip_suffix(" (deleted)").unwrap_or(f)))
    }

    /// The backing file's identity, when losetup reported both its inode and device.
    pub fn backing_id(&self) -> Option<FileId> {
        let (major, minor) = self.back_maj_min.as_deref()?.trim().split_once(':')?;
        Some(FileId {
            major: major.trim().parse().ok()?,
            minor: minor.trim().parse().ok()?,
            ino: self.back_ino?,
        })
    }

    /// Whether this device's printed path may name `file`: the same path, or the same file
    /// name (a path printed relative to a mount of another mount namespace, such as `/disk`).
    pub fn may_back(&self, file: &Path) -> bool {
        self.backing_path().is_some_and(|p| {
            p == file || (file.file_name().is_some() && p.file_name() == file.file_name())
        })
    }

    /// Whether this device is backed by `file`, whose identity is `id` when it could be
    /// stat'ed: by identity when both sides have one (a path may be printed relative to
    /// another mount namespace, or name a newer file), else by path.
    pub fn backed_by(&self, file: &Path, id: Option<FileId>) -> bool {
        match (id, self.backing_id()) {
            (Some(id), Some(back)) => id == back,
            _ => self.backing_path().as_deref() == Some(file),
        }
    }
}

#[derive(Deserialize)]
struct LoopList {
    #[serde(default)]
    loopdevices: Vec<LoopInfo>,
}

async fn losetup(args: &[&std::ffi::OsStr], what: &str) -> Result<String> {
    let out = Command::new("losetup")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Error::Internal(format!("{what}: cannot run losetup: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(Error::Internal(format!(
            "{what}: losetup {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Every loop device currently attached on this machine, from sysfs (never blocks on a
/// backing filesystem; `back_ino` and `back_maj_min` are left empty, see [`identify`]).
pub async fn list() -> Result<Vec<LoopInfo>> {
    let out = losetup(&LIST_ARGS.map(std::ffi::OsStr::new), "listing loop devices").await?;
    parse_list(&out)
}

/// The arguments of `losetup` that list loop devices as [`parse_list`] reads them.
pub const LIST_ARGS: [&str; 4] = ["--list", "--json", "--output", "NAME,BACK-FILE,DIO,RO"];

/// The arguments of `losetup`, before the device, that give one loop device's backing
/// identity. The kernel answers it with a `getattr` of the backing file: it waits for a FUSE
/// server (bound by `IDENTIFY_DEADLINE` here) and is empty once that server died.
pub const IDENTIFY_ARGS: [&str; 4] = ["--list", "--json", "--output", "NAME,BACK-INO,BACK-MAJ:MIN"];

/// Parses the output of `losetup` run with [`LIST_ARGS`] or [`IDENTIFY_ARGS`] (empty when no
/// device is attached).
pub fn parse_list(out: &str) -> Result<Vec<LoopInfo>> {
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    let list: LoopList = serde_json::from_str(out)
        .map_err(|e| Error::Internal(format!("parsing `losetup --list --json`: {e}")))?;
    Ok(list.loopdevices)
}

/// The backing identity of loop device `dev`; none when losetup cannot tell in time (a FUSE
/// server that died, or that hangs or is stopped).
pub async fn identify(dev: &Path) -> Option<FileId> {
    let mut args: Vec<&std::ffi::OsStr> = IDENTIFY_ARGS.map(std::ffi::OsStr::new).to_vec();
    args.push(dev.as_os_str());
    let what = format!("identifying the backing file of {}", dev.display());
    let out = match tokio::time::timeout(IDENTIFY_DEADLINE, losetup(&args, &what)).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            tracing::debug!(device = %dev.display(), error = %e, "no backing identity");
            return None;
        }
        Err(_) => {
            tracing::warn!(device = %dev.display(), deadline = ?IDENTIFY_DEADLINE, "losetup did not give the backing identity in time");
            return None;
        }
    };
    parse_list(&out)
        .ok()?
        .into_iter()
        .find(|l| l.name == dev)?
        .backing_id()
}

/// The loop devices backed by `file` (normally zero or one). When `file` can be stat'ed, a
/// device whose printed path is `file` or ends in the same name (a path printed relative to
/// another mount namespace's mount) is compared by identity when losetup gives one; every
/// other case is by path (see [`LoopInfo::backed_by`]).
pub async fn find(file: &Path) -> Result<Vec<LoopInfo>> {
    let id = file_id(file).await;
    let rows = list().await?;
    let Some(id) = id else {
        return Ok(rows
            .into_iter()
            .filter(|l| l.backed_by(file, None))
            .collect());
    };
    let candidates: Vec<LoopInfo> = rows.into_iter().filter(|l| l.may_back(file)).collect();
    let ids = futures::future::join_all(candidates.iter().map(|l| identify(&l.name))).await;
    Ok(candidates
        .into_iter()
        .zip(ids)
        .filter_map(|(mut l, back)| {
            if let Some(b) = back {
                l.back_ino = Some(b.ino);
                l.back_maj_min = Some(format!("{}:{}", b.major, b.minor));
            }
            l.backed_by(file, Some(id)).then_some(l)
        })
        .collect())
}

/// Attaches `file` to a free loop device and returns its path, or returns the device that
/// already backs `file` (idempotent). Direct I/O is requested first; a backing file that
/// refuses it gets a buffered loop device instead.
pub async fn attach(file: &Path, readonly: bool) -> Result<PathBuf> {
    let file = std::path::absolute(file)?;
    if let Some(existing) = find(&file).await?.into_iter().next() {
        if existing.ro != readonly {
            return Err(Error::FailedPrecondition(format!(
                "{} is already attached to {} with readonly={}",
                file.display(),
                existing.name.display(),
                existing.ro
            )));
        }
        return Ok(existing.name);
    }
    let what = format!("attaching a loop device to {}", file.display());
    let mut args: Vec<&std::ffi::OsStr> = ["--find", "--show"].map(std::ffi::OsStr::new).to_vec();
    if readonly {
        args.push("--read-only".as_ref());
    }
    args.push(file.as_os_str());
    let mut dio_args = args.clone();
    dio_args.insert(2, "--direct-io=on".as_ref());
    let dev = match losetup(&dio_args, &what).await {
        Ok(dev) => dev,
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "direct I/O refused, using a buffered loop device");
            // A failed attempt may still have left a device behind.
            for l in find(&file).await? {
                detach(&l.name).await?;
            }
            losetup(&args, &what).await?
        }
    };
    if !dev.starts_with("/dev/loop") {
        return Err(Error::Internal(format!(
            "{what}: unexpected losetup output `{dev}`"
        )));
    }
    Ok(PathBuf::from(dev))
}

/// Detaches `dev` and waits until the kernel has released it. An unknown or already free device
/// is fine (idempotent). A device still opened by someone (a mounted filesystem) is marked
/// auto-clear by the kernel and reported as `FailedPrecondition` after the deadline.
pub async fn detach(dev: &Path) -> Result<()> {
    let backing = sys_attr(dev, "loop/backing_file");
    if !backing.exists() {
        return Ok(());
    }
    if let Err(e) = losetup(
        &["--detach".as_ref(), dev.as_os_str()],
        &format!("detaching {}", dev.display()),
    )
    .await
    {
        if !backing.exists() {
            return Ok(()); // lost a race with another detach
        }
        return Err(e);
    }
    let deadline = tokio::time::Instant::now() + DETACH_DEADLINE;
    while backing.exists() {
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::FailedPrecondition(format!(
                "loop device {} is still in use after detach; it is released when its last user closes it",
                dev.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Re-reads the backing file's size into the loop device (`losetup --set-capacity`) and
/// returns the device's new size in bytes.
pub async fn refresh_capacity(dev: &Path) -> Result<u64> {
    losetup(
        &["--set-capacity".as_ref(), dev.as_os_str()],
        &format!("refreshing the capacity of {}", dev.display()),
    )
    .await?;
    size(dev)
}

/// The size of a loop device in bytes, from sysfs.
pub fn size(dev: &Path) -> Result<u64> {
    let attr = sys_attr(dev, "size");
    let text = std::fs::read_to_string(&attr)
        .map_err(|e| Error::Internal(format!("reading {}: {e}", attr.display())))?;
    let sectors: u64 = text
        .trim()
        .parse()
        .map_err(|e| Error::Internal(format!("parsing {}: {e}", attr.display())))?;
    Ok(sectors * 512)
}

/// `/sys/block/loopN/<attr>` for `/dev/loopN`.
fn sys_attr(dev: &Path, attr: &str) -> PathBuf {
    let name = dev.file_name().unwrap_or(dev.as_os_str());
    Path::new("/sys/block").join(name).join(attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_losetup_json_and_strips_deleted() {
        let json = r#"{"loopdevices":[{"name":"/dev/loop3","back-file":"/x/disk (deleted)","dio":true,"ro":false}]}"#;
        let list: LoopList = serde_json::from_str(json).unwrap();
        assert_eq!(
            list.loopdevices[0].backing_path(),
            Some(PathBuf::from("/x/disk"))
        );
        assert!(list.loopdevices[0].dio);
        assert_eq!(
            sys_attr(Path::new("/dev/loop3"), "size"),
            PathBuf::from("/sys/block/loop3/size")
        );
    }

    /// `losetup --list --json -O NAME,BACK-FILE,BACK-INO,BACK-MAJ:MIN,DIO,RO` as util-linux
    /// 2.38 prints it, read from a container that did not make the FUSE mount of loop0.
    const LISTED: &str = r#"{
   "loopdevices": [
      {"name": "/dev/loop0", "back-file": "/disk", "back-ino": 2,
         "back-maj:min": "      0:61  ", "dio": true, "ro": false},
      {"name": "/dev/loop1", "back-file": "/var/lib/pool/v1", "back-ino": 10010628,
         "back-maj:min": "     254:0  ", "dio": false, "ro": true}
   ]
}"#;

    #[test]
    fn parses_backing_identity_with_losetup_padding() {
        let l = parse_list(LISTED).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            l[0].backing_id(),
            Some(FileId {
                major: 0,
                minor: 61,
                ino: 2
            })
        );
        assert_eq!(
            l[1].backing_id(),
            Some(FileId {
                major: 254,
                minor: 0,
                ino: 10010628
            })
        );
        assert!(l[1].ro && !l[1].dio);
        assert!(parse_list("").unwrap().is_empty());
        assert!(parse_list("  \n").unwrap().is_empty());
    }

    #[test]
    fn older_losetup_shapes_parse() {
        // A string inode (older util-linux), and no identity columns at all.
        let json = r#"{"loopdevices":[
            {"name":"/dev/loop2","back-file":"/a","back-ino":"77","back-maj:min":"0:5"},
            {"name":"/dev/loop3","back-file":"/b"}]}"#;
        let l = parse_list(json).unwrap();
        assert_eq!(
            l[0].backing_id(),
            Some(FileId {
                major: 0,
                minor: 5,
                ino: 77
            })
        );
        assert_eq!(l[1].backing_id(), None);
        let bad = r#"{"loopdevices":[{"name":"/dev/loop2","back-ino":"x7"}]}"#;
        let e = parse_list(bad).unwrap_err().to_string();
        assert!(e.contains("back-ino"), "{e}");
    }

    #[test]
    fn a_device_made_in_another_mount_namespace_is_found_by_identity() {
        let l = parse_list(LISTED).unwrap();
        let disk = Path::new("/run/cairn/fuse/pvc-1/disk");
        let id = FileId {
            major: 0,
            minor: 61,
            ino: 2,
        };
        // The path printed (`/disk`) is not the file's, its identity is.
        assert!(l[0].backed_by(disk, Some(id)));
        // The same inode on another FUSE mount (another volume) is another file.
        assert!(!l[0].backed_by(disk, Some(FileId { minor: 62, ..id })));
        // A file that cannot be stat'ed (dead FUSE server) is matched by path only.
        assert!(!l[0].backed_by(disk, None));
        assert!(l[0].backed_by(Path::new("/disk"), None));
        // A device whose identity losetup did not give is matched by path.
        let mut old = l[1].clone();
        old.back_ino = None;
        assert!(old.backed_by(Path::new("/var/lib/pool/v1"), Some(id)));
        // Same path, other file (the path now names a newer file): not that device.
        assert!(!l[1].backed_by(Path::new("/var/lib/pool/v1"), Some(id)));
        // Which devices are worth asking losetup for their identity.
        assert!(l[0].may_back(disk));
        assert!(!l[1].may_back(disk));
        assert!(l[1].may_back(Path::new("/var/lib/pool/v1")));
        assert!(!l[0].may_back(Path::new("/")));
    }

    #[test]
    fn file_ids_come_from_stat() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let (ia, ib) = (FileId::of(&a).unwrap(), FileId::of(&b).unwrap());
        assert_ne!(ia, ib);
        assert_eq!((ia.major, ia.minor), (ib.major, ib.minor));
        assert_eq!(ia, FileId::of(&a).unwrap());
        assert!(FileId::of(&dir.path().join("missing")).is_err());
    }
}
