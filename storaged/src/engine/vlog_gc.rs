//! Garbage collection of the value log: a sealed segment whose chunks were mostly
//! overwritten has its live chunks copied forward, and is deleted once the copy is durable.

use std::collections::HashMap;

use super::vlog::{self, CHUNK_PTR_LEN, Origin, ValueLog, ValuePtr};
use super::{Cf, Engine, keys};
use crate::Result;
use crate::chunks::CHUNK;

/// Below this much value log on a node nothing is collected: the space is cheap and the
/// longer a segment waits, the less of it is still live.
pub const FLOOR_BYTES: u64 = 256 << 20;
/// A segment with more than this share of its bytes live is left as it is for now: a
/// collection copies at most a third of what it frees (disk bytes per user byte ≤ 1.33).
/// Under uniform random overwrites the oldest segment falls to it once the log holds
/// about ln 4 ≈ 1.4 times the live data.
pub const LIVE_SHARE_MAX: f64 = 0.25;
/// Things copied per compare-and-swap batch: one hold of a write lock that every apply
/// (append) also takes, across this many point reads.
const SWAP_BATCH: usize = 64;
/// How often a node looks for segments to collect.
pub const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The log index a group has applied up to (`GroupStateMachine::applied_index`).
pub type AppliedIndex = fn(&dyn Engine, u64) -> Option<u64>;

/// Runs while the engine lives: a pass every `EVERY`, on a blocking thread, collecting
/// past `floor` bytes (`storaged --value-log-floor`, default `FLOOR_BYTES`).
pub async fn run(engine: std::sync::Weak<dyn Engine>, floor: u64, applied: AppliedIndex) {
    let collector = std::sync::Arc::new(std::sync::Mutex::new(Collector::default()));
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let collector = collector.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut c = collector.lock().unwrap_or_else(|p| p.into_inner());
            c.pass(engine.as_ref(), floor, applied)
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "value log collection failed; retried at the next pass");
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub removed: u32,
    pub copied_bytes: u64,
    pub freed_bytes: u64,
}

/// Something live in a segment: a chunk (`data`, with its CRC) or the data of a Raft log
/// entry not yet purged (`raft_log`); its key, raw value, where it lies, who wrote it.
struct Live {
    cf: Cf,
    key: Vec<u8>,
    raw: Vec<u8>,
    ptr: ValuePtr,
    crc: Option<u32>,
    origin: Origin,
}

enum Survey {
    /// A record is the data of a Raft log entry not yet applied: an apply may be about
    /// to point chunks at it, so the segment waits.
    Pinned,
    /// A record cannot be read (torn by a crash, a failed write): what follows it is not
    /// seen, so the segment is never deleted.
    Holed,
    Live(Vec<Live>),
}

/// Segments left alone (too live, or with a hole a scan cannot see past), with the bytes
/// appended and the time then: surveyed again after another segment's worth of writes or
/// `RESURVEY_AFTER` (a deleted volume frees chunks without any writes).
#[derive(Default)]
pub struct Collector {
    left: HashMap<u32, (u64, std::time::Instant)>,
}

/// How long a segment left alone is not surveyed again, at most.
const RESURVEY_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

