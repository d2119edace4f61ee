//! The node's local pool: one sparse file per `type: local` volume, named by volume id and
//! name, whose length is the volume's enforced capacity. Create, grow and delete are idempotent.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Pool files live in this subdirectory as `<id>-<name>.img`. Files from before volume ids
/// were part of the name sit directly in the pool directory as `<name>.img` ("legacy").
const CURRENT_DIR: &str = "volumes";

/// A directory of sparse files, one per local volume.
#[derive(Debug, Clone)]
pub struct LocalPool {
    dir: PathBuf,
}

/// Which volume a pool file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolKey<'a> {
    /// The catalogue's volume id: never reused, so a volume re-created under the same
    /// name never finds its predecessor's file.
    pub id: u64,
    pub name: &'a str,
}

/// A file found in the pool.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PoolFile {
    Current {
        id: u64,
        name: String,
    },
    /// `<name>.img`, written before files carried the volume id.
    Legacy {
        name: String,
    },
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

    /// The file that backs `key`, whether or not it exists.
    pub fn path_for(&self, key: PoolKey<'_>) -> Result<PathBuf> {
        super::validate_volume(key.name)?;
        Ok(self
            .current_dir()
            .join(format!("{}-{}.img", key.id, key.name)))
    }

    fn current_dir(&self) -> PathBuf {
        self.dir.join(CURRENT_DIR)
    }

    fn legacy_path(&self, name: &str) -> Result<PathBuf> {
        super::validate_volume(name)?;
        Ok(self.dir.join(format!("{name}.img")))
    }

    /// Moves a legacy `<name>.img` to `key`'s file, when `key` has no file yet: a volume
    /// attached before files carried ids keeps its data. Returns whether it moved one.
    pub async fn adopt_legacy(&self, key: PoolKey<'_>) -> Result<bool> {
        let legacy = self.legacy_path(key.name)?;
        let path = self.path_for(key)?;
        if self.size(key).await?.is_some() || !exists(&legacy).await? {
            return Ok(false);
        }
        self.ensure_dir().await?;
        tokio::fs::rename(&legacy, &path)
            .await
            .map_err(|e| io_err("moving into place", &legacy, e))?;
        sync_dir(&self.current_dir()).await?;
        sync_dir(&self.dir).await?;
        tracing::info!(volume = key.name, id = key.id, path = %path.display(), "adopted a legacy local volume file");
        Ok(true)
    }

    /// The size of `key`'s file, or `None` if it does not exist.
    pub async fn size(&self, key: PoolKey<'_>) -> Result<Option<u64>> {
        let path = self.path_for(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading the size of", &path, e)),
        }
    }

    /// Creates a sparse file of exactly `size` bytes for `key`. An existing file of the same
    /// size is success; of another size, `AlreadyExists`.
    pub async fn create(&self, key: PoolKey<'_>, size: u64) -> Result<PathBuf> {
        let path = self.path_for(key)?;
        let volume = key.name;
        if size == 0 || !size.is_multiple_of(super::SECTOR) {
            return Err(Error::invalid(
                "size",
                format!("{size} is not a positive multiple of 512"),
            ));
        }
        if let Some(existing) = self.size(key).await? {
            return if existing == size {
                Ok(path)
            } else {
                Err(Error::AlreadyExists(format!(
                    "local volume `{volume}` exists with {existing} bytes, not {size}"
                )))
            };
        }
        self.ensure_dir().await?;
        // Build under a temporary name so a crash never leaves a file of the wrong size.
        let tmp = self
            .current_dir()
            .join(format!(".{}-{volume}.img.tmp", key.id));
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
        sync_dir(&self.current_dir()).await?;
        tracing::info!(volume, id = key.id, size, path = %path.display(), "created local volume file");
        Ok(path)
    }

    /// Grows `key`'s file to `new_size`. The same size is success; shrinking is refused.
    pub async fn grow(&self, key: PoolKey<'_>, new_size: u64) -> Result<()> {
        let path = self.path_for(key)?;
        let volume = key.name;
        let current = self
            .size(key)
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

    /// Deletes `file`; a missing file is success.
    pub async fn delete(&self, file: &PoolFile) -> Result<()> {
        let path = match file {
            PoolFile::Current { id, name } => self.path_for(PoolKey { id: *id, name })?,
            PoolFile::Legacy { name } => self.legacy_path(name)?,
        };
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                sync_dir(path.parent().unwrap_or(&self.dir)).await?;
                tracing::info!(?file, "deleted local volume file");
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("deleting", &path, e)),
        }
    }

    /// The files in the pool, current and legacy, sorted.
    pub async fn list(&self) -> Result<Vec<PoolFile>> {
        let mut out: Vec<PoolFile> = img_stems(&self.dir)
            .await?
            .into_iter()
            .map(|name| PoolFile::Legacy { name })
            .collect();
        for stem in img_stems(&self.current_dir()).await? {
            if let Some((id, name)) = stem.split_once('-')
                && let Ok(id) = id.parse()
            {
                out.push(PoolFile::Current {
                    id,
                    name: name.to_string(),
                });
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes every file in `listed` that `keep` refuses; returns them.
    /// List first (`list`), decide on a catalogue read after the listing: a file is only
    /// created once its volume is in the catalogue, so a live volume is always kept.
    pub async fn remove_unless(
        &self,
        listed: Vec<PoolFile>,
        keep: impl Fn(&PoolFile) -> bool,
    ) -> Result<Vec<PoolFile>> {
        let mut removed = Vec::new();
        for file in listed {
            if !keep(&file) {
                self.delete(&file).await?;
                removed.push(file);
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

    async fn ensure_dir(&self) -> Result<()> {
        let dir = self.current_dir();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_err("creating the pool directory", &dir, e))
    }
}

async fn sync_dir(dir: &Path) -> Result<()> {
    let f = tokio::fs::File::open(dir)
        .await
        .map_err(|e| io_err("opening", dir, e))?;
    f.sync_all().await.map_err(|e| io_err("syncing", dir, e))
}

async fn exists(path: &Path) -> Result<bool> {
    tokio::fs::try_exists(path)
        .await
        .map_err(|e| io_err("checking", path, e))
}

/// The stems of the `*.img` files directly in `dir` (not temporaries); none if it is missing.
async fn img_stems(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut rd = match tokio::fs::read_dir(dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("listing", dir, e)),
    };
    while let Some(entry) = rd
        .next_entry()
        .await
        .map_err(|e| io_err("listing", dir, e))?
    {
        let name = entry.file_name();
        if let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".img"))
            && !stem.starts_with('.')
        {
            out.push(stem.to_string());
        }
    }
    Ok(out)
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

    const V1: PoolKey<'static> = PoolKey { id: 1, name: "v1" };

    #[tokio::test]
    async fn create_grow_delete_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let pool = LocalPool::new(dir.path().join("pool"));
        let path = pool.create(V1, 1 << 20).await.unwrap();
        assert!(path.ends_with("pool/volumes/1-v1.img"), "{path:?}");
        assert_eq!(pool.create(V1, 1 << 20).await.unwrap(), path);
        assert!(matches!(
            pool.create(V1, 2 << 20).await,
            Err(Error::AlreadyExists(_))
        ));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 20);
        assert!(meta.blocks() * 512 < 1 << 20, "file must be sparse");
        pool.grow(V1, 4 << 20).await.unwrap();
        pool.grow(V1, 4 << 20).await.unwrap();
        assert!(matches!(
            pool.grow(V1, 1 << 20).await,
            Err(Error::OutOfRange(_))
        ));
        assert_eq!(pool.size(V1).await.unwrap(), Some(4 << 20));
        let listed = vec![PoolFile::Current {
            id: 1,
            name: "v1".into(),
        }];
        assert_eq!(pool.list().await.unwrap(), listed);
        assert!(pool.capacity().unwrap().total_bytes > 0);
        pool.delete(&listed[0]).await.unwrap();
        pool.delete(&listed[0]).await.unwrap();
        assert_eq!(pool.size(V1).await.unwrap(), None);
        assert!(matches!(
            pool.grow(V1, 1 << 20).await,
            Err(Error::NotFound { .. })
        ));
        let bad = PoolKey {
            id: 2,
            name: "../x",
        };
        assert!(matches!(
            pool.create(bad, 1 << 20).await,
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[tokio::test]
    async fn a_recreated_name_gets_a_new_file_and_legacy_files_are_adopted_once() {
        let dir = tempfile::tempdir().unwrap();
        let pool = LocalPool::new(dir.path());
        // The same name under a new id (deleted and created again): a new, empty file.
        let old = pool.create(V1, 1 << 20).await.unwrap();
        std::fs::write(&old, b"old tenant").unwrap();
        let again = PoolKey { id: 9, name: "v1" };
        let new = pool.create(again, 1 << 20).await.unwrap();
        assert_ne!(old, new);
        assert!(std::fs::read(&new).unwrap().iter().all(|b| *b == 0));

        // A file from before ids were in the name moves to its volume's id, data and all.
        std::fs::write(dir.path().join("legacy.img"), b"kept").unwrap();
        let legacy = PoolKey {
            id: 4,
            name: "legacy",
        };
        assert!(pool.adopt_legacy(legacy).await.unwrap());
        assert_eq!(
            std::fs::read(pool.path_for(legacy).unwrap()).unwrap(),
            b"kept"
        );
        assert!(!dir.path().join("legacy.img").exists());
        assert!(
            !pool.adopt_legacy(legacy).await.unwrap(),
            "nothing left to adopt"
        );
        // A legacy file never replaces an existing current file.
        std::fs::write(dir.path().join("v1.img"), b"stale").unwrap();
        assert!(!pool.adopt_legacy(again).await.unwrap());
        assert_eq!(
            pool.list().await.unwrap(),
            vec![
                PoolFile::Current {
                    id: 1,
                    name: "v1".into()
                },
                PoolFile::Current {
                    id: 4,
                    name: "legacy".into()
                },
                PoolFile::Current {
                    id: 9,
                    name: "v1".into()
                },
                PoolFile::Legacy { name: "v1".into() },
            ]
        );
    }
}
