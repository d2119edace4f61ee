//! Snapshot data of a group: paged lazily from a point-in-time engine view, streamed
//! page by page, and spooled to a local file by the receiver before it is installed.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::dedup::Writer;
use super::{decode, encode, io_err};
use crate::chunks::CHUNK;
use crate::engine::{Pages, keys};
use crate::fence::Fence;
use crate::meta::catalog::Catalog;
use crate::raft::resume::Digest;

/// Chunk bytes per page: the unit of a snapshot message and of an install batch.
pub const PAGE_BYTES: usize = 4 << 20;

/// The largest encoded page a reader accepts (a page of `PAGE_BYTES` plus its
/// framing, or a catalogue).
const MAX_PAGE: usize = 64 << 20;

/// Refuses a page over `MAX_PAGE` before anything is allocated or written for it.
fn check_page_len(len: usize) -> io::Result<()> {
    if len > MAX_PAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot page of {len} bytes is over {MAX_PAGE}"),
        ));
    }
    Ok(())
}

/// One unit of a snapshot, on the wire and in a spool file.
#[derive(Serialize, Deserialize, Debug)]
pub enum Page {
    /// Volume chunks as (chunk index, contents), in index order.
    Chunks(Vec<(u64, Bytes)>),
    /// The meta group's whole catalogue.
    Catalog(Catalog),
    /// A volume group's applied fence (sent before its chunks; appended last).
    Fence(Fence),
    /// A volume group's writers and their applied writes (`dedup.rs`), sent before its
    /// chunks (appended last: an older node cannot install a snapshot holding it).
    Writers(Vec<(u64, Writer)>),
    /// Chunk ranges the receiver holds from an interrupted transfer with these digests
    /// (`resume.rs`): it takes them from its partial spool. Only sent to a receiver that
    /// reported them; never spooled as such.
    Held(Vec<(u64, Digest)>),
}

impl Page {
    /// Checks a received page before it is spooled or applied: chunk contents of at most
    /// `CHUNK` bytes, chunk indices in strictly ascending order (after `after`, the last
    /// index of the previous page) and addressing a byte offset that fits in a `u64`.
    /// Returns the page's last chunk index (or `after` when it has none).
    pub fn validate(&self, after: Option<u64>) -> io::Result<Option<u64>> {
        let Page::Chunks(chunks) = self else {
            return Ok(after);
        };
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let mut last = after;
        for (idx, data) in chunks {
            if data.len() as u64 > CHUNK {
                return Err(bad(format!(
                    "snapshot chunk {idx} holds {} bytes, over the chunk size {CHUNK}",
                    data.len()
                )));
            }
            if idx.checked_mul(CHUNK).is_none() {
                return Err(bad(format!(
                    "snapshot chunk index {idx} is past any volume"
                )));
            }
            if last.is_some_and(|l| *idx <= l) {
                return Err(bad(format!(
                    "snapshot chunk {idx} follows chunk {} (indices must ascend)",
                    last.unwrap_or_default()
                )));
            }
            last = Some(*idx);
        }
        Ok(last)
    }
}

/// What a snapshot carries between the state machine and the transport.
pub enum SnapshotData {
    /// A built snapshot: openraft keeps only its meta, the data is made on demand.
    Empty,
    /// The meta group's catalogue.
    Catalog(Catalog),
    /// A volume's fence, its writers, then its chunks paged from a point-in-time engine
    /// view (full engine keys).
    Chunks {
        fence: Option<Fence>,
        writers: Option<Vec<(u64, Writer)>>,
        pages: Pages,
        /// About how many bytes the pages hold (the engine's estimate, for progress).
        estimate: u64,
    },
    /// Pages received from a leader, spooled to a local file, ready to install.
    Spooled(Spool),
}

impl SnapshotData {
    /// About how many bytes the pages still to send hold (0 when not known).
    pub fn estimate(&self) -> u64 {
        match self {
            SnapshotData::Chunks { estimate, .. } => *estimate,
            _ => 0,
        }
    }

    /// The next page to send; `None` once all are sent.
    pub async fn next_page(&mut self) -> io::Result<Option<Page>> {
        match self {
            SnapshotData::Empty => Ok(None),
            SnapshotData::Catalog(c) => {
                let c = std::mem::take(c);
                *self = SnapshotData::Empty;
                Ok(Some(Page::Catalog(c)))
            }
            SnapshotData::Chunks { fence, .. } if fence.is_some() => {
                Ok(fence.take().map(Page::Fence))
            }
            SnapshotData::Chunks { writers, .. } if writers.is_some() => {
                Ok(writers.take().map(Page::Writers))
            }
            SnapshotData::Chunks { pages, .. } => match pages.recv().await {
                None => Ok(None),
                Some(Err(e)) => Err(io_err(e)),
                Some(Ok(kvs)) => Ok(Some(Page::Chunks(
                    kvs.into_iter()
                        .map(|(k, v)| (keys::suffix_of(&k), Bytes::from(v)))
                        .collect(),
                ))),
            },
            SnapshotData::Spooled(s) => Err(io::Error::other(format!(
                "spooled snapshot {} is installed here, not sent on",
                s.path.display()
            ))),
        }
    }