impl Collector {
    /// Collects the oldest sealed segments worth it while the log holds more than `floor`
    /// bytes. Blocking: reads segments, flushes the engine once.
    pub fn pass(&mut self, engine: &dyn Engine, floor: u64, applied: AppliedIndex) -> Result<Pass> {
        let Some(vl) = engine.value_log() else {
            return Ok(Pass::default());
        };
        vl.close_retired();
        let segments = vl.segments();
        let mut total: u64 = segments.iter().map(|(_, n)| n).sum();
        let active = vl.active();
        let appended = vl.appended_bytes();
        self.left.retain(|seg, (at, when)| {
            segments.iter().any(|(s, _)| s == seg)
                && appended < *at + vlog::SEGMENT_BYTES
                && when.elapsed() < RESURVEY_AFTER
        });
        let mut pass = Pass::default();
        let mut emptied = Vec::new();
        for (seg, size) in segments {
            if total <= floor || seg == active {
                break;
            }
            if self.left.contains_key(&seg) {
                continue;
            }
            let live = match survey(engine, vl, seg, applied)? {
                Survey::Pinned => continue,
                Survey::Holed => {
                    tracing::warn!(
                        segment = seg,
                        "value log segment has a damaged record: not collected"
                    );
                    self.left.insert(seg, (appended, std::time::Instant::now()));
                    continue;
                }
                Survey::Live(live) => live,
            };
            let live_bytes: u64 = live.iter().map(|l| u64::from(l.ptr.len)).sum();
            if size > 0 && live_bytes as f64 > size as f64 * LIVE_SHARE_MAX {
                self.left.insert(seg, (appended, std::time::Instant::now()));
                continue;
            }
            pass.copied_bytes += copy_forward(engine, vl, live)?;
            emptied.push((seg, size, live_bytes));
            total -= size;
        }
        if emptied.is_empty() {
            return Ok(pass);
        }
        crash_point("vlog-gc-swapped");
        // The pointers to the copies durable (the copies were synced before the swap)
        // before the old bytes go: one flush for the pass.
        engine.persist()?;
        crash_point("vlog-gc-persisted");
        for (seg, size, live_bytes) in emptied {
            vl.remove(seg)?;
            crash_point("vlog-gc-removed");
            tracing::info!(
                segment = seg,
                bytes = size,
                live_bytes,
                "value log segment collected"
            );
            pass.removed += 1;
            pass.freed_bytes += size;
        }
        Ok(pass)
    }
}

/// A step of a collection at which a test can stop the process as `kill -9` would
/// (`FAILPOINTS=vlog-gc-synced=return`, read at start: `tests/vlog_crash.rs`).
fn crash_point(name: &str) {
    fail::fail_point!(name, |_| {
        tracing::error!(point = name, "crash point reached: aborting");
        std::process::abort()
    });
}

/// What is live in `seg`: chunks pointing into it, and the data of Raft log entries not
/// yet purged (an idle volume's last writes may never be: they are copied too, once
/// applied). `Pinned` if an entry in it is not yet applied.
fn survey(engine: &dyn Engine, vl: &ValueLog, seg: u32, applied: AppliedIndex) -> Result<Survey> {
    let mut live = Vec::new();
    let mut applied_of: HashMap<u64, Option<u64>> = HashMap::new();
    let (records, whole) = vl.records(seg)?;
    if !whole {
        return Ok(Survey::Holed);
    }
    for rec in records {
        let Origin { group, index, .. } = rec.origin;
        // Read before the chunks: apply writes a batch's chunks and `applied` at once,
        // so an entry applied by now has its chunks visible below.
        let done = *applied_of
            .entry(group)
            .or_insert_with(|| applied(engine, group));
        let key = keys::group_key(group, index).to_vec();
        if let Some(raw) = engine.get_raw(Cf::RaftLog, &key)?
            && vlog::split_log_value(&raw).is_some_and(|(p, _)| p == rec.ptr)
        {
            if done.is_none_or(|a| a < index) {
                return Ok(Survey::Pinned);
            }
            live.push(Live {
                cf: Cf::RaftLog,
                key,
                raw,
                ptr: rec.ptr,
                crc: None,
                origin: rec.origin,
            });
        }
        let start = rec.origin.offset;
        let end = start + u64::from(rec.ptr.len);
        for chunk in start.div_ceil(CHUNK)..end / CHUNK {
            let key = keys::group_key(group, chunk).to_vec();
            let Some(raw) = engine.get_raw(Cf::Data, &key)? else {
                continue;
            };
            if raw.len() != CHUNK_PTR_LEN {
                continue;
            }
            let within = (chunk * CHUNK - start) as u32;
            let want = rec.ptr.slice(within, CHUNK as u32);
            if let Some((ptr, crc)) = vlog::split_chunk_value(&raw)
                && ptr == want
            {
                live.push(Live {
                    cf: Cf::Data,
                    key,
                    raw,
                    ptr,
                    crc: Some(crc),
                    origin: Origin {
                        group,
                        index,
                        offset: chunk * CHUNK,
                    },
                });
            }
        }
    }
    Ok(Survey::Live(live))
}

