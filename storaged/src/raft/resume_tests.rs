//! Resumable transfers end to end in one process: a receive cut part-way, the sender's
//! skipping of what the receiver holds, and the spool that results.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::encode;
use super::resume::{Partial, RANGE_CHUNKS, Resumed, discard, range_of};
use super::snapshot::{PAGE_BYTES, Page, SnapshotData, SpoolReader};
use crate::engine::{Batch, Cf, Engine, MemEngine, keys};

const GROUP: u64 = 6;

/// Chunk `idx` of version `v`: 4 KiB of a byte from both.
fn chunk(idx: u64, v: u8) -> Bytes {
    Bytes::from(vec![(idx as u8) ^ v; 4096])
}

/// A volume snapshot holding `chunks`, paged from an engine as the leader does.
fn snapshot_of(chunks: &BTreeMap<u64, Bytes>) -> SnapshotData {
    let e = Arc::new(MemEngine::new());
    let mut b = Batch::default();
    for (idx, data) in chunks {
        b.put(
            Cf::Data,
            keys::group_key(GROUP, *idx).to_vec(),
            data.to_vec(),
        );
    }
    e.write(b, false).unwrap();
    let pages = e
        .scan_pages(
            Cf::Data,
            keys::group_start(GROUP).to_vec(),
            keys::group_end(GROUP).to_vec(),
            PAGE_BYTES,
        )
        .unwrap();
    SnapshotData::Chunks {
        fence: None,
        writers: None,
        pages,
        estimate: 0,
    }
}

/// Every chunk of a spool file.
fn chunks_in(path: &Path) -> BTreeMap<u64, Bytes> {
    let mut r = SpoolReader::open(path).unwrap();
    let mut out = BTreeMap::new();
    while let Some(p) = r.next_page().unwrap() {
        if let Page::Chunks(cs) = p {
            out.extend(cs);
        }
    }
    out
}

/// Sends `data` (skipping `held`) into a new receive; stops after `cut` wire bytes of
/// chunk pages if given (the stream broke). Returns the wire bytes of chunk data sent.
async fn transfer(
    dir: &Path,
    data: SnapshotData,
    held: &[super::resume::HeldRange],
    cut: Option<usize>,
) -> (u64, Option<BTreeMap<u64, Bytes>>) {
    let partial = Partial::take(dir, GROUP).await.unwrap().unwrap();
    let mut rx = partial.receive().await.unwrap();
    let mut tx = Resumed::new(data, held);
    let mut wire = 0u64;
    while let Some(page) = tx.next_page().await.unwrap() {
        if let Page::Chunks(cs) = &page {
            wire += cs.iter().map(|c| c.1.len() as u64).sum::<u64>();
        }
        rx.page(&encode(&page).unwrap()).await.unwrap();
        if cut.is_some_and(|c| wire >= c as u64) {
            return (wire, None);
        }
    }
    let spool = rx.finish().await.unwrap();
    (wire, Some(chunks_in(spool.path())))
}

/// What the receiver in `dir` holds, as it would answer a sender.
async fn held_in(dir: &Path) -> Vec<super::resume::HeldRange> {
    let p = Partial::take(dir, GROUP).await.unwrap().unwrap();
    p.held().unwrap()
}

