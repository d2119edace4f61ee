//! Node-local kernel exposure of volumes ("frontends"): FUSE file + loop device (served by a
//! process of its own), NBD export, loop device on a local-pool file, and the attach manager.

pub mod attach;
pub mod fuse;
pub mod host;
pub mod launch;
pub mod local_pool;
pub mod loopdev;
pub mod nbd;
pub mod nbd_client;
pub mod nbd_local;
pub mod process;
pub mod standalone;

use bytes::Bytes;
use cairn_proto::VolumeName;
use futures::future::BoxFuture;

/// Granularity of I/O against a [`BlockDevice`]: offsets and lengths are multiples of this.
pub const SECTOR: u64 = 512;

/// Largest single request the frontends pass to a [`BlockDevice`] when they split work
/// themselves (zeroing a range).
const MAX_CHUNK: u64 = 1 << 20;

/// The errno a frontend answers for a failed request: ENOSPC while the volume's nodes are
/// short of space (`node/space.rs`), as a full disk would; EIO for everything else.
pub fn errno_of(e: &crate::Error) -> i32 {
    match e.code() {
        tonic::Code::ResourceExhausted => nix::errno::Errno::ENOSPC as i32,
        _ => nix::errno::Errno::EIO as i32,
    }
}

/// A block device served by storaged: a replicated volume (Raft-backed) or a test fake.
///
/// Offsets and lengths are multiples of [`SECTOR`]; the frontends align every request
/// (read-modify-write for the rare unaligned one) before calling in. A range that was never
/// written, or was discarded, reads as zeros: FUSE punch-hole and NBD write-zeroes rely on it.
pub trait BlockDevice: Send + Sync + 'static {
    /// Current size in bytes (may grow after resize).
    fn size(&self) -> u64;
    fn read(&self, offset: u64, len: u32) -> BoxFuture<'_, crate::Result<Vec<u8>>>;
    fn write(&self, offset: u64, data: Bytes) -> BoxFuture<'_, crate::Result<()>>;
    fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, crate::Result<()>>;
    fn flush(&self) -> BoxFuture<'_, crate::Result<()>>;
    /// The publish generation writes carry from now on (`fence.rs`), after a re-publish
    /// to this node; devices that are not fenced ignore it.
    fn set_generation(&self, _generation: u64) {}
}

/// What the attach manager needs from the rest of storaged.
pub trait VolumeOpener: Send + Sync + 'static {
    /// Look up a volume by name; returns how to expose it.
    /// `generation` is the publish generation the volume's writes carry (0: unfenced).
    fn open(&self, volume: &str, generation: u64) -> BoxFuture<'_, crate::Result<Opened>>;
    /// `open`, for a frontend process's requests (`nbd_local.rs`): they wait out elections
    /// and lost quorums as long as the frontend would, since it cannot resend a write under
    /// the same write identity.
    fn open_for_frontend(
        &self,
        volume: &str,
        generation: u64,
    ) -> BoxFuture<'_, crate::Result<Opened>> {
        self.open(volume, generation)
    }
    /// How to start a FUSE frontend for `volume` in a process of its own (`process.rs`);
    /// `None` (the default, for openers of in-memory test devices): served in this process.
    fn frontend_spec(
        &self,
        _volume: &str,
    ) -> BoxFuture<'_, crate::Result<Option<process::FrontendSpec>>> {
        Box::pin(async { Ok(None) })
    }
    /// Returns once sizes seen through opened volumes reflect every committed resize.
    fn catch_up(&self) -> BoxFuture<'_, crate::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

pub enum Opened {
    /// Replicated volume: expose through FUSE (+loop) or NBD.
    Replicated(std::sync::Arc<dyn BlockDevice>),
    /// `type: local` volume: a sparse file in the local pool; expose with a loop device directly.
    Local { path: std::path::PathBuf, size: u64 },
}

fn align_down(x: u64) -> u64 {
    x / SECTOR * SECTOR
}

fn align_up(x: u64) -> u64 {
    x.div_ceil(SECTOR) * SECTOR
}

/// Reads `len` bytes at any `offset`, widening the request to whole sectors when needed.
/// The caller has already clamped the range to the device size.
pub(crate) async fn read_at(
    dev: &dyn BlockDevice,
    offset: u64,
    len: u32,
) -> crate::Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let start = align_down(offset);
    let end = align_up(offset + u64::from(len));
    if start == offset && end == offset + u64::from(len) {
        return dev.read(offset, len).await;
    }
    let wide = dev.read(start, to_u32(end - start)?).await?;
    let skip = (offset - start) as usize;
    wide.get(skip..skip + len as usize)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            crate::Error::Internal(format!("short read at {start}: {} bytes", wide.len()))
        })
}

/// Writes `data` at any `offset`. Unaligned edges are read-modify-write; that is not atomic
/// against a concurrent write to the same sector, which direct I/O never issues.
pub(crate) async fn write_at(dev: &dyn BlockDevice, offset: u64, data: Bytes) -> crate::Result<()> {
    let len = data.len() as u64;
    if len == 0 {
        return Ok(());
    }
    let start = align_down(offset);
    let end = align_up(offset + len);
    if start == offset && end == offset + len {
        return dev.write(offset, data).await;
    }
    let mut wide = dev.read(start, to_u32(end - start)?).await?;
    let skip = (offset - start) as usize;
    let dst = wide.get_mut(skip..skip + data.len()).ok_or_else(|| {
        crate::Error::Internal(format!("short read at {start} for read-modify-write"))
    })?;
    dst.copy_from_slice(&data);
    dev.write(start, Bytes::from(wide)).await
}

