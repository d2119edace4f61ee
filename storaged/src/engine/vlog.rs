//! The value log: block payloads written once, to segment files under `<data-dir>/vlog`.
//! A record is the durable copy of a Raft entry's data and, once applied, what chunks point at.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// A segment is sealed once it holds this much; a record never spans two.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Record header: magic, payload length, group, log index, the volume offset the payload
/// was written at, payload CRC, header CRC.
pub const HEADER: usize = 40;
const MAGIC: u32 = 0x314c_5643; // "CVL1"
/// Prefix of a `raft_log` value whose entry's data is in the value log. No bincode
/// encoding of an entry starts with 0xff (a varint never does), so old values differ.
const LOG_TAG: [u8; 4] = [0xff, b'V', b'L', 1];
/// A `data` value pointing at a chunk in the value log (inline chunks are 4096 bytes).
const CHUNK_TAG: [u8; 4] = [0xff, b'V', b'C', 1];
pub const CHUNK_PTR_LEN: usize = 4 + ValuePtr::ENCODED + 4;

/// Where a payload (or part of one) lies: segment number, byte offset, length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValuePtr {
    pub seg: u32,
    pub off: u32,
    pub len: u32,
}

impl ValuePtr {
    pub const ENCODED: usize = 12;

    pub fn encode(&self) -> [u8; Self::ENCODED] {
        let mut b = [0u8; Self::ENCODED];
        b[..4].copy_from_slice(&self.seg.to_le_bytes());
        b[4..8].copy_from_slice(&self.off.to_le_bytes());
        b[8..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; Self::ENCODED] = b.get(..Self::ENCODED)?.try_into().ok()?;
        let word = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Some(ValuePtr {
            seg: word(0),
            off: word(4),
            len: word(8),
        })
    }

    /// `[within, within+len)` of this payload.
    pub fn slice(&self, within: u32, len: u32) -> ValuePtr {
        debug_assert!(within + len <= self.len);
        ValuePtr {
            seg: self.seg,
            off: self.off + within,
            len,
        }
    }

    /// The end of this range as a position in the log's append order.
    fn end(&self) -> u64 {
        position(self.seg, u64::from(self.off) + u64::from(self.len))
    }
}

fn position(seg: u32, off: u64) -> u64 {
    (u64::from(seg) << 32) | off
}

/// A `raft_log` value for an entry whose data is at `ptr`; `rest` is the entry encoded
/// without its data.
pub fn log_value(ptr: ValuePtr, rest: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(LOG_TAG.len() + ValuePtr::ENCODED + rest.len());
    v.extend_from_slice(&LOG_TAG);
    v.extend_from_slice(&ptr.encode());
    v.extend_from_slice(rest);
    v
}

/// Splits a `raft_log` value written by `log_value`; `None` for an entry stored whole.
pub fn split_log_value(v: &[u8]) -> Option<(ValuePtr, &[u8])> {
    let rest = v.strip_prefix(&LOG_TAG)?;
    Some((ValuePtr::decode(rest)?, &rest[ValuePtr::ENCODED..]))
}

/// A `data` value pointing at a chunk whose bytes have CRC `crc`.
pub fn chunk_value(ptr: ValuePtr, crc: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(CHUNK_PTR_LEN);
    v.extend_from_slice(&CHUNK_TAG);
    v.extend_from_slice(&ptr.encode());
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

/// The pointer and CRC of a `data` value written by `chunk_value`; `None` for an inline chunk.
pub fn split_chunk_value(v: &[u8]) -> Option<(ValuePtr, u32)> {
    if v.len() != CHUNK_PTR_LEN {
        return None;
    }
    let rest = v.strip_prefix(&CHUNK_TAG)?;
    let ptr = ValuePtr::decode(rest)?;
    let crc = u32::from_le_bytes(rest[ValuePtr::ENCODED..].try_into().ok()?);
    Some((ptr, crc))
}

/// One record as found by a scan of a segment (for garbage collection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub origin: Origin,
    pub ptr: ValuePtr,
}