    /// Writes every remaining page to a new spool file in `dir`.
    pub async fn spool(mut self, dir: &Path, group: u64) -> io::Result<Spool> {
        if let SnapshotData::Spooled(s) = self {
            return Ok(s);
        }
        let mut w = SpoolWriter::create(dir, group).await?;
        while let Some(page) = self.next_page().await? {
            w.page(&encode(&page)?).await?;
        }
        w.finish().await
    }
}

/// A spooled snapshot file; removed when dropped unless `keep` hands it on.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    armed: bool,
}

impl Spool {
    /// Takes charge of the spool file at `path` (removed when dropped unless kept).
    pub fn adopt(path: PathBuf) -> Self {
        Spool { path, armed: true }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file now belongs to whoever recorded its path (an install marker).
    pub fn keep(mut self) -> PathBuf {
        self.armed = false;
        std::mem::take(&mut self.path)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The spool file prefix of a group, so a restart can clear what a crash left.
pub fn spool_prefix(group: u64) -> String {
    format!("g{group}-")
}

/// Removes `group`'s spool files in `dir` (what a crash left, or a group that is gone).
pub fn remove_spools(dir: &Path, group: u64) {
    let prefix = spool_prefix(group);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A new spool file name of `group` in `dir` (unique in this process).
fn spool_name(dir: &Path, group: u64) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    dir.join(format!(
        "{}{nanos}-{}.snap",
        spool_prefix(group),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Renames the file at `from` to a new spool file of `group` beside it, to install.
pub fn spool_from(from: &Path, group: u64) -> io::Result<Spool> {
    let dir = from.parent().unwrap_or(Path::new("."));
    let to = spool_name(dir, group);
    std::fs::rename(from, &to)?;
    Ok(Spool::adopt(to))
}

/// Writes encoded pages, each framed by its length (u32, little-endian).
pub struct SpoolWriter {
    file: tokio::io::BufWriter<tokio::fs::File>,
    spool: Spool,
    /// The last chunk index spooled, for `Page::validate`.
    last_chunk: Option<u64>,
    /// Flush each page to the file (a resumable spool: a killed process leaves whole pages).
    flush_pages: bool,
}

impl SpoolWriter {
    pub async fn create(dir: &Path, group: u64) -> io::Result<Self> {
        tokio::fs::create_dir_all(dir).await?;
        let path = spool_name(dir, group);
        let file = tokio::fs::File::create(&path).await?;
        Ok(SpoolWriter {
            file: tokio::io::BufWriter::with_capacity(1 << 20, file),
            spool: Spool { path, armed: true },
            last_chunk: None,
            flush_pages: false,
        })
    }

    /// A resumable spool at `path` (kept when dropped, each page flushed): a new file, or
    /// `path` appended to after its chunk `last_chunk` when `append`.
    pub async fn resumable(
        path: PathBuf,
        append: bool,
        last_chunk: Option<u64>,
    ) -> io::Result<Self> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&path)
            .await?;
        Ok(SpoolWriter {
            file: tokio::io::BufWriter::with_capacity(1 << 20, file),
            spool: Spool { path, armed: false },
            last_chunk: if append { last_chunk } else { None },
            flush_pages: true,
        })
    }

    /// Appends one encoded page, after checking that it decodes and is well formed.
    pub async fn page(&mut self, encoded: &[u8]) -> io::Result<()> {
        check_page_len(encoded.len())?;
        let page = decode::<Page>(encoded)?;
        self.append(&page, encoded).await
    }

    /// Appends one page already decoded from `encoded`.
    pub async fn page_decoded(&mut self, page: &Page, encoded: &[u8]) -> io::Result<()> {
        check_page_len(encoded.len())?;
        self.append(page, encoded).await
    }

    /// Appends one page (encoded here).
    pub async fn put(&mut self, page: &Page) -> io::Result<()> {
        let encoded = encode(page)?;
        check_page_len(encoded.len())?;
        self.append(page, &encoded).await
    }

    async fn append(&mut self, page: &Page, encoded: &[u8]) -> io::Result<()> {
        if matches!(page, Page::Held(_)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a held-ranges page is resolved before it is spooled",
            ));
        }
        self.last_chunk = page.validate(self.last_chunk)?;
        self.file
            .write_all(&(encoded.len() as u32).to_le_bytes())
            .await?;
        self.file.write_all(encoded).await?;
        if self.flush_pages {
            self.file.flush().await?;
        }
        Ok(())
    }

    /// The last chunk index written.
    pub fn last_chunk(&self) -> Option<u64> {
        self.last_chunk
    }

    /// Makes the file durable: a crash after this can install from it.
    pub async fn finish(mut self) -> io::Result<Spool> {
        self.file.flush().await?;
        self.file.get_ref().sync_all().await?;
        Ok(self.spool)
    }
}

/// Reads the pages of a spool file back, in order.
pub struct SpoolReader {
    file: io::BufReader<std::fs::File>,
    last_chunk: Option<u64>,
    /// The end of the last whole, valid page read (bytes from the start of the file).
    pos: u64,
}

impl SpoolReader {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| {
            io::Error::new(e.kind(), format!("snapshot spool {}: {e}", path.display()))
        })?;
        Ok(SpoolReader {
            file: io::BufReader::with_capacity(1 << 20, file),
            last_chunk: None,
            pos: 0,
        })
    }

