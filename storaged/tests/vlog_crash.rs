//! Crash points of value log collection (`engine/vlog_gc.rs`, `FAILPOINTS`) with a real
//! storaged process: aborted at each step, it loses no acknowledged block and keeps collecting.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use cairn_storaged::testkit::ProcCluster;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_storaged"))
}

/// The one node (and the volume's one replica).
const NODE: u64 = 1;
const VOL: &str = "gc-crash";
const BLOCK: u64 = 4096;
const VOL_BYTES: u64 = 16 << 20;
/// Overwrites cycle over `[0, ZONE)` in aligned `WRITE`s; `[ZONE, VOL_BYTES)` is written
/// once before anything is collected, so its chunks stay live and are copied forward.
const ZONE: u64 = 14 << 20;
const WRITE: u64 = 1 << 20;
/// The first written-once write (the rest are single blocks, every other block).
const ONCE_FIRST: u64 = 64 << 10;
/// Passes over the zone before the crash point is armed: the first segment then holds
/// about 1 MiB that stays live and 28 MiB that the armed run overwrites.
const PASSES_BEFORE: u64 = 2;
/// Most written while armed; then the test only waits for the collector (every 5 s).
const ARMED_CAP: u64 = 400 << 20;
/// One overwrite per this while armed (at most 25 MiB/s): writes go on until the crash
/// (some 5 to 10 s after arming), one in flight when it comes, without filling the disk.
const ARMED_PACE: Duration = Duration::from_millis(40);
/// Most written after the restart while waiting for the collection to resume: enough for
/// a snapshot (every 32 MiB) that purges every entry from before the restart (16 kept).
const AFTER_CAP: u64 = 64 << 20;
/// From arming until the crash point fires; from the restart until collection resumed.
const BOUND: Duration = Duration::from_secs(90);
const READY: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// Block `block` as written by the write with sequence number `seq` (0: never written).
/// It starts with both numbers, so a wrong block read back says what it is.
fn block_bytes(seq: u32, block: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(BLOCK as usize + 8);
    if seq == 0 {
        b.resize(BLOCK as usize, 0);
        return b;
    }
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&block.to_le_bytes());
    let mut x = ((u64::from(seq) << 32) | block) ^ 0x9e37_79b9_7f4a_7c15;
    while b.len() < BLOCK as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.extend_from_slice(&x.to_le_bytes());
    }
    b.truncate(BLOCK as usize);
    b
}

/// What a block read back holds, for failure messages.
fn describe(got: &[u8]) -> String {
    if got.iter().all(|b| *b == 0) {
        return "zeros".into();
    }
    let seq = u32::from_le_bytes(got[..4].try_into().expect("4 bytes"));
    let block = u64::from_le_bytes(got[4..12].try_into().expect("8 bytes"));
    if got == block_bytes(seq, block) {
        format!("write {seq}'s block {block}")
    } else {
        format!("unknown bytes starting {:02x?}", &got[..16])
    }
}

/// The last acknowledged content of every 4 KiB block of the volume.
struct Model {
    /// The write that last set each block, acknowledged (0: never written, zeros).
    acked: Vec<u32>,
    /// Later writes of each block whose outcome is unknown (they failed as the node died):
    /// the block may hold any of them instead.
    in_doubt: Vec<Vec<u32>>,
    last_seq: u32,
}

impl Model {
    fn new() -> Self {
        let blocks = (VOL_BYTES / BLOCK) as usize;
        Model {
            acked: vec![0; blocks],
            in_doubt: vec![Vec::new(); blocks],
            last_seq: 0,
        }
    }

    fn blocks(offset: u64, len: u64) -> std::ops::Range<usize> {
        (offset / BLOCK) as usize..((offset + len) / BLOCK) as usize
    }

    /// Writes `len` bytes at `offset` with a new sequence number, noting the outcome.
    async fn write(&mut self, client: &VolumeClient, offset: u64, len: u64) -> Result<(), String> {
        self.last_seq += 1;
        let seq = self.last_seq;
        let mut data = Vec::with_capacity(len as usize);
        for b in Self::blocks(offset, len) {
            data.extend_from_slice(&block_bytes(seq, b as u64));
        }
        match client.write(VOL, offset, Bytes::from(data)).await {
            Ok(()) => {
                for b in Self::blocks(offset, len) {
                    self.acked[b] = seq;
                    self.in_doubt[b].clear();
                }
                Ok(())
            }
            Err(e) => {
                for b in Self::blocks(offset, len) {
                    self.in_doubt[b].push(seq);
                }
                Err(format!(
                    "write {seq} at {offset}: {:?}: {}",
                    e.code(),
                    e.message()
                ))
            }
        }
    }