struct Tail {
    seg: u32,
    file: Arc<File>,
    len: u64,
    /// Segments appended to since the last sync began.
    dirty: BTreeSet<u32>,
    /// A segment file was created since the last sync began: the directory needs one too.
    dir_dirty: bool,
}

pub struct ValueLog {
    dir: PathBuf,
    files: RwLock<BTreeMap<u32, Arc<File>>>,
    tail: Mutex<Tail>,
    /// Serializes syncs, so a sync never reports more than it made durable.
    sync_lock: Mutex<()>,
    /// Everything appended before this position is durable.
    synced: AtomicU64,
    appended: AtomicU64,
    /// Deleted segments still open for readers that looked up a pointer into them.
    retired: Mutex<Vec<(Instant, u32)>>,
    /// Point-in-time readers (snapshot streams) running: retired segments stay open.
    pins: Arc<AtomicUsize>,
    previous_mark: u64,
    /// An fsync failed: nothing appended since can be made durable (`sync`).
    failed: AtomicBool,
}

/// Where (in `raft_state`) the durable position is recorded at every group commit, as 8
/// little-endian bytes: after a crash, data before it is whole.
pub fn synced_key() -> Vec<u8> {
    super::keys::named(u64::MAX, "vlog-synced")
}

/// Held by a long point-in-time reader: deleted segments stay readable meanwhile.
pub struct Pin(Arc<AtomicUsize>);

impl Drop for Pin {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a deleted segment stays open for readers that found a pointer into it.
const RETIRED_GRACE: Duration = Duration::from_secs(10);

/// The number of the segment file called `name`, if it is one.
pub fn segment_number(name: &std::ffi::OsStr) -> Option<u32> {
    name.to_str()?.strip_suffix(".seg")?.parse().ok()
}

fn seg_path(dir: &Path, seg: u32) -> PathBuf {
    dir.join(format!("{seg:010}.seg"))
}

fn create_segment(dir: &Path, seg: u32) -> Result<Arc<File>> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(seg_path(dir, seg))?;
    Ok(Arc::new(f))
}

/// What a record's header says about its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub group: u64,
    /// The Raft log index of the entry that wrote it.
    pub index: u64,
    /// The volume offset it was written at.
    pub offset: u64,
}

