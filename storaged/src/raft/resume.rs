//! Resumable snapshot transfers: the receiver keeps what an interrupted transfer brought
//! (a partial spool, digested by chunk range) and the sender skips the ranges it holds.
//!
//! A resumed transfer is of whatever snapshot the leader makes now: a range is skipped
//! only when the receiver's copy has the same digest as the sender's, so the spool it
//! installs holds exactly the new snapshot's chunks (see decision 036).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::snapshot::{
    PAGE_BYTES, Page, SnapshotData, Spool, SpoolReader, SpoolWriter, spool_from,
};

/// Chunks per range: the unit a resumed transfer skips or sends again (1 MiB of volume).
pub const RANGE_CHUNKS: u64 = 256;

/// The most ranges a receiver reports (64 GiB held; about 3 MiB of reply): beyond them a
/// resumed transfer sends everything again.
pub const MAX_HELD: usize = 1 << 16;

/// SHA-256 of a range's chunks: each chunk's index, length and contents, in order.
pub type Digest = [u8; 32];

/// A range the receiver holds from an interrupted transfer.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldRange {
    pub range: u64,
    pub digest: Digest,
    /// Chunk bytes in the range (progress of a resumed transfer counts them as copied).
    pub bytes: u64,
}

pub fn range_of(idx: u64) -> u64 {
    idx / RANGE_CHUNKS
}

/// The digest and chunk bytes of one range's chunks.
pub fn digest_of(chunks: &[(u64, Bytes)]) -> (Digest, u64) {
    let mut h = Sha256::new();
    let mut bytes = 0;
    for (idx, data) in chunks {
        h.update(idx.to_le_bytes());
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
        bytes += data.len() as u64;
    }
    (h.finalize().into(), bytes)
}

/// The chunks of a spool file in index order, whatever pages hold them.
struct ChunkCursor {
    reader: SpoolReader,
    buf: VecDeque<(u64, Bytes)>,
    done: bool,
}

impl ChunkCursor {
    fn open(path: &Path) -> io::Result<Self> {
        Ok(ChunkCursor {
            reader: SpoolReader::open(path)?,
            buf: VecDeque::new(),
            done: false,
        })
    }

    fn peek(&mut self) -> io::Result<Option<u64>> {
        while self.buf.is_empty() && !self.done {
            match self.reader.next_page()? {
                Some(Page::Chunks(cs)) => self.buf.extend(cs),
                Some(_) => {}
                None => self.done = true,
            }
        }
        Ok(self.buf.front().map(|c| c.0))
    }

    /// The chunks of `range` (those before it are passed over).
    fn range(&mut self, range: u64) -> io::Result<Vec<(u64, Bytes)>> {
        let mut out = Vec::new();
        while let Some(idx) = self.peek()? {
            if range_of(idx) > range {
                break;
            }
            let c = self.buf.pop_front().expect("peeked");
            if range_of(idx) == range {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Every chunk after `after`, in pages of about `PAGE_BYTES`.
    fn pages_after(&mut self, after: Option<u64>) -> io::Result<Option<Vec<(u64, Bytes)>>> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some(idx) = self.peek()? {
            let c = self.buf.pop_front().expect("peeked");
            if after.is_some_and(|a| idx <= a) {
                continue;
            }
            bytes += c.1.len();
            out.push(c);
            if bytes >= PAGE_BYTES {
                break;
            }
        }
        Ok(Some(out).filter(|o| !o.is_empty()))
    }
}

/// Groups whose partial spool is in use here, by its path: one transfer at a time.
static IN_USE: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// A group's partial spool on the receiver: `held` (what interrupted transfers brought)
/// and `recv` (the transfer in progress), both in `dir`; held while this value lives.
pub struct Partial {
    group: u64,
    held: PathBuf,
    recv: PathBuf,
}

impl Drop for Partial {
    fn drop(&mut self) {
        IN_USE
            .lock()
            .expect("partial spools poisoned")
            .remove(&self.held);
    }
}

fn paths(dir: &Path, group: u64) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("r{group}-held.snap")),
        dir.join(format!("r{group}-recv.snap")),
    )
}

/// Removes what interrupted transfers of `group` left in `dir` (the group is gone here).
pub fn discard(dir: &Path, group: u64) {
    let (held, recv) = paths(dir, group);
    for p in [held, recv] {
        if let Err(e) = std::fs::remove_file(&p)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(group, path = %p.display(), error = %e, "could not remove a partial snapshot spool");
        }
    }
}

