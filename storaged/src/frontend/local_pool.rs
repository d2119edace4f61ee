//! The node's local pool: one sparse file per `type: local` volume, whose length is the
//! volume's enforced capacity. Create, grow and delete are idempotent.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A directory of sparse files named after their volumes.
#[derive(Debug, Clone)]
pub struct LocalPool {
    dir: PathBuf,
}

/// Space in the filesystem that holds the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolCapacity {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

impl LocalPool {
    /// A pool in `dir`; the directory is created on first use.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalPool { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that backs `volume`, whether or not it exists.
    pub fn path_for(&self, volume: &str) -> Result<PathBuf> {
        super::validate_volume(volume)?;
        Ok(self.dir.join(format!("{volume}.img")))
    }

    /// The size of `volume`'s file, or `None` if it does not exist.
    pub async fn size(&self, volume: &str) -> Result<Option<u64>> {
        let path = self.path_for(volume)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading the size of", &path, e)),
        }
    }

    /// Creates a sparse file of exactly `size` bytes for `volume`. An existing file of the same
    /// size is success; of another size, `AlreadyExists`.
    pub async fn create(&self, volume: &str, size: u64) -> Result<PathBuf> {
        let path = self.path_for(volume)?;
        if size == 0 || !size.is_multiple_of(super::SECTOR) {
            return Err(Error::invalid(
                "size",
                format!("{size} is not a positive multiple of 512"),
            ));
        }
        if let Some(existing) = self.size(volume).await? {
            return if existing == size {
                Ok(path)
            } else {
                Err(Error::AlreadyExists(format!(
                    "local volume `{volume}` exists with {existing} bytes, not {size}"
                )))
            };
        }
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| io_err("creating the pool directory", &self.dir, e))?;
        // Build under a temporary name so a crash never leaves a file of the wrong size.
        let tmp = self.dir.join(format!(".{volume}.img.tmp"));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io_err("creating", &tmp, e))?;
        file.set_len(size)
            .await
            .map_err(|e| io_err("sizing", &tmp, e))?;
        file.sync_all()
            .await
            .map_err(|e| io_err("syncing", &tmp, e))?;
        drop(file);
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| io_err("renaming into place", &path, e))?;
        self.sync_dir().await?;
        tracing::info!(volume, size, path = %path.display(), "created local volume file");
        Ok(path)
    }

    /// Grows `volume`'s file to `new_size`. The same size is success; shrinking is refused.
    pub async fn grow(&self, volume: &str, new_size: u64) -> Result<()> {
        let path = self.path_for(volume)?;
        let current = self
            .size(volume)
            .await?
            .ok_or_else(|| Error::not_found("local volume", volume))?;
        if new_size == current {
            return Ok(());
        }
        if new_size < current || !new_size.is_multiple_of(super::SECTOR) {
            return Err(Error::OutOfRange(format!(
                "local volume `{volume}` cannot go from {current} to {new_size} bytes (grow only, 512-byte multiples)"
            )));
        }
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .await
            .map_err(|e| io_err("opening", &path, e))?;
        file.set_len(new_size)
            .await
            .map_err(|e| io_err("growing", &path, e))?;
        file.sync_all()
            .await
            .map_err(|e| io_err("syncing", &path, e))?;
        tracing::info!(
            volume,
            from = current,
            to = new_size,
            "grew local volume file"
        );
        Ok(())
    }

    /// Deletes `volume`'s file; a missing file is success.
    pub async fn delete(&self, volume: &str) -> Result<()> {
        let path = self.path_for(volume)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                self.sync_dir().await?;
                tracing::info!(volume, "deleted local volume file");
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("deleting", &path, e)),
        }
    }

    /// The volumes in the pool, sorted.
    pub async fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut rd = match tokio::fs::read_dir(&self.dir).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err("listing", &self.dir, e)),
        };
        while let Some(entry) = rd
            .next_entry()
            .await
            .map_err(|e| io_err("listing", &self.dir, e))?
        {
            let name = entry.file_name();
            if let Some(volume) = name.to_str().and_then(|n| n.strip_suffix(".img"))
                && !volume.starts_with('.')
            {
                out.push(volume.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes the files of every volume in `listed` that `keep` refuses; returns them.
    /// List first (`list`), decide on a catalogue read after the listing: a file is only
    /// created once its volume is in the catalogue, so a live volume is always kept.
    pub async fn remove_unless(
        &self,
        listed: Vec<String>,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for volume in listed {
            if !keep(&volume) {
                self.delete(&volume).await?;
                removed.push(volume);
            }
        }
        Ok(removed)
    }

    /// Total and available bytes of the filesystem holding the pool.
    pub fn capacity(&self) -> Result<PoolCapacity> {
        let st = nix::sys::statvfs::statvfs(&self.dir)
            .map_err(|e| io_err("statvfs on", &self.dir, std::io::Error::from(e)))?;
        let frag = st.fragment_size();
        Ok(PoolCapacity {
            total_bytes: st.blocks() * frag,
            available_bytes: st.blocks_available() * frag,
        })
    }

    async fn sync_dir(&self) -> Result<()> {
        let dir = tokio::fs::File::open(&self.dir)
            .await
            .map_err(|e| io_err("opening", &self.dir, e))?;
        dir.sync_all()
            .await
            .map_err(|e| io_err("syncing", &self.dir, e))
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Io(std::io::Error::new(
        e.kind(),
        format!("{what} {}: {e}", path.display()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn create_grow_delete_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let pool = LocalPool::new(dir.path().join("pool"));
        let path = pool.create("v1", 1 << 20).await.unwrap();
        assert_eq!(pool.create("v1", 1 << 20).await.unwrap(), path);
        assert!(matches!(
            pool.create("v1", 2 << 20).await,
            Err(Error::AlreadyExists(_))
        ));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 20);
        assert!(meta.blocks() * 512 < 1 << 20, "file must be sparse");
        pool.grow("v1", 4 << 20).await.unwrap();
        pool.grow("v1", 4 << 20).await.unwrap();
        assert!(matches!(
            pool.grow("v1", 1 << 20).await,
            Err(Error::OutOfRange(_))
        ));
        assert_eq!(pool.size("v1").await.unwrap(), Some(4 << 20));
        assert_eq!(pool.list().await.unwrap(), vec!["v1".to_string()]);
        assert!(pool.capacity().unwrap().total_bytes > 0);
        pool.delete("v1").await.unwrap();
        pool.delete("v1").await.unwrap();
        assert_eq!(pool.size("v1").await.unwrap(), None);
        assert!(matches!(
            pool.grow("v1", 1 << 20).await,
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            pool.create("../x", 1 << 20).await,
            Err(Error::InvalidArgument { .. })
        ));
    }
}
