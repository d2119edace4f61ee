//! Loop devices over a backing file, driven through util-linux `losetup`: attach (direct I/O
//! when the backing file allows it), find by backing file, capacity refresh, detach.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use crate::{Error, Result};

/// How long a detach may take before the device is reported as busy.
const DETACH_DEADLINE: Duration = Duration::from_secs(10);

/// One row of `losetup --list --json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LoopInfo {
    /// `/dev/loopN`.
    pub name: PathBuf,
    /// The backing file as the kernel recorded it at attach time (absolute path).
    #[serde(rename = "back-file")]
    pub back_file: Option<String>,
    #[serde(default)]
    pub dio: bool,
    #[serde(default)]
    pub ro: bool,
}

impl LoopInfo {
    /// The backing file path without the kernel's ` (deleted)` suffix.
    pub fn backing_path(&self) -> Option<PathBuf> {
        let f = self.back_file.as_deref()?;
        Some(PathBuf::from(f.strip_suffix(" (deleted)").unwrap_or(f)))
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

/// Every loop device currently attached on this machine.
pub async fn list() -> Result<Vec<LoopInfo>> {
    let out = losetup(
        &["--list", "--json", "--output", "NAME,BACK-FILE,DIO,RO"].map(std::ffi::OsStr::new),
        "listing loop devices",
    )
    .await?;
    if out.is_empty() {
        return Ok(Vec::new());
    }
    let list: LoopList = serde_json::from_str(&out)
        .map_err(|e| Error::Internal(format!("parsing `losetup --list --json`: {e}")))?;
    Ok(list.loopdevices)
}

/// The loop devices backed by `file` (normally zero or one).
pub async fn find(file: &Path) -> Result<Vec<LoopInfo>> {
    Ok(list()
        .await?
        .into_iter()
        .filter(|l| l.backing_path().as_deref() == Some(file))
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
}