/// Writes every byte of `parts` in order at `at`: `pwritev`, at most `IOV_MAX` slices a
/// call, resumed after a short write.
fn write_all_vectored_at(
    file: &File,
    mut parts: &mut [std::io::IoSlice<'_>],
    mut at: u64,
) -> std::io::Result<()> {
    const IOV_MAX: usize = 1024;
    while !parts.is_empty() {
        let n = parts.len().min(IOV_MAX);
        let written = match nix::sys::uio::pwritev(file, &parts[..n], at as i64) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(w) => w,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        at += written as u64;
        std::io::IoSlice::advance_slices(&mut parts, written);
    }
    Ok(())
}

fn header(origin: Origin, payload: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[8..16].copy_from_slice(&origin.group.to_le_bytes());
    h[16..24].copy_from_slice(&origin.index.to_le_bytes());
    h[24..32].copy_from_slice(&origin.offset.to_le_bytes());
    h[32..36].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let hc = crc32fast::hash(&h[..36]);
    h[36..].copy_from_slice(&hc.to_le_bytes());
    h
}

/// A parsed, self-consistent header: (payload length, origin, payload CRC).
fn parse_header(h: &[u8; HEADER]) -> Option<(u32, Origin, u32)> {
    let word = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let long = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    if word(0) != MAGIC || word(36) != crc32fast::hash(&h[..36]) {
        return None;
    }
    let origin = Origin {
        group: long(8),
        index: long(16),
        offset: long(24),
    };
    Some((word(4), origin, word(32)))
}

impl ValueLog {
    /// Opens the log in `dir` (created if missing). Appends always go to a new segment:
    /// the tail of the last one may be torn by a crash, and nothing is appended after it.
    /// Earlier segments are fsynced first: a process killed before its last sync left
    /// bytes in the page cache that this run counts as durable. `previous_mark` is the
    /// durable position the last run recorded (`synced_key`; 0 if none).
    pub fn open(dir: &Path, previous_mark: u64) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut files = BTreeMap::new();
        let mut highest = 0;
        for entry in std::fs::read_dir(dir)? {
            let Some(seg) = segment_number(&entry?.file_name()) else {
                continue;
            };
            highest = highest.max(seg);
            let path = seg_path(dir, seg);
            let f = OpenOptions::new().read(true).write(true).open(&path)?;
            if f.metadata()?.len() == 0 {
                // Opened and never appended to: nothing can point into it.
                std::fs::remove_file(&path)?;
                continue;
            }
            f.sync_data()?;
            files.insert(seg, Arc::new(f));
        }
        // Never a number used before, so no old pointer can name the new segment.
        let seg = highest + 1;
        let file = create_segment(dir, seg)?;
        files.insert(seg, file.clone());
        std::fs::File::open(dir)?.sync_all()?;
        Ok(ValueLog {
            dir: dir.to_path_buf(),
            files: RwLock::new(files),
            tail: Mutex::new(Tail {
                seg,
                file,
                len: 0,
                dirty: BTreeSet::new(),
                dir_dirty: false,
            }),
            sync_lock: Mutex::new(()),
            synced: AtomicU64::new(position(seg, 0)),
            appended: AtomicU64::new(0),
            retired: Mutex::new(Vec::new()),
            pins: Arc::new(AtomicUsize::new(0)),
            previous_mark,
            failed: AtomicBool::new(false),
        })
    }

    /// The durable position the previous run recorded: log entries whose data lies past
    /// it may have been torn by its end (`LogStore::drop_torn_tail` checks them).
    pub fn previous_mark(&self) -> u64 {
        self.previous_mark
    }

    fn lock_tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `payload`, written by `origin`; readable on return, durable after the
    /// next `sync`.
    pub fn append(&self, origin: Origin, payload: &[u8]) -> Result<ValuePtr> {
        Ok(self.append_all(&[(origin, payload)])?[0])
    }

    /// Appends several payloads with one write per segment they land in (a `pwritev`
    /// of headers and payloads where they lie: the payloads are not copied).
    pub fn append_all(&self, records: &[(Origin, &[u8])]) -> Result<Vec<ValuePtr>> {
        let headers: Vec<[u8; HEADER]> = records.iter().map(|(o, p)| header(*o, p)).collect();
        let mut out = Vec::with_capacity(records.len());
        let mut t = self.lock_tail();
        // Records `[first, i)` go at `first_at` of the tail segment.
        let (mut first, mut first_at) = (0, t.len);
        for (i, (_, payload)) in records.iter().enumerate() {
            let need = (HEADER + payload.len()) as u64;
            if t.len > 0 && t.len + need > SEGMENT_BYTES {
                // Everything so far lands in the segment being sealed.
                self.write_at(&mut t, &headers[first..i], &records[first..i], first_at)?;
                self.roll(&mut t)?;
                (first, first_at) = (i, 0);
            }
            out.push(ValuePtr {
                seg: t.seg,
                off: (t.len + HEADER as u64) as u32,
                len: payload.len() as u32,
            });
            t.len += need;
            let seg = t.seg;
            t.dirty.insert(seg);
            self.appended.fetch_add(need, Ordering::Relaxed);
        }
        if first < records.len() {
            self.write_at(&mut t, &headers[first..], &records[first..], first_at)?;
        }
        Ok(out)
    }

    /// Writes the records (each header, then its payload) at `at` of the tail segment. If
    /// that fails (ENOSPC, EIO), part of it may be there: the segment is sealed at `at` (a
    /// scan of it stops there, so it is never collected) and appends go on in a new one.
    fn write_at(
        &self,
        t: &mut Tail,
        headers: &[[u8; HEADER]],
        records: &[(Origin, &[u8])],
        at: u64,
    ) -> Result<()> {
        let mut parts: Vec<std::io::IoSlice> = headers
            .iter()
            .zip(records)
            .flat_map(|(h, (_, p))| [std::io::IoSlice::new(h), std::io::IoSlice::new(p)])
            .collect();
        if let Err(e) = write_all_vectored_at(&t.file, &mut parts, at) {
            t.len = at;
            self.roll(t)?;
            return Err(e.into());
        }
        Ok(())
    }

    /// Starts the next segment as the tail.
    fn roll(&self, t: &mut Tail) -> Result<()> {
        let seg = t.seg + 1;
        let file = create_segment(&self.dir, seg)?;
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(seg, file.clone());
        t.seg = seg;
        t.file = file;
        t.len = 0;
        t.dir_dirty = true;
        Ok(())
    }

    fn file(&self, seg: u32) -> Result<Arc<File>> {
        self.files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&seg)
            .cloned()
            .ok_or_else(|| Error::Corrupt(format!("value log segment {seg} is missing")))
    }

    /// The bytes at `ptr`.
    pub fn read(&self, ptr: ValuePtr) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; ptr.len as usize];
        self.file(ptr.seg)?
            .read_exact_at(&mut buf, u64::from(ptr.off))
            .map_err(|e| {
                Error::Corrupt(format!(
                    "value log segment {} offset {} length {}: {e}",
                    ptr.seg, ptr.off, ptr.len
                ))
            })?;
        Ok(buf)
    }

    /// The payload of the record at `ptr`, checked: whole (both CRCs) and written by entry
    /// `index` of `group`.
    pub fn read_record(&self, ptr: ValuePtr, group: u64, index: u64) -> Result<Vec<u8>> {
        let at = u64::from(ptr.off)
            .checked_sub(HEADER as u64)
            .ok_or_else(|| Error::Corrupt(format!("value log pointer {ptr:?} has no header")))?;
        let mut buf = vec![0u8; HEADER + ptr.len as usize];
        self.file(ptr.seg)?
            .read_exact_at(&mut buf, at)
            .map_err(|e| {
                Error::Corrupt(format!(
                    "value log segment {} offset {}: {e}",
                    ptr.seg, ptr.off
                ))
            })?;
        let h: &[u8; HEADER] = buf[..HEADER].try_into().expect("header length");
        let whole = parse_header(h).is_some_and(|(len, origin, crc)| {
            len == ptr.len
                && origin.group == group
                && origin.index == index
                && crc32fast::hash(&buf[HEADER..]) == crc
        });
        if !whole {
            return Err(Error::Corrupt(format!(
                "value log segment {} offset {}: the record of entry {index} of group {group} is damaged",
                ptr.seg, ptr.off
            )));
        }
        buf.drain(..HEADER);
        Ok(buf)
    }

    /// The chunk a `data` value points at, checked against its CRC.
    pub fn read_chunk(&self, ptr: ValuePtr, crc: u32) -> Result<Vec<u8>> {
        let b = self.read(ptr)?;
        if crc32fast::hash(&b) != crc {
            return Err(Error::Corrupt(format!(
                "value log segment {} offset {}: chunk checksum mismatch",
                ptr.seg, ptr.off
            )));
        }
        Ok(b)
    }

    /// Resolves a `data` value: a pointer is read from the log, an inline chunk returned.
    pub fn resolve(&self, v: Vec<u8>) -> Result<Vec<u8>> {
        match split_chunk_value(&v) {
            Some((ptr, crc)) => self.read_chunk(ptr, crc),
            None => Ok(v),
        }
    }

    /// Whether the whole record `ptr` starts is intact and was written by entry `index` of
    /// `group` (after a crash: was it durable?).
    pub fn check(&self, ptr: ValuePtr, group: u64, index: u64) -> bool {
        self.read_record(ptr, group, index).is_ok()
    }

    /// Makes every record appended before the call durable. After one fsync fails, every
    /// later sync fails too: the kernel may have dropped the pages it could not write, and a
    /// second fsync would report success over them.
    pub fn sync(&self) -> Result<()> {
        self.sync_to(None)
    }

    fn sync_to(&self, need: Option<ValuePtr>) -> Result<()> {
        let _one = self.sync_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::Io(std::io::Error::other(
                "an earlier fsync of the value log failed",
            )));
        }
        if need.is_some_and(|p| self.is_synced(p)) {
            // Another sync covered it while this one waited for the lock.
            return Ok(());
        }
        let (point, dirty, dir_dirty) = {
            let mut t = self.lock_tail();
            let point = position(t.seg, t.len);
            (
                point,
                std::mem::take(&mut t.dirty),
                std::mem::take(&mut t.dir_dirty),
            )
        };
        let synced = (|| -> Result<()> {
            for seg in dirty {
                self.file(seg)?.sync_data()?;
            }
            if dir_dirty {
                std::fs::File::open(&self.dir)?.sync_all()?;
            }
            Ok(())
        })();
        if let Err(e) = synced {
            self.failed.store(true, Ordering::Release);
            return Err(e);
        }
        self.synced.fetch_max(point, Ordering::AcqRel);
        Ok(())
    }

    /// Whether `ptr` was made durable by a completed `sync`.
    pub fn is_synced(&self, ptr: ValuePtr) -> bool {
        ptr.end() <= self.synced.load(Ordering::Acquire)
    }

    /// Makes `ptr` durable if no sync has yet.
    pub fn sync_upto(&self, ptr: ValuePtr) -> Result<()> {
        if self.is_synced(ptr) {
            return Ok(());
        }
        self.sync_to(Some(ptr))
    }

    /// The durable position: every record before it survives a crash (see `synced_before`).
    pub fn synced_position(&self) -> u64 {
        self.synced.load(Ordering::Acquire)
    }

    /// Whether `ptr` lies wholly before `position` (as returned by `synced_position`).
    pub fn before(ptr: ValuePtr, position: u64) -> bool {
        ptr.end() <= position
    }

    /// Segments and their sizes in bytes, oldest first; the last is the one appended to.
    pub fn segments(&self) -> Vec<(u32, u64)> {
        let retired: BTreeSet<u32> = self
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, s)| *s)
            .collect();
        let files = self.files.read().unwrap_or_else(|p| p.into_inner());
        files
            .iter()
            .filter(|(s, _)| !retired.contains(s))
            .map(|(s, f)| (*s, f.metadata().map(|m| m.len()).unwrap_or(0)))
            .collect()
    }

    /// Keeps deleted segments readable until the returned pin drops.
    pub fn pin(&self) -> Pin {
        self.pins.fetch_add(1, Ordering::AcqRel);
        Pin(self.pins.clone())
    }

    /// Closes deleted segments past their grace, unless a pinned reader runs.
    pub fn close_retired(&self) {
        if self.pins.load(Ordering::Acquire) > 0 {
            return;
        }
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
        retired.retain(|(at, seg)| {
            let done = at.elapsed() >= RETIRED_GRACE;
            if done {
                files.remove(seg);
            }
            !done
        });
    }

    /// The segment appends go to (never collected).
    pub fn active(&self) -> u32 {
        self.lock_tail().seg
    }

    /// Bytes appended since open (records and headers).
    pub fn appended_bytes(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// The records of segment `seg` in order, up to the first that is not intact, and
    /// whether that was the end of the file (if not, records after a hole are not seen).
    pub fn records(&self, seg: u32) -> Result<(Vec<Record>, bool)> {
        let file = self.file(seg)?;
        let size = file.metadata()?.len();
        let mut out = Vec::new();
        let mut at = 0u64;
        while at + HEADER as u64 <= size {
            let mut h = [0u8; HEADER];
            file.read_exact_at(&mut h, at)?;
            let Some((len, origin, _)) = parse_header(&h) else {
                break;
            };
            let end = at + HEADER as u64 + u64::from(len);
            if end > size {
                break;
            }
            out.push(Record {
                origin,
                ptr: ValuePtr {
                    seg,
                    off: (at + HEADER as u64) as u32,
                    len,
                },
            });
            at = end;
        }
        Ok((out, at == size))
    }

    /// Deletes segment `seg`, never the active one. It stays open for reads a while
    /// (`close_retired`): a reader may have found a pointer into it just before.
    pub fn remove(&self, seg: u32) -> Result<()> {
        if seg == self.active() {
            return Err(Error::Internal(format!(
                "value log segment {seg} is being appended to"
            )));
        }
        std::fs::remove_file(seg_path(&self.dir, seg))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((Instant::now(), seg));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValueLog::open(dir.path(), 0).unwrap();
        let at = |group, index| Origin {
            group,
            index,
            offset: 8192,
        };
        let a = log.append(at(3, 10), b"hello").unwrap();
        let b = log.append(at(4, 11), &[7u8; 4096]).unwrap();
        assert_eq!(log.read(a).unwrap(), b"hello");
        assert_eq!(log.read(b.slice(4000, 96)).unwrap(), vec![7u8; 96]);
        assert!(!log.is_synced(b));
        log.sync().unwrap();
        assert!(log.is_synced(a) && log.is_synced(b));
        let (recs, whole) = log.records(a.seg).unwrap();
        assert!(whole);
        assert_eq!(
            recs,
            vec![
                Record {
                    origin: at(3, 10),
                    ptr: a
                },
                Record {
                    origin: at(4, 11),
                    ptr: b
                }
            ]
        );
        drop(log);
        let log = ValueLog::open(dir.path(), 0).unwrap();
        assert_ne!(
            log.active(),
            a.seg,
            "appends go to a new segment after a reopen"
        );
        assert!(log.check(a, 3, 10) && log.check(b, 4, 11));
        assert!(!log.check(a, 3, 11), "another entry's record");
        assert_eq!(log.read(b).unwrap(), vec![7u8; 4096]);
    }

    #[test]
    fn a_torn_record_fails_its_check_and_ends_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValueLog::open(dir.path(), 0).unwrap();
        let at = |index| Origin {
            group: 1,
            index,
            offset: 0,
        };
        let a = log.append(at(1), &[1u8; 100]).unwrap();
        let b = log.append(at(2), &[2u8; 100]).unwrap();
        drop(log);
        // The second record loses its last bytes, as a crash before its sync can do.
        let f = OpenOptions::new()
            .write(true)
            .open(seg_path(dir.path(), a.seg))
            .unwrap();
        f.set_len(u64::from(b.off) + 50).unwrap();
        let log = ValueLog::open(dir.path(), 0).unwrap();
        assert!(log.check(a, 1, 1));
        assert!(!log.check(b, 1, 2));
        let (recs, whole) = log.records(a.seg).unwrap();
        assert_eq!(recs.len(), 1);
        assert!(!whole, "the scan stopped at the torn record");
        // A payload damaged in place fails its checksum.
        f.write_all_at(&[9u8], u64::from(a.off)).unwrap();
        assert!(!log.check(a, 1, 1));
    }

    #[test]
    fn segments_roll_over_and_old_ones_can_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValueLog::open(dir.path(), 0).unwrap();
        let big = vec![5u8; 1 << 20];
        let at = |index| Origin {
            group: 1,
            index,
            offset: 0,
        };
        let first = log.append(at(1), &big).unwrap();
        let mut last = first;
        for i in 0..70 {
            last = log.append(at(i + 2), &big).unwrap();
        }
        assert!(last.seg > first.seg, "a segment holds at most 64 MiB");
        assert!(log.remove(log.active()).is_err());
        log.remove(first.seg).unwrap();
        assert_eq!(log.read(first).unwrap(), big, "readable through its grace");
        assert!(log.segments().iter().all(|(s, _)| *s != first.seg));
        log.retired.lock().unwrap()[0].0 -= RETIRED_GRACE;
        let pin = log.pin();
        log.close_retired();
        assert!(log.read(first).is_ok(), "a pinned reader keeps it open");
        drop(pin);
        log.close_retired();
        assert!(log.read(first).is_err());
        assert!(!log.check(first, 1, 1));
        assert_eq!(log.read(last).unwrap(), big);
        assert!(log.segments().iter().all(|(s, _)| *s != first.seg));
    }

    #[test]
    fn values_in_the_column_families_round_trip() {
        let p = ValuePtr {
            seg: 7,
            off: 4128,
            len: 4096,
        };
        let v = chunk_value(p, 0xdead_beef);
        assert_eq!(split_chunk_value(&v), Some((p, 0xdead_beef)));
        assert_eq!(split_chunk_value(&[0u8; 4096]), None);
        let l = log_value(p, b"entry");
        assert_eq!(split_log_value(&l), Some((p, &b"entry"[..])));
        assert_eq!(split_log_value(b"\x01\x02entry"), None);
    }
}