    /// Reads the whole volume back and checks every block against the model: the
    /// acknowledged content, or that of a write in doubt. The model then holds what was
    /// read (nothing stays in doubt). Returns how many blocks were in doubt and how many
    /// of them held a write in doubt.
    async fn verify(&mut self, client: &VolumeClient, stage: &str) -> (usize, usize) {
        let mut wrong = Vec::new();
        let mut n_wrong = 0;
        let mut doubted = 0;
        let mut took = 0;
        for offset in (0..VOL_BYTES).step_by(WRITE as usize) {
            let got = client
                .read(VOL, offset, WRITE as u32)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{stage}: read of {WRITE} bytes at {offset}: {:?}: {}",
                        e.code(),
                        e.message()
                    )
                });
            assert_eq!(got.len() as u64, WRITE, "{stage}: short read at {offset}");
            for (i, b) in Self::blocks(offset, WRITE).enumerate() {
                let got = &got[i * BLOCK as usize..(i + 1) * BLOCK as usize];
                let found = std::iter::once(self.acked[b])
                    .chain(self.in_doubt[b].iter().copied())
                    .find(|seq| got == block_bytes(*seq, b as u64));
                if !self.in_doubt[b].is_empty() {
                    doubted += 1;
                    took += usize::from(found.is_some_and(|seq| seq != self.acked[b]));
                }
                match found {
                    Some(seq) => {
                        self.acked[b] = seq;
                        self.in_doubt[b].clear();
                    }
                    None => {
                        n_wrong += 1;
                        if wrong.len() < 10 {
                            wrong.push(format!(
                                "block {b}: want write {} (or in doubt: {:?}), got {}",
                                self.acked[b],
                                self.in_doubt[b],
                                describe(got)
                            ));
                        }
                    }
                }
            }
        }
        assert!(
            n_wrong == 0,
            "{stage}: {n_wrong} blocks read back wrong, first ones:\n{}",
            wrong.join("\n")
        );
        (doubted, took)
    }
}

/// The value log's segment files of a data dir: number and size.
fn segments(vlog: &Path) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(vlog).expect("read the value log dir") {
        let Ok(e) = e else { continue };
        let Some(seg) = cairn_storaged::engine::vlog::segment_number(&e.file_name()) else {
            continue;
        };
        // A segment deleted meanwhile is simply not listed.
        if let Ok(m) = e.metadata() {
            out.insert(seg, m.len());
        }
    }
    out
}

fn seg_path(vlog: &Path, seg: u32) -> PathBuf {
    vlog.join(format!("{seg:010}.seg"))
}

/// The overwrite number `n` of the cycle over the zone: its offset.
fn zone_offset(n: u64) -> u64 {
    (n % (ZONE / WRITE)) * WRITE
}

