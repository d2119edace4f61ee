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
/// A segment with more than this share of its bytes live is left as it is (copying it
/// would write more than it frees); so the log holds at most about twice the live data.
pub const LIVE_SHARE_MAX: f64 = 0.5;
/// Chunks copied per compare-and-swap batch (one hold of the data write lock).
const SWAP_BATCH: usize = 256;
/// How often a node looks for segments to collect.
pub const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs while the engine lives: a pass every `EVERY`, on a blocking thread, collecting
/// past `floor` bytes (`storaged --value-log-floor`, default `FLOOR_BYTES`).
pub async fn run(engine: std::sync::Weak<dyn Engine>, floor: u64) {
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
            c.pass(engine.as_ref(), floor)
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

/// A live chunk of a segment: its key, its raw `data` value, where it lies and its CRC.
struct Live {
    key: Vec<u8>,
    raw: Vec<u8>,
    ptr: ValuePtr,
    crc: u32,
    origin: Origin,
}

enum Survey {
    /// A record is still the data of an entry in the Raft log (not yet purged).
    Pinned,
    Live(Vec<Live>),
}

/// Remembers segments found too live, so they are surveyed again only after more
/// has been written (their share can only fall as chunks are overwritten).
#[derive(Default)]
pub struct Collector {
    too_live: HashMap<u32, u64>,
}

impl Collector {
    /// Collects the oldest sealed segments worth it while the log holds more than `floor`
    /// bytes. Blocking: reads segments, flushes the engine.
    pub fn pass(&mut self, engine: &dyn Engine, floor: u64) -> Result<Pass> {
        let Some(vl) = engine.value_log() else {
            return Ok(Pass::default());
        };
        vl.close_retired();
        let segments = vl.segments();
        let mut total: u64 = segments.iter().map(|(_, n)| n).sum();
        let active = vl.active();
        let appended = vl.appended_bytes();
        self.too_live
            .retain(|seg, _| segments.iter().any(|(s, _)| s == seg));
        let mut pass = Pass::default();
        for (seg, size) in segments {
            if total <= floor || seg == active {
                break;
            }
            if self
                .too_live
                .get(&seg)
                .is_some_and(|at| appended < at + vlog::SEGMENT_BYTES)
            {
                continue;
            }
            let live = match survey(engine, vl, seg)? {
                Survey::Pinned => continue,
                Survey::Live(live) => live,
            };
            let live_bytes = live.len() as u64 * CHUNK;
            if size > 0 && live_bytes as f64 > size as f64 * LIVE_SHARE_MAX {
                self.too_live.insert(seg, appended);
                continue;
            }
            pass.copied_bytes += copy_forward(engine, vl, live)?;
            crash_point("vlog-gc-swapped");
            // The pointers to the copies durable (the copies were synced before the
            // swap) before the old bytes go.
            engine.persist()?;
            crash_point("vlog-gc-persisted");
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
            total -= size;
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

/// The live chunks of `seg`, or `Pinned` if the Raft log still needs one of its records.
fn survey(engine: &dyn Engine, vl: &ValueLog, seg: u32) -> Result<Survey> {
    let mut live = Vec::new();
    for rec in vl.records(seg)? {
        let Origin { group, index, .. } = rec.origin;
        let in_log = engine
            .get_raw(Cf::RaftLog, &keys::group_key(group, index))?
            .as_deref()
            .and_then(vlog::split_log_value)
            .is_some_and(|(p, _)| p == rec.ptr);
        if in_log {
            return Ok(Survey::Pinned);
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
                    key,
                    raw,
                    ptr,
                    crc,
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

/// Appends each live chunk anew and points its key there, unless an apply replaced it
/// meanwhile. Returns the bytes copied.
fn copy_forward(engine: &dyn Engine, vl: &ValueLog, live: Vec<Live>) -> Result<u64> {
    let mut copied = 0;
    for batch in live.chunks(SWAP_BATCH) {
        let mut swaps = Vec::with_capacity(batch.len());
        for l in batch {
            let bytes = vl.read_chunk(l.ptr, l.crc)?;
            let ptr = vl.append(l.origin, &bytes)?;
            copied += bytes.len() as u64;
            swaps.push((l.key.clone(), l.raw.clone(), vlog::chunk_value(ptr, l.crc)));
        }
        // Copies durable before anything points at them: a flush (a full memtable, any
        // group's snapshot) may persist the new pointers at any moment after the swap.
        vl.sync()?;
        crash_point("vlog-gc-synced");
        engine.swap_data(swaps)?;
    }
    Ok(copied)
}

#[cfg(all(test, feature = "rocks"))]
mod tests {
    use super::*;
    use crate::chunks::{Overlay, read};
    use crate::engine::{Batch, RocksEngine};

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
        let pass = c.pass(&e, 0).unwrap();
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
        assert_eq!(c.pass(&e, u64::MAX).unwrap(), Pass::default());
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
            let pass = Collector::default().pass(&e, 0).unwrap();
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
    fn a_segment_the_raft_log_still_needs_is_left() {
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
        Collector::default().pass(&e, 0).unwrap();
        assert!(vl.segments().iter().any(|(s, _)| *s == ptr.seg));
        assert_eq!(vl.read(ptr).unwrap(), vec![1u8; 4096]);
    }
}
