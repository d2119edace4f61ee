//! Raw block volumes: staging bind-mounts the device node onto a file inside the staging
//! directory (a durable record for restarts); publishing binds that file onto target_path.

use std::fs::OpenOptions;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{CsiError, Result};
use crate::mount;

/// Name of the device file created inside a block volume's staging directory.
pub const STAGED_DEVICE_FILE: &str = "cairn-block-device";

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);

/// Where a staged block volume's device node is bound.
pub fn staged_device(staging: &Path) -> PathBuf {
    staging.join(STAGED_DEVICE_FILE)
}

/// Create an empty regular file at `path` if nothing is there; true when created.
fn touch(path: &Path) -> Result<bool> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| CsiError::io(format!("create {}", parent.display()), e))?;
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| CsiError::io(format!("create {}", path.display()), e))?;
    Ok(true)
}

fn bind_onto_file(device: &Path, file: &Path, readonly: bool) -> Result<()> {
    let created = touch(file)?;
    if let Err(e) = mount::bind(device, file, readonly) {
        if created {
            let _ = std::fs::remove_file(file);
        }
        return Err(e);
    }
    Ok(())
}

/// Record `device` as staged at `staging`.
pub fn stage(device: &Path, staging: &Path) -> Result<()> {
    std::fs::create_dir_all(staging)
        .map_err(|e| CsiError::io(format!("create {}", staging.display()), e))?;
    bind_onto_file(device, &staged_device(staging), false)
}

/// Undo `stage`; Ok when nothing is staged.
pub fn unstage(staging: &Path) -> Result<()> {
    remove_published(&staged_device(staging))
}

/// Bind the staged device onto a file at `target`.
pub fn publish(staging: &Path, target: &Path, readonly: bool) -> Result<()> {
    bind_onto_file(&staged_device(staging), target, readonly)
}

/// Unmount whatever is at `path` and remove the file or (empty) directory.
pub fn remove_published(path: &Path) -> Result<()> {
    mount::unmount_all(path)?;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CsiError::io(format!("stat {}", path.display()), e)),
        Ok(m) if m.is_dir() => std::fs::remove_dir(path)
            .map_err(|e| CsiError::io(format!("remove {}", path.display()), e)),
        Ok(_) => std::fs::remove_file(path)
            .map_err(|e| CsiError::io(format!("remove {}", path.display()), e)),
    }
}

/// Whether `path` is a block device node (directly or through a bind).
pub fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// Size in bytes of the block device at `path` (BLKGETSIZE64).
pub fn device_size(path: &Path) -> Result<u64> {
    let f = std::fs::File::open(path)
        .map_err(|e| CsiError::io(format!("open {}", path.display()), e))?;
    let mut size: u64 = 0;
    // SAFETY: the fd is open for the duration of the call and `size` is a valid u64.
    unsafe { blkgetsize64(f.as_raw_fd(), &mut size) }
        .map_err(|e| CsiError::io(format!("BLKGETSIZE64 {}", path.display()), e.into()))?;
    Ok(size)
}