/// A key, the raw value it must still hold, and its new one (`Engine::swap`).
type Swap = (Vec<u8>, Vec<u8>, Vec<u8>);

/// Appends each live thing anew and points its key there, unless an apply (an append)
/// replaced it meanwhile. Returns the bytes copied.
fn copy_forward(engine: &dyn Engine, vl: &ValueLog, live: Vec<Live>) -> Result<u64> {
    let mut copied = 0;
    for batch in live.chunks(SWAP_BATCH) {
        let mut payloads = Vec::with_capacity(batch.len());
        for l in batch {
            let bytes = match l.crc {
                Some(crc) => vl.read_chunk(l.ptr, crc)?,
                None => vl.read_record(l.ptr, l.origin.group, l.origin.index)?,
            };
            copied += bytes.len() as u64;
            payloads.push(bytes);
        }
        let records: Vec<(Origin, &[u8])> = batch
            .iter()
            .zip(&payloads)
            .map(|(l, b)| (l.origin, &b[..]))
            .collect();
        let ptrs = vl.append_all(&records)?;
        // Copies durable before anything points at them: a flush (a full memtable, any
        // group's snapshot) may persist the new pointers at any moment after the swap.
        vl.sync()?;
        crash_point("vlog-gc-synced");
        let mut swaps: HashMap<Cf, Vec<Swap>> = HashMap::new();
        for (l, ptr) in batch.iter().zip(ptrs) {
            let new_raw = match l.crc {
                Some(crc) => vlog::chunk_value(ptr, crc),
                None => {
                    let rest = vlog::split_log_value(&l.raw).map_or(&[][..], |(_, r)| r);
                    vlog::log_value(ptr, rest)
                }
            };
            swaps
                .entry(l.cf)
                .or_default()
                .push((l.key.clone(), l.raw.clone(), new_raw));
        }
        for (cf, swaps) in swaps {
            engine.swap(cf, swaps)?;
        }
    }
    Ok(copied)
}

#[cfg(all(test, feature = "rocks"))]
mod tests {
    use super::*;
    use crate::chunks::{Overlay, read};
    use crate::engine::{Batch, RocksEngine};

    fn all_applied(_: &dyn Engine, _: u64) -> Option<u64> {
        Some(u64::MAX)
    }

    fn none_applied(_: &dyn Engine, _: u64) -> Option<u64> {
        None
    }

    /// Writes `byte` over chunks `[first, first+n)` of group 9 as apply does: data in
    /// the value log, chunks pointing at it.
    fn write(e: &RocksEngine, first: u64, n: u64, byte: u8) {
        let vl = e.value_log().unwrap();
        let data = vec![byte; (n * CHUNK) as usize];
        let origin = Origin {
            group: 9,
            index: 1,
            offset: first * CHUNK,
        };
        let ptr = vl.append(origin, &data).unwrap();
        vl.sync().unwrap();
        let mut o = Overlay::default();
        o.write(e, 9, first * CHUNK, &data, Some(ptr)).unwrap();
        let mut b = Batch::default();
        o.into_batch(9, &mut b);
        e.write_unlogged(b).unwrap();
    }

    #[test]
    fn overwritten_segments_are_collected_and_live_chunks_survive() {
        let dir = tempfile::tempdir().unwrap();
        let e = RocksEngine::open(&dir.path().join("db")).unwrap();
        // 80 MiB over a 4 MiB range: the first segment is almost all overwritten.
        for round in 0..80u64 {
            write(&e, (round % 4) * 256, 256, round as u8 + 1);
        }
        let vl = e.value_log().unwrap();
        let first_seg = vl.segments()[0].0;
        let before: u64 = vl.segments().iter().map(|(_, n)| n).sum();
        let mut c = Collector::default();
        let pass = c.pass(&e, 0, all_applied).unwrap();
        assert!(pass.removed >= 1, "{pass:?}");
        assert!(vl.segments().iter().all(|(s, _)| *s != first_seg));
        let after: u64 = vl.segments().iter().map(|(_, n)| n).sum();
        assert!(after < before);
        for q in 0..4u64 {
            let last = (76 + q) as u8 + 1;
            let got = read(&e, 9, q * 256 * CHUNK, 256 * CHUNK).unwrap();
            assert!(got.iter().all(|b| *b == last), "quarter {q}");
        }
        // Nothing more to do under the floor.
        assert_eq!(c.pass(&e, u64::MAX, all_applied).unwrap(), Pass::default());
    }