impl Partial {
    /// Takes `group`'s partial spool in `dir`, and finishes what an interrupted transfer
    /// left (its pages merged into `held`); `None` while another transfer uses it.
    pub async fn take(dir: &Path, group: u64) -> io::Result<Option<Partial>> {
        let (held, recv) = paths(dir, group);
        if !IN_USE
            .lock()
            .expect("partial spools poisoned")
            .insert(held.clone())
        {
            return Ok(None);
        }
        let p = Partial { group, held, recv };
        tokio::fs::create_dir_all(dir).await?;
        p.recover().await?;
        Ok(Some(p))
    }

    /// `recv` left by an interrupted transfer: its whole pages, then `held`'s chunks past
    /// them, become `held`. Idempotent: a crash part-way redoes it.
    async fn recover(&self) -> io::Result<()> {
        if !self.recv.exists() {
            return Ok(());
        }
        let (end, last) = {
            let mut r = SpoolReader::open(&self.recv)?;
            while let Ok(Some(_)) = r.next_page() {}
            (r.pos(), r.last_chunk())
        };
        if last.is_none() {
            // No chunk came: nothing to keep beyond what `held` has.
            return std::fs::remove_file(&self.recv);
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.recv)?
            .set_len(end)?;
        let mut w = SpoolWriter::resumable(self.recv.clone(), true, last).await?;
        if self.held.exists() {
            let mut old = ChunkCursor::open(&self.held)?;
            // A torn end of `held` only loses what it held past the tear.
            while let Ok(Some(page)) = old.pages_after(last) {
                w.put(&Page::Chunks(page)).await?;
            }
        }
        w.finish().await?.keep();
        std::fs::rename(&self.recv, &self.held)?;
        tracing::info!(
            group = self.group,
            "kept the pages of an interrupted snapshot transfer"
        );
        Ok(())
    }

    /// The ranges held, with their digests (at most `MAX_HELD`).
    pub fn held(&self) -> io::Result<Vec<HeldRange>> {
        if !self.held.exists() {
            return Ok(Vec::new());
        }
        let mut cur = ChunkCursor::open(&self.held)?;
        let mut out = Vec::new();
        while out.len() < MAX_HELD {
            let Ok(Some(idx)) = cur.peek() else { break };
            let range = range_of(idx);
            let Ok(chunks) = cur.range(range) else { break };
            let (digest, bytes) = digest_of(&chunks);
            out.push(HeldRange {
                range,
                digest,
                bytes,
            });
        }
        Ok(out)
    }

    /// Starts receiving a transfer into `recv`, taking held ranges from `held`.
    pub async fn receive(self) -> io::Result<Receiving> {
        let writer = SpoolWriter::resumable(self.recv.clone(), false, None).await?;
        let source = if self.held.exists() {
            Some(ChunkCursor::open(&self.held)?)
        } else {
            None
        };
        Ok(Receiving {
            partial: self,
            writer,
            source,
            reused: 0,
        })
    }
}

/// A transfer being received into a group's partial spool.
pub struct Receiving {
    partial: Partial,
    writer: SpoolWriter,
    source: Option<ChunkCursor>,
    /// Chunk bytes taken from the held spool rather than the wire.
    pub reused: u64,
}

impl Receiving {
    /// Spools one page from the wire; the ranges of a `Held` page come from the held
    /// spool, checked against the sender's digests.
    pub async fn page(&mut self, encoded: &[u8]) -> io::Result<()> {
        let page: Page = super::decode(encoded)?;
        let Page::Held(ranges) = page else {
            return self.writer.page_decoded(&page, encoded).await;
        };
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let Some(source) = self.source.as_mut() else {
            return Err(bad("held ranges named, but nothing is held here".into()));
        };
        for (range, digest) in ranges {
            let chunks = source.range(range)?;
            let (mine, bytes) = digest_of(&chunks);
            if mine != digest {
                return Err(bad(format!(
                    "held range {range} differs from the sender's (or was named twice)"
                )));
            }
            self.reused += bytes;
            if !chunks.is_empty() {
                self.writer.put(&Page::Chunks(chunks)).await?;
            }
        }
        Ok(())
    }

    /// The whole transfer is here: its spool, durable, to install; nothing is held any more.
    pub async fn finish(self) -> io::Result<Spool> {
        self.writer.finish().await?.keep();
        let spool = spool_from(&self.partial.recv, self.partial.group)?;
        if let Err(e) = std::fs::remove_file(&self.partial.held)
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(e);
        }
        Ok(spool)
    }
}