/// Makes `[offset, offset+len)` read as zeros: the aligned middle is discarded, the unaligned
/// edges are overwritten with zeros.
pub(crate) async fn zero_range(dev: &dyn BlockDevice, offset: u64, len: u64) -> crate::Result<()> {
    let end = offset + len;
    let mid_start = align_up(offset).min(end);
    let mid_end = align_down(end).max(mid_start);
    if mid_start > offset {
        write_at(
            dev,
            offset,
            Bytes::from(vec![0; (mid_start - offset) as usize]),
        )
        .await?;
    }
    if mid_end > mid_start {
        dev.discard(mid_start, mid_end - mid_start).await?;
    }
    if end > mid_end {
        write_at(dev, mid_end, Bytes::from(vec![0; (end - mid_end) as usize])).await?;
    }
    Ok(())
}

/// Discards the whole sectors inside `[offset, offset+len)`; partial sectors are left alone
/// (a trim is advisory).
pub(crate) async fn trim_range(dev: &dyn BlockDevice, offset: u64, len: u64) -> crate::Result<()> {
    let start = align_up(offset);
    let end = align_down(offset + len);
    if end > start {
        dev.discard(start, end - start).await?;
    }
    Ok(())
}

/// Writes zeros to `[offset, offset+len)` without relying on discard (NBD `NO_HOLE`).
pub(crate) async fn write_zeroes(
    dev: &dyn BlockDevice,
    offset: u64,
    len: u64,
) -> crate::Result<()> {
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let n = (end - pos).min(MAX_CHUNK);
        write_at(dev, pos, Bytes::from(vec![0; n as usize])).await?;
        pos += n;
    }
    Ok(())
}

fn to_u32(n: u64) -> crate::Result<u32> {
    u32::try_from(n)
        .map_err(|_| crate::Error::OutOfRange(format!("request of {n} bytes is too large")))
}

/// Longest volume name the frontends expose: names go into file names such as the local
/// pool's `.<id>-<name>.img.tmp`, which must fit in the filesystem's 255 bytes.
const MAX_EXPOSED_NAME: usize = 200;

/// A volume name as used in paths under the run directory and the local pool: the name rule
/// ([`VolumeName`]), and short enough for those file names.
pub(crate) fn validate_volume(volume: &str) -> crate::Result<VolumeName> {
    let name =
        VolumeName::parse(volume).map_err(|e| crate::Error::invalid("volume", e.to_string()))?;
    if volume.len() > MAX_EXPOSED_NAME {
        return Err(crate::Error::invalid(
            "volume",
            format!(
                "is {} bytes; the frontends expose names of at most {MAX_EXPOSED_NAME}",
                volume.len()
            ),
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A device that rejects unaligned I/O, like the real one may.
    struct Strict(Mutex<Vec<u8>>);

    impl BlockDevice for Strict {
        fn size(&self) -> u64 {
            self.0.lock().map(|v| v.len() as u64).unwrap_or(0)
        }
        fn read(&self, offset: u64, len: u32) -> BoxFuture<'_, crate::Result<Vec<u8>>> {
            Box::pin(async move {
                assert!(
                    offset.is_multiple_of(SECTOR) && u64::from(len) % SECTOR == 0,
                    "unaligned read"
                );
                let v = self.0.lock().unwrap();
                Ok(v[offset as usize..offset as usize + len as usize].to_vec())
            })
        }
        fn write(&self, offset: u64, data: Bytes) -> BoxFuture<'_, crate::Result<()>> {
            Box::pin(async move {
                assert!(
                    offset.is_multiple_of(SECTOR) && (data.len() as u64).is_multiple_of(SECTOR),
                    "unaligned write"
                );
                self.0.lock().unwrap()[offset as usize..offset as usize + data.len()]
                    .copy_from_slice(&data);
                Ok(())
            })
        }
        fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, crate::Result<()>> {
            Box::pin(async move {
                assert!(
                    offset.is_multiple_of(SECTOR) && len.is_multiple_of(SECTOR),
                    "unaligned discard"
                );
                self.0.lock().unwrap()[offset as usize..(offset + len) as usize].fill(0);
                Ok(())
            })
        }
        fn flush(&self) -> BoxFuture<'_, crate::Result<()>> {
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn unaligned_io_is_widened_to_sectors() {
        let dev = Strict(Mutex::new(vec![7; 4096]));
        write_at(&dev, 100, Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(
            read_at(&dev, 98, 9).await.unwrap(),
            b"\x07\x07hello\x07\x07"
        );
        zero_range(&dev, 101, 1500).await.unwrap();
        let all = read_at(&dev, 0, 4096).await.unwrap();
        assert_eq!(&all[99..102], &[7, b'h', 0]);
        assert!(all[101..1601].iter().all(|&b| b == 0));
        assert_eq!(all[1601], 7);
        trim_range(&dev, 1, 4000).await.unwrap();
        let all = read_at(&dev, 0, 4096).await.unwrap();
        assert_eq!(all[0], 7);
        assert!(all[512..3584].iter().all(|&b| b == 0));
        assert_eq!(all[4095], 7);
    }

    #[test]
    fn volume_names_are_validated() {
        assert!(validate_volume("pvc-1234").is_ok());
        assert!(validate_volume(&"a".repeat(200)).is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b", "pv 1", &"a".repeat(201)] {
            assert!(validate_volume(bad).is_err(), "{bad:?}");
        }
    }
}