/// Writes and crashes at collection step `point`, then checks that a restart reads back
/// every acknowledged block and that the value log is collected again.
async fn crash_at(point: &str) {
    let began = Instant::now();
    let mut c = ProcCluster::start(
        bin(),
        1,
        // Any sealed segment may be collected; snapshots (and log purges) come often.
        &["--value-log-floor", "0", "--snapshot-logs", "64"],
    )
    .unwrap();
    c.wait_ready(READY).await.unwrap();
    let vlog = c.nodes[0].data_dir.join("vlog");
    let client = c.client();
    client
        .create_volume(pb::CreateVolumeRequest {
            name: VOL.into(),
            size_bytes: VOL_BYTES,
            replicas: 1,
            ..Default::default()
        })
        .await
        .expect("create the volume");
    let mut m = Model::new();

    // Unarmed, the first segment is the one appended to and never collected: it gets the
    // written-once blocks (one 64 KiB write, then every other block) and two passes over
    // the zone. Arming restarts the node, which seals it (appends go to a new segment):
    // the armed run's first collection is then of a segment with live chunks to copy.
    m.write(&client, ZONE, ONCE_FIRST).await.unwrap();
    for off in (ZONE + ONCE_FIRST..VOL_BYTES).step_by(2 * BLOCK as usize) {
        m.write(&client, off, BLOCK).await.unwrap();
    }
    for n in 0..PASSES_BEFORE * (ZONE / WRITE) {
        m.write(&client, zone_offset(n), WRITE).await.unwrap();
    }
    let sealed = segments(&vlog);
    let first = *sealed.keys().next().expect("a value log segment");
    assert_eq!(
        sealed.len(),
        1,
        "the unarmed run appends to one segment: {sealed:?}"
    );

    c.restart_with_env(NODE, vec![("FAILPOINTS".into(), format!("{point}=return"))])
        .unwrap();
    let armed = Instant::now();
    c.wait_ready(READY).await.unwrap();
    c.volume_leader(VOL, READY).await.unwrap();
    // A short deadline: a write to the aborted node fails in 2 s rather than 8.
    let writer = c.client().with_deadline(Duration::from_secs(2));
    // Overwrites until the node dies. The first segment's Raft entries are purged after a
    // snapshot some 16 writes in (64 entries or 32 MiB since the last, 16 entries kept),
    // by when the zone has been overwritten: a pass of the collector (every 5 s) then
    // takes it, its written-once chunks copied forward.
    let mut written = 0;
    let mut n = 0;
    while written < ARMED_CAP && c.is_alive(NODE) {
        assert!(
            armed.elapsed() < BOUND,
            "{point}: still writing {BOUND:?} after arming"
        );
        // A rate limit, not a wait for anything.
        tokio::time::sleep_until((armed + ARMED_PACE * n as u32).into()).await;
        match m.write(&writer, zone_offset(n), WRITE).await {
            Ok(()) => written += WRITE,
            // In doubt either way; the loop ends if the node died.
            Err(e) => eprintln!("{point}: {e} (node alive: {})", c.is_alive(NODE)),
        }
        n += 1;
    }
    let status = loop {
        if let Some(s) = c.exit_status(NODE) {
            break s;
        }
        assert!(
            armed.elapsed() < BOUND,
            "{point}: the node did not crash within {BOUND:?} of arming ({} MiB written); \
             segments {:?}",
            written >> 20,
            segments(&vlog)
        );
        tokio::time::sleep(POLL).await;
    };
    let crashed_after = armed.elapsed();
    assert_eq!(
        status.signal(),
        Some(nix::sys::signal::Signal::SIGABRT as i32),
        "{point}: the node ended with {status:?}, not by abort"
    );
    let log = c.log_of(NODE);
    assert!(
        log.lines()
            .any(|l| l.contains("crash point reached") && l.contains(point)),
        "{point}: the node's log has no crash point line for it"
    );
    let at_crash = segments(&vlog);
    // The first collection is the first segment's (the oldest, and the first unpinned):
    // before its removal the crash leaves it on disk, after it not.
    assert_eq!(
        at_crash.contains_key(&first),
        point != "vlog-gc-removed",
        "{point}: segment {first} at the crash, segments {at_crash:?}"
    );

    c.restart_with_env(NODE, Vec::new()).unwrap();
    let restarted = Instant::now();
    c.wait_ready(READY).await.unwrap();
    c.volume_leader(VOL, READY).await.unwrap();
    let client = c.client();
    // A chunk left pointing into a deleted segment reads as DATA_LOSS.
    let (doubted, took) = m
        .verify(&client, &format!("{point}: after the restart"))
        .await;

    // Collection resumes: the segments on disk at the crash go, with overwrites after the
    // restart to purge the Raft entries that still pin the last of them. Before
    // `vlog-gc-removed` they include the segment whose collection the crash cut short
    // (no more live than when it was chosen; copies lost with unflushed pointers are
    // made anew). The others hold overwritten data, and the highest (appended to at the
    // crash) also the copies of the written-once chunks (1 MiB): it is left out when there
    // are others, as it may be small enough for them to keep it over half live, which by
    // design is never collected. Alone, it took every armed write (16 MiB at least, to
    // unpin the first segment). A segment number with data is never reused (appends go
    // past the highest), so its file gone means it was collected; an empty one (a crash
    // just after a roll) is removed at open and its number taken again, so it is left out.
    // The total size is not used: it grows with the writes that unpin segments, and it
    // depends on what is left live where.
    let highest = *at_crash.keys().next_back().expect("segments at the crash");
    let targets: Vec<u32> = at_crash
        .iter()
        .filter(|(s, size)| **size > 0 && (**s != highest || at_crash.len() == 1))
        .map(|(s, _)| *s)
        .collect();
    assert!(
        !targets.is_empty(),
        "{point}: no segment to watch at the crash: {at_crash:?}"
    );
    let mut after = 0;
    let mut k = n;
    while let Some(left) = targets.iter().find(|s| seg_path(&vlog, **s).exists()) {
        assert!(
            restarted.elapsed() < BOUND,
            "{point}: segment {left} still there {BOUND:?} after the restart \
             ({} MiB written since); segments {:?}",
            after >> 20,
            segments(&vlog)
        );
        if after < AFTER_CAP {
            m.write(&client, zone_offset(k), WRITE)
                .await
                .unwrap_or_else(|e| panic!("{point}: after the restart: {e}"));
            after += WRITE;
            k += 1;
        } else {
            tokio::time::sleep(POLL).await;
        }
    }
    let collected_after = restarted.elapsed();
    m.verify(&client, &format!("{point}: after collecting again"))
        .await;
    assert!(c.is_alive(NODE), "{point}: the node died after the restart");
    assert_eq!(
        c.log_of(NODE).matches("crash point reached").count(),
        1,
        "{point}: a crash point fired after FAILPOINTS was cleared"
    );
    let collections: Vec<String> = c
        .log_of(NODE)
        .lines()
        .filter_map(|l| {
            Some(
                l.split_once("value log segment collected")?
                    .1
                    .trim()
                    .to_string(),
            )
        })
        .collect();
    eprintln!("{point}: collections (all runs): {collections:?}");
    eprintln!(
        "{point}: crashed {crashed_after:?} after arming ({} MiB written armed; {doubted} \
         blocks in doubt, {took} of them written), segments at the crash {at_crash:?}; \
         {targets:?} collected {collected_after:?} after the restart ({} MiB written); \
         {:?} in all",
        written >> 20,
        after >> 20,
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_syncing_the_copies_loses_nothing() {
    crash_at("vlog-gc-synced").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_swapping_the_pointers_loses_nothing() {
    crash_at("vlog-gc-swapped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_persisting_the_pointers_loses_nothing() {
    crash_at("vlog-gc-persisted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_removing_the_segment_loses_nothing() {
    crash_at("vlog-gc-removed").await;
}
