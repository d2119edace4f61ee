//! Exactly-once writes through a volume group's state machine: the resend interleaving the
//! chaos runner found (seed 11), and the table across a restart and a snapshot install.

use std::io;
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};

use super::state_machine::{GroupStateMachine, Shared};
use super::{Entry, Request, TypeConfig, WriteId};
use crate::engine::{Cf, Engine, MemEngine, keys};

const GROUP: u64 = 3;

fn open(engine: &Arc<dyn Engine>, spool: &std::path::Path) -> GroupStateMachine {
    GroupStateMachine::open(engine.clone(), GROUP, Shared::new())
        .unwrap()
        .with_spool_dir(spool.to_path_buf())
}

/// Applies `reqs` as normal entries at log indices `first`, `first + 1`, ...
pub(super) async fn apply_all(sm: &mut GroupStateMachine, first: u64, reqs: Vec<Request>) {
    let entries: Vec<io::Result<EntryResponder<TypeConfig>>> = reqs
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let id = openraft::testing::log_id::<TypeConfig>(1, 1, first + i as u64);
            Ok((Entry::new_normal(id, r), None))
        })
        .collect();
    sm.apply(futures::stream::iter(entries)).await.unwrap();
}

/// A 4 KiB write of `value` to block 0 by `client`'s write `seq`.
fn write(client: u64, seq: u64, value: u8) -> Request {
    let id = WriteId::from_wire(client, seq, seq);
    Request::write(0, bytes::Bytes::from(vec![value; 4096]), 0, id)
}

fn block0(engine: &Arc<dyn Engine>) -> Option<u8> {
    engine
        .get(Cf::Data, &keys::group_key(GROUP, 0))
        .unwrap()
        .map(|b| b[0])
}

/// Client 1's write (560 in the report) is applied; clients 2 and 3 write the same block;
/// client 1's resend of the same write must not bring its value back, on this replica,
/// after a restart, or on a replica that installed a snapshot (a follower turned leader).
#[tokio::test]
async fn a_resend_after_other_writers_is_not_applied_again_on_any_replica() {
    let dir = tempfile::tempdir().unwrap();
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut sm = open(&engine, &dir.path().join("a"));
    apply_all(&mut sm, 1, vec![write(1, 5, 0x60), write(2, 1, 0x67)]).await;
    apply_all(&mut sm, 3, vec![write(3, 1, 0x70)]).await;
    assert_eq!(block0(&engine), Some(0x70));
    apply_all(&mut sm, 4, vec![write(1, 5, 0x60)]).await;
    assert_eq!(block0(&engine), Some(0x70), "the resend is not applied");
    // An untagged write (an older caller) still applies every time.
    let legacy = |v: u8| Request::write(0, bytes::Bytes::from(vec![v; 4096]), 0, None);
    apply_all(
        &mut sm,
        5,
        vec![legacy(0x11), write(3, 2, 0x70), legacy(0x11)],
    )
    .await;
    assert_eq!(block0(&engine), Some(0x11));
    apply_all(&mut sm, 8, vec![write(3, 3, 0x72)]).await;

    // The table is in the applied state: a restarted replica dedups alike.
    drop(sm);
    let mut sm = open(&engine, &dir.path().join("a"));
    apply_all(&mut sm, 9, vec![write(1, 5, 0x60), write(2, 1, 0x67)]).await;
    assert_eq!(block0(&engine), Some(0x72), "resends after a restart");

    // A replica that installs the group's snapshot gets the table with the data.
    let snap = sm.get_current_snapshot().await.unwrap().unwrap();
    let other: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut sm2 = open(&other, &dir.path().join("b"));
    // It held an older table and data: the install replaces both.
    apply_all(&mut sm2, 1, vec![write(4, 1, 0x01)]).await;
    sm2.install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert_eq!(block0(&other), Some(0x72));
    apply_all(&mut sm2, 11, vec![write(1, 5, 0x60), write(3, 3, 0x72)]).await;
    assert_eq!(block0(&other), Some(0x72), "resends on the new leader");
    apply_all(&mut sm2, 13, vec![write(4, 1, 0x01)]).await;
    assert_eq!(
        block0(&other),
        Some(0x01),
        "writer 4 was not in the snapshot"
    );
}

/// A group from before deduplication (no table stored) opens with an empty one and
/// deduplicates from its first tagged write on.
#[tokio::test]
async fn a_group_without_a_stored_table_opens_empty() {
    let dir = tempfile::tempdir().unwrap();
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let mut sm = open(&engine, dir.path());
    let old = Request::FencedWrite {
        offset: 0,
        data: bytes::Bytes::from(vec![0x33; 4096]),
        generation: 0,
    };
    apply_all(&mut sm, 1, vec![old]).await;
    let stored = engine
        .scan(
            Cf::Meta,
            &keys::named(GROUP, "dedup/"),
            &keys::group_end(GROUP),
            usize::MAX,
        )
        .unwrap();
    assert!(stored.is_empty(), "untagged writes store no table");
    drop(sm);
    let mut sm = open(&engine, dir.path());
    apply_all(&mut sm, 2, vec![write(7, 1, 0x44), write(8, 1, 0x55)]).await;
    apply_all(&mut sm, 4, vec![write(7, 1, 0x44)]).await;
    assert_eq!(block0(&engine), Some(0x55));
}