#[tokio::test]
async fn a_resumed_transfer_sends_only_what_the_receiver_lacks_and_installs_the_new_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    // 20 ranges of chunks, some sparse.
    let mut v1 = BTreeMap::new();
    for idx in 0..20 * RANGE_CHUNKS {
        if idx % 7 != 3 {
            v1.insert(idx, chunk(idx, 1));
        }
    }
    let total: u64 = v1.values().map(|d| d.len() as u64).sum();
    // The first transfer breaks after about 8 ranges.
    let (first, done) = transfer(dir.path(), snapshot_of(&v1), &[], Some(8 << 20)).await;
    assert!(done.is_none());
    assert!(first >= 8 << 20 && first < total, "{first} of {total}");

    // Meanwhile the volume changed: a chunk rewritten in range 2, one discarded in range 5,
    // one written past the end.
    let mut v2 = v1.clone();
    v2.insert(2 * RANGE_CHUNKS + 9, chunk(0, 9));
    v2.remove(&(5 * RANGE_CHUNKS + 1));
    v2.insert(40 * RANGE_CHUNKS, chunk(0, 7));

    let held = held_in(dir.path()).await;
    let held_bytes: u64 = held.iter().map(|h| h.bytes).sum();
    assert!(held_bytes >= first - PAGE_BYTES as u64, "{held_bytes}");
    assert!(held.windows(2).all(|w| w[0].range < w[1].range));

    let (second, installed) = transfer(dir.path(), snapshot_of(&v2), &held, None).await;
    let installed = installed.expect("the resumed transfer completes");
    assert_eq!(installed, v2, "the spool holds exactly the new snapshot");
    // Sent again: the two changed ranges, the range cut part-way, and what was never sent.
    let v2_total: u64 = v2.values().map(|d| d.len() as u64).sum();
    let range_bytes = RANGE_CHUNKS * 4096;
    assert!(
        first + second <= v2_total + 3 * range_bytes,
        "sent {first} then {second} for {v2_total}"
    );
    assert!(second >= v2_total - held_bytes, "{second}");
    // Nothing is held any more: a next transfer starts from nothing.
    assert!(held_in(dir.path()).await.is_empty());
}

#[tokio::test]
async fn a_torn_receive_keeps_its_whole_pages_and_merges_with_what_was_held() {
    let dir = tempfile::tempdir().unwrap();
    let v1: BTreeMap<u64, Bytes> = (0..6 * RANGE_CHUNKS).map(|i| (i, chunk(i, 1))).collect();
    // First transfer: cut after 2 MiB.
    transfer(dir.path(), snapshot_of(&v1), &[], Some(2 << 20)).await;
    let held = held_in(dir.path()).await;
    assert!(held.len() >= 2, "{held:?}");
    // Second: resumes, gets a page further, and the process dies mid-page (a torn tail).
    transfer(dir.path(), snapshot_of(&v1), &held, Some(2 << 20)).await;
    let recv = dir.path().join(format!("r{GROUP}-recv.snap"));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&recv)
        .unwrap();
    std::io::Write::write_all(&mut f, &[0x40, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);
    let p = Partial::take(dir.path(), GROUP).await.unwrap().unwrap();
    let held2 = p.held().unwrap();
    assert!(!recv.exists(), "merged into the held spool");
    assert!(
        held2.len() > held.len(),
        "{} then {}",
        held.len(),
        held2.len()
    );
    // Whatever is held is the right data, in ranges from 0 on.
    let all = chunks_in(&dir.path().join(format!("r{GROUP}-held.snap")));
    assert!(all.iter().all(|(i, d)| v1[i] == *d));
    assert_eq!(range_of(*all.keys().next().unwrap()), 0);
    drop(p);
    discard(dir.path(), GROUP);
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[tokio::test]
async fn a_held_range_that_differs_is_refused_and_one_transfer_runs_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let v1: BTreeMap<u64, Bytes> = (0..3 * RANGE_CHUNKS).map(|i| (i, chunk(i, 1))).collect();
    transfer(dir.path(), snapshot_of(&v1), &[], Some(1 << 20)).await;
    let p = Partial::take(dir.path(), GROUP).await.unwrap().unwrap();
    assert!(
        Partial::take(dir.path(), GROUP).await.unwrap().is_none(),
        "a second transfer of the group waits"
    );
    let held = p.held().unwrap();
    let mut rx = p.receive().await.unwrap();
    let wrong = Page::Held(vec![(held[0].range, [7; 32])]);
    let e = rx.page(&encode(&wrong).unwrap()).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("differs"), "{e}");
}
