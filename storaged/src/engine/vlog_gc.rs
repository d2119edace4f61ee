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

/// A segment left alone (too live, or with a hole a scan cannot see past): when it was
/// surveyed (bytes appended then, and the time), its live bytes then, and how many more
/// bytes must be appended before it is surveyed again.
struct Left {
    at: u64,
    when: std::time::Instant,
    live: u64,
    wait: u64,
}

/// Surveys cost a point read per chunk, so they are spent where they can pay: a segment
/// too live is surveyed again only once enough bytes were appended that overwrites could
/// have brought it down to `LIVE_SHARE_MAX` (each appended byte kills at most one live
/// byte), and twice as late each time a survey finds it about as live as before (cold
/// data); and the surveys of a pass that free nothing cover at most twice what was
/// appended since the pass before (at least one segment).
#[derive(Default)]
pub struct Collector {
    left: HashMap<u32, Left>,
    /// Bytes appended at the previous pass.
    seen: u64,
}

/// How long a segment left alone is not surveyed again, at most (a deleted volume or a
/// discard frees chunks without any writes).
const RESURVEY_AFTER: std::time::Duration = std::time::Duration::from_secs(600);
/// The least and the most appended bytes a segment left alone waits for.
const WAIT_MIN: u64 = vlog::SEGMENT_BYTES / 16;
const WAIT_MAX: u64 = vlog::SEGMENT_BYTES * 64;

impl Left {
    fn due(&self, appended: u64) -> bool {
        appended >= self.at.saturating_add(self.wait) || self.when.elapsed() >= RESURVEY_AFTER
    }
}

fn live_bytes(live: &[Live]) -> u64 {
    live.iter().map(|l| u64::from(l.ptr.len)).sum()
}

/// Whether a segment of `size` bytes with `live` things in it is worth collecting.
fn collectible(size: u64, live: &[Live]) -> bool {
    size == 0 || live_bytes(live) as f64 <= size as f64 * LIVE_SHARE_MAX
}