    #[test]
    fn a_segment_with_a_damaged_record_is_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let e = RocksEngine::open(&dir.path().join("db")).unwrap();
        write(&e, 0, 256, 1);
        write(&e, 10_000, 1, 0x5a);
        for round in 0..70u64 {
            write(&e, 0, 256, round as u8 + 2);
        }
        let vl = e.value_log().unwrap();
        let oldest = vl.segments()[0].0;
        // The first record's header damaged in place: the chunk written after it (live)
        // would not be seen by a scan.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(format!("vlog/{oldest:010}.seg")))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 8], 0).unwrap();
        Collector::default().pass(&e, 0, all_applied).unwrap();
        assert!(vl.segments().iter().any(|(s, _)| *s == oldest));
        assert_eq!(
            read(&e, 9, 10_000 * CHUNK, CHUNK).unwrap(),
            vec![0x5a; 4096]
        );
    }

    #[test]
    fn live_chunks_are_copied_and_read_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let e = RocksEngine::open(&path).unwrap();
            write(&e, 10_000, 1, 0x5a);
            for round in 0..70u64 {
                write(&e, 0, 256, round as u8 + 1);
            }
            let vl = e.value_log().unwrap();
            let oldest = vl.segments()[0].0;
            let pass = Collector::default().pass(&e, 0, all_applied).unwrap();
            assert!(pass.copied_bytes >= CHUNK, "{pass:?}");
            assert!(vl.segments().iter().all(|(s, _)| *s != oldest));
        }
        let e = RocksEngine::open(&path).unwrap();
        assert_eq!(
            read(&e, 9, 10_000 * CHUNK, CHUNK).unwrap(),
            vec![0x5a; 4096]
        );
        assert_eq!(read(&e, 9, 0, CHUNK).unwrap(), vec![70; 4096]);
    }

    #[test]
    fn the_data_of_log_entries_waits_for_apply_then_moves() {
        let dir = tempfile::tempdir().unwrap();
        let e = RocksEngine::open(&dir.path().join("db")).unwrap();
        let vl = e.value_log().unwrap();
        let origin = Origin {
            group: 9,
            index: 42,
            offset: 0,
        };
        let ptr = vl.append(origin, &[1u8; 4096]).unwrap();
        let mut b = Batch::default();
        b.put(
            Cf::RaftLog,
            keys::group_key(9, 42).to_vec(),
            vlog::log_value(ptr, b"rest"),
        );
        e.write(b, true).unwrap();
        for round in 0..70u64 {
            write(&e, 0, 256, round as u8);
        }
        // Not yet applied: an apply may point chunks at it, so the segment waits.
        Collector::default().pass(&e, 0, none_applied).unwrap();
        assert!(vl.segments().iter().any(|(s, _)| *s == ptr.seg));
        assert_eq!(vl.read(ptr).unwrap(), vec![1u8; 4096]);
        // Applied but never purged (an idle volume's last write): copied forward, and the
        // log entry points at the copy.
        let pass = Collector::default().pass(&e, 0, all_applied).unwrap();
        assert!(pass.removed >= 1, "{pass:?}");
        assert!(vl.segments().iter().all(|(s, _)| *s != ptr.seg));
        let raw = e
            .get_raw(Cf::RaftLog, &keys::group_key(9, 42))
            .unwrap()
            .unwrap();
        let (moved, rest) = vlog::split_log_value(&raw).unwrap();
        assert_ne!(moved, ptr);
        assert_eq!(rest, b"rest");
        assert_eq!(vl.read(moved).unwrap(), vec![1u8; 4096]);
        assert!(vl.check(moved, 9, 42));
    }
}