    /// Where the last whole, valid page read ends.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// The last chunk index read.
    pub fn last_chunk(&self) -> Option<u64> {
        self.last_chunk
    }

    /// The next page, validated again (a spool file outlives the process that wrote it).
    pub fn next_page(&mut self) -> io::Result<Option<Page>> {
        let mut len = [0u8; 4];
        match self.file.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(len) as usize;
        check_page_len(len)?;
        let mut buf = vec![0u8; len];
        self.file.read_exact(&mut buf)?;
        let page: Page = decode(&buf)?;
        self.last_chunk = page.validate(self.last_chunk)?;
        self.pos += 4 + len as u64;
        Ok(Some(page))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_round_trip_through_a_spool_file_and_a_drop_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::create(dir.path(), 7).await.unwrap();
        let chunks = Page::Chunks(vec![(3, Bytes::from(vec![1u8; 4096])), (9, Bytes::new())]);
        w.page(&encode(&chunks).unwrap()).await.unwrap();
        w.page(&encode(&Page::Catalog(Catalog::default())).unwrap())
            .await
            .unwrap();
        // Garbage is refused before it reaches the file.
        assert!(w.page(b"\xff\xff\xff").await.is_err());
        let spool = w.finish().await.unwrap();
        let name = spool
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with(&spool_prefix(7)), "{name}");

        let mut r = SpoolReader::open(spool.path()).unwrap();
        match r.next_page().unwrap() {
            Some(Page::Chunks(c)) => {
                assert_eq!(c.len(), 2);
                assert_eq!((c[0].0, c[0].1.len(), c[0].1[0]), (3, 4096, 1));
                assert_eq!((c[1].0, c[1].1.len()), (9, 0));
            }
            other => panic!("expected chunks, got {other:?}"),
        }
        assert!(matches!(r.next_page().unwrap(), Some(Page::Catalog(_))));
        assert!(r.next_page().unwrap().is_none());

        let path = spool.path().to_path_buf();
        drop(spool);
        assert!(!path.exists(), "an unclaimed spool file is removed");
    }

    #[tokio::test]
    async fn a_kept_spool_survives_and_a_truncated_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::create(dir.path(), 1).await.unwrap();
        w.page(&encode(&Page::Chunks(vec![(0, Bytes::from(vec![5u8; 512]))])).unwrap())
            .await
            .unwrap();
        let path = w.finish().await.unwrap().keep();
        assert!(path.exists());
        // Cut the last page short: reading it fails instead of installing half a page.
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 10).unwrap();
        let mut r = SpoolReader::open(&path).unwrap();
        assert!(r.next_page().is_err());
    }

    #[tokio::test]
    async fn engine_pages_become_chunk_pages_in_key_order() {
        use crate::engine::{Batch, Cf, Engine, MemEngine};
        use std::sync::Arc;
        let e = Arc::new(MemEngine::new());
        let mut b = Batch::default();
        for idx in (0..40u64).rev() {
            b.put(
                Cf::Data,
                keys::group_key(4, idx).to_vec(),
                vec![idx as u8; 4096],
            );
        }
        // Another group's chunk is outside the range.
        b.put(Cf::Data, keys::group_key(5, 0).to_vec(), vec![1; 4096]);
        e.write(b, false).unwrap();
        let pages = e
            .clone()
            .scan_pages(
                Cf::Data,
                keys::group_start(4).to_vec(),
                keys::group_end(4).to_vec(),
                10 * 4096,
            )
            .unwrap();
        let mut data = SnapshotData::Chunks {
            fence: None,
            writers: None,
            pages,
            estimate: 0,
        };
        let mut seen = Vec::new();
        let mut n_pages = 0;
        while let Some(p) = data.next_page().await.unwrap() {
            n_pages += 1;
            let Page::Chunks(c) = p else {
                panic!("volume pages hold chunks")
            };
            for (idx, v) in c {
                assert_eq!(v[0], idx as u8);
                seen.push(idx);
            }
        }
        assert_eq!(seen, (0..40).collect::<Vec<_>>());
        assert!(
            n_pages >= 4,
            "40 chunks in pages of ~10: got {n_pages} pages"
        );
    }
}