/// How long a segment of `size` bytes found with `live` bytes waits, given what the
/// survey before found (`before`).
fn wait_for(size: u64, live: u64, before: Option<&Left>) -> u64 {
    let over = live.saturating_sub((size as f64 * LIVE_SHARE_MAX) as u64);
    match before {
        // Hardly anything died since: cold data, back off.
        Some(b) if b.live.saturating_sub(live) < WAIT_MIN => b.wait.saturating_mul(2),
        _ => over,
    }
    .clamp(WAIT_MIN, WAIT_MAX)
}

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
        self.left
            .retain(|seg, _| segments.iter().any(|(s, _)| s == seg));
        let mut budget = appended
            .saturating_sub(self.seen)
            .saturating_mul(2)
            .max(vlog::SEGMENT_BYTES);
        self.seen = appended;
        let mut pass = Pass::default();
        let mut emptied = Vec::new();
        for (seg, size) in segments {
            if total <= floor || seg == active || budget == 0 {
                break;
            }
            if self.left.get(&seg).is_some_and(|l| !l.due(appended)) {
                continue;
            }
            let before = self.left.remove(&seg);
            let mut leave = |live: u64, wait: u64| {
                let when = std::time::Instant::now();
                self.left.insert(
                    seg,
                    Left {
                        at: appended,
                        when,
                        live,
                        wait,
                    },
                );
            };
            let surveyed = survey(engine, vl, seg, applied)?;
            if !matches!(&surveyed, Survey::Live(l) if collectible(size, l)) {
                // Only a survey that frees nothing counts against the budget.
                budget = budget.saturating_sub(size);
            }
            let live = match surveyed {
                Survey::Pinned => continue,
                Survey::Holed => {
                    tracing::warn!(
                        segment = seg,
                        "value log segment has a damaged record: not collected"
                    );
                    leave(size, u64::MAX);
                    continue;
                }
                Survey::Live(live) => live,
            };
            let live_bytes = live_bytes(&live);
            if !collectible(size, &live) {
                leave(live_bytes, wait_for(size, live_bytes, before.as_ref()));
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
///
/// Reads, in this order: each group's applied index, the log entries, the chunks. Apply
/// writes a batch's chunks and `applied` at once, so an entry applied by the first read
/// has its chunks visible to the last; one applied later still has its log entry
/// pointing here when that is read (purges come after apply), so it pins the segment.
fn survey(engine: &dyn Engine, vl: &ValueLog, seg: u32, applied: AppliedIndex) -> Result<Survey> {
    let (records, whole) = vl.records(seg)?;
    if !whole {
        return Ok(Survey::Holed);
    }
    let mut applied_of: HashMap<u64, Option<u64>> = HashMap::new();
    for rec in &records {
        let group = rec.origin.group;
        applied_of
            .entry(group)
            .or_insert_with(|| applied(engine, group));
    }
    let log_keys: Vec<Vec<u8>> = records
        .iter()
        .map(|r| keys::group_key(r.origin.group, r.origin.index).to_vec())
        .collect();
    let log_values = engine.get_raw_many(Cf::RaftLog, &log_keys)?;
    let mut live = Vec::new();
    for ((rec, key), raw) in records.iter().zip(log_keys).zip(log_values) {
        if let Some(raw) = raw
            && vlog::split_log_value(&raw).is_some_and(|(p, _)| p == rec.ptr)
        {
            if applied_of[&rec.origin.group].is_none_or(|a| a < rec.origin.index) {
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
    }
    // Every whole chunk each record covers, with where it would point if still live.
    let mut wanted = Vec::new();
    for rec in &records {
        let Origin {
            group,
            index,
            offset: start,
        } = rec.origin;
        let end = start + u64::from(rec.ptr.len);
        for chunk in start.div_ceil(CHUNK)..end / CHUNK {
            let want = rec.ptr.slice((chunk * CHUNK - start) as u32, CHUNK as u32);
            let origin = Origin {
                group,
                index,
                offset: chunk * CHUNK,
            };
            wanted.push((keys::group_key(group, chunk).to_vec(), want, origin));
        }
    }
    let chunk_keys: Vec<Vec<u8>> = wanted.iter().map(|(k, ..)| k.clone()).collect();
    let values = engine.get_raw_many(Cf::Data, &chunk_keys)?;
    for ((key, want, origin), raw) in wanted.into_iter().zip(values) {
        let Some(raw) = raw.filter(|r| r.len() == CHUNK_PTR_LEN) else {
            continue;
        };
        if let Some((ptr, crc)) = vlog::split_chunk_value(&raw)
            && ptr == want
        {
            live.push(Live {
                cf: Cf::Data,
                key,
                raw,
                ptr,
                crc: Some(crc),
                origin,
            });
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
    let mut moved = Vec::with_capacity(live.len());
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
        moved.extend(vl.append_all(&records)?);
    }
    // Copies durable before anything points at them: a flush (a full memtable, any
    // group's snapshot) may persist the new pointers at any moment after the swap.
    vl.sync()?;
    crash_point("vlog-gc-synced");
    let pairs: Vec<(&Live, ValuePtr)> = live.iter().zip(moved).collect();
    for batch in pairs.chunks(SWAP_BATCH) {
        let mut swaps: HashMap<Cf, Vec<Swap>> = HashMap::new();
        for (l, ptr) in batch {
            let new_raw = match l.crc {
                Some(crc) => vlog::chunk_value(*ptr, crc),
                None => {
                    let rest = vlog::split_log_value(&l.raw).map_or(&[][..], |(_, r)| r);
                    vlog::log_value(*ptr, rest)
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
        o.write(e, 9, first * CHUNK, &data.into(), Some(ptr))
            .unwrap();
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

    #[test]
    fn a_live_segment_waits_for_what_could_kill_it_and_cold_ones_back_off() {
        const MIB: u64 = 1 << 20;
        let size = vlog::SEGMENT_BYTES;
        let left = |live, wait| Left {
            at: 0,
            when: std::time::Instant::now(),
            live,
            wait,
        };
        // 60 MiB live of 64: at least 44 MiB must be overwritten to reach a quarter.
        assert_eq!(wait_for(size, 60 * MIB, None), 44 * MIB);
        // Barely above a quarter: the least wait.
        assert_eq!(wait_for(size, 17 * MIB, None), WAIT_MIN);
        // Found as live as before: twice the last wait, up to the most.
        assert_eq!(
            wait_for(size, 60 * MIB, Some(&left(60 * MIB, 44 * MIB))),
            88 * MIB
        );
        assert_eq!(
            wait_for(size, 60 * MIB, Some(&left(60 * MIB, WAIT_MAX))),
            WAIT_MAX
        );
        // Overwrites did kill some of it: back to what is still over a quarter.
        assert_eq!(
            wait_for(size, 40 * MIB, Some(&left(60 * MIB, 88 * MIB))),
            24 * MIB
        );
        // Due by bytes appended since, or by time.
        let l = left(60 * MIB, 44 * MIB);
        assert!(!l.due(44 * MIB - 1));
        assert!(l.due(44 * MIB));
    }
}
