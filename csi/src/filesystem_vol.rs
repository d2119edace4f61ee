//! Filesystem volumes: stage = probe, format only a blank device, mount at the staging path;
//! publish = bind the staging mount onto target_path (read-only when asked), and reverses.

use std::path::Path;

use crate::error::{CsiError, Result};
use crate::format::{self, Probe};
use crate::mount;
use crate::params::DEFAULT_FS;

/// Make a filesystem on `device` if (and only if) it is blank, then mount it at `staging`.
/// `requested` is the fsType the CO asked for explicitly, if any.
pub async fn stage(
    device: &Path,
    staging: &Path,
    requested: Option<&str>,
    flags: &[String],
    readonly: bool,
) -> Result<String> {
    let fs_type = match format::probe(device).await? {
        Probe::Blank if readonly => {
            return Err(CsiError::FailedPrecondition(format!(
                "{} is blank and the volume is read-only: nothing to mount",
                device.display()
            )));
        }
        Probe::Blank => {
            let fs = requested.unwrap_or(DEFAULT_FS);
            tracing::info!(device = %device.display(), fs, "formatting blank device");
            format::mkfs(device, fs).await?;
            fs.to_string()
        }
        Probe::Filesystem(found) => match requested {
            Some(r) if r != found => {
                return Err(CsiError::FailedPrecondition(format!(
                    "{} already holds {found}, {r} was requested; refusing to reformat",
                    device.display()
                )));
            }
            _ => found,
        },
        Probe::Other(what) => {
            return Err(CsiError::FailedPrecondition(format!(
                "{} holds {what}; refusing to format or mount it",
                device.display()
            )));
        }
    };
    if !readonly {
        let bytes = crate::block_vol::device_size(device)?;
        format::grow_offline(&fs_type, device, bytes).await?;
    }
    let created = !staging.exists();
    std::fs::create_dir_all(staging)
        .map_err(|e| CsiError::io(format!("create {}", staging.display()), e))?;
    let mut opts = flags.to_vec();
    if readonly {
        // A read-only device cannot replay a journal.
        opts.push(
            if fs_type == "xfs" {
                "norecovery"
            } else {
                "noload"
            }
            .to_string(),
        );
    }
    if let Err(e) = mount::mount_fs(device, staging, &fs_type, &opts, readonly) {
        if created {
            let _ = std::fs::remove_dir(staging);
        }
        return Err(e);
    }
    Ok(fs_type)
}

/// Unmount the staging path (Ok when nothing is mounted there).
pub fn unstage(staging: &Path) -> Result<()> {
    mount::unmount_all(staging)
}

/// Bind the staged filesystem onto `target`, creating the directory.
pub fn publish(staging: &Path, target: &Path, readonly: bool) -> Result<()> {
    let created = std::fs::symlink_metadata(target).is_err();
    std::fs::create_dir_all(target)
        .map_err(|e| CsiError::io(format!("create {}", target.display()), e))?;
    if let Err(e) = mount::bind(staging, target, readonly) {
        if created {
            let _ = std::fs::remove_dir(target);
        }
        return Err(e);
    }
    Ok(())
}