/// The sender's side: a snapshot's pages with the ranges the receiver holds (with the same
/// digest) replaced by `Held` pages naming them.
pub struct Resumed {
    data: SnapshotData,
    held: BTreeMap<u64, Digest>,
    /// The range being gathered (held by the receiver) and its chunks.
    open: Option<(u64, Vec<(u64, Bytes)>)>,
    chunks: Vec<(u64, Bytes)>,
    chunk_bytes: usize,
    skipping: Vec<(u64, Digest)>,
    out: VecDeque<Page>,
    ended: bool,
    /// Chunk bytes skipped so far (not yet taken by `take_skipped`).
    skipped: u64,
}

impl Resumed {
    pub fn new(data: SnapshotData, held: &[HeldRange]) -> Self {
        Resumed {
            data,
            held: held.iter().map(|h| (h.range, h.digest)).collect(),
            open: None,
            chunks: Vec::new(),
            chunk_bytes: 0,
            skipping: Vec::new(),
            out: VecDeque::new(),
            ended: false,
            skipped: 0,
        }
    }

    /// Chunk bytes skipped since the last call.
    pub fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped)
    }

    /// The next page to send; `None` once all are sent.
    pub async fn next_page(&mut self) -> io::Result<Option<Page>> {
        if self.held.is_empty() {
            return self.data.next_page().await;
        }
        loop {
            if let Some(p) = self.out.pop_front() {
                return Ok(Some(p));
            }
            if self.ended {
                return Ok(None);
            }
            match self.data.next_page().await? {
                Some(Page::Chunks(cs)) => {
                    for (idx, data) in cs {
                        self.chunk(idx, data);
                    }
                }
                Some(other) => {
                    self.flush();
                    self.out.push_back(other);
                }
                None => {
                    self.flush();
                    self.ended = true;
                }
            }
        }
    }

    fn chunk(&mut self, idx: u64, data: Bytes) {
        let range = range_of(idx);
        if self.open.as_ref().is_some_and(|(r, _)| *r != range) {
            self.close_range();
        }
        if self.held.contains_key(&range) {
            self.open
                .get_or_insert_with(|| (range, Vec::new()))
                .1
                .push((idx, data));
        } else {
            self.send((idx, data));
        }
    }

    /// Ends the range being gathered: skipped if the receiver's digest matches, else sent.
    fn close_range(&mut self) {
        let Some((range, chunks)) = self.open.take() else {
            return;
        };
        let (digest, bytes) = digest_of(&chunks);
        if self.held.get(&range) == Some(&digest) {
            self.flush_chunks();
            self.skipping.push((range, digest));
            self.skipped += bytes;
        } else {
            for c in chunks {
                self.send(c);
            }
        }
    }

    fn send(&mut self, c: (u64, Bytes)) {
        if !self.skipping.is_empty() {
            self.out
                .push_back(Page::Held(std::mem::take(&mut self.skipping)));
        }
        self.chunk_bytes += c.1.len();
        self.chunks.push(c);
        if self.chunk_bytes >= PAGE_BYTES {
            self.flush_chunks();
        }
    }

    fn flush_chunks(&mut self) {
        if !self.chunks.is_empty() {
            self.out
                .push_back(Page::Chunks(std::mem::take(&mut self.chunks)));
        }
        self.chunk_bytes = 0;
    }

    fn flush(&mut self) {
        self.close_range();
        self.flush_chunks();
        if !self.skipping.is_empty() {
            self.out
                .push_back(Page::Held(std::mem::take(&mut self.skipping)));
        }
    }
}

/// Where a received snapshot is spooled: a volume's into its partial spool (resumable),
/// the catalogue's into a plain one.
pub enum Incoming {
    Plain(SpoolWriter),
    Resumable(Receiving),
}

impl Incoming {
    pub async fn page(&mut self, encoded: &[u8]) -> io::Result<()> {
        match self {
            Incoming::Plain(w) => w.page(encoded).await,
            Incoming::Resumable(r) => r.page(encoded).await,
        }
    }

    /// The spool to install, and the chunk bytes taken from what was held.
    pub async fn finish(self) -> io::Result<(Spool, u64)> {
        match self {
            Incoming::Plain(w) => Ok((w.finish().await?, 0)),
            Incoming::Resumable(r) => {
                let reused = r.reused;
                Ok((r.finish().await?, reused))
            }
        }
    }
}
