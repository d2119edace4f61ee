//! A node keeps going past one bad group, with real storaged processes: corrupt volume
//! groups are reported (API, cairnctl, metric, log) while every other group opens and
//! serves; a corrupt meta group stops storaged with a clear message and exit code 3.

mod repair_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_proto::cairn::v1 as pb;
use cairn_storaged::disk_faults;
use cairn_storaged::testkit::ProcCluster;
use repair_support::{
    READY, bin, cairnctl, create, create_on, fill, member, spool_files, verify, wait_log,
    wait_volume,
};

const VOL_SIZE: u64 = 16 << 20;
const WRITTEN: u64 = 2 << 20;

/// One cluster at a time: the machine's cores are shared.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Log lines of node `id` reporting a failed open of `group`.
fn failed_opens(c: &ProcCluster, id: u64, group: u64) -> usize {
    c.log_of(id)
        .lines()
        .filter(|l| {
            l.contains("volume group failed to open") && l.contains(&format!("group={group} "))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_bad_group_is_reported_and_every_other_group_serves() {
    let _serial = SERIAL.lock().await;
    let mut c = ProcCluster::start(bin(), 3, &["--replica-down-timeout", "10m"]).unwrap();
    c.wait_ready(READY).await.unwrap();
    let client = c.client();
    // On node 1 only: `good-1` must be served by node 1 itself after the restart.
    let good1 = create_on(&client, "good-1", "node-1", VOL_SIZE).await;
    let bad1 = create_on(&client, "bad-1", "node-1", VOL_SIZE).await;
    let good3 = create(&client, "good-3", VOL_SIZE).await;
    let bad3 = create(&client, "bad-3", VOL_SIZE).await;
    for v in [&good1, &bad1, &good3, &bad3] {
        assert!(v.members.iter().any(|m| m.node_id == 1), "{v:?}");
    }
    let mut crcs = BTreeMap::new();
    for (i, name) in ["good-1", "bad-1", "good-3", "bad-3"].iter().enumerate() {
        crcs.insert(*name, fill(&client, name, 40 + i as u64, WRITTEN).await);
    }

    c.kill9(1);
    let data_dir = c.nodes[c.index_of(1)].data_dir.clone();
    for g in [bad1.id, bad3.id] {
        disk_faults::corrupt_group(&data_dir, g).expect("corrupt a group offline");
    }
    c.restart(1).unwrap();
    c.wait_ready(READY).await.unwrap();

    // Node 1's good groups open and serve: `good-1` has no other copy.
    verify(&client, "good-1", &crcs["good-1"]).await;
    client
        .write("good-1", WRITTEN, bytes::Bytes::from(vec![7u8; 4096]))
        .await
        .expect("a write to a healthy group on the node with a bad one");
    verify(&client, "good-3", &crcs["good-3"]).await;
    wait_volume(&client, "good-3", READY, |v| {
        v.health() == pb::VolumeHealth::Healthy
    })
    .await;

    // The 1-replica bad volume: unavailable, with the reason.
    let v = wait_volume(&client, "bad-1", READY, |v| {
        v.health() == pb::VolumeHealth::Unavailable
            && member(v, 1).state() == pb::ReplicaState::Failed
    })
    .await;
    assert!(
        v.health_reason.contains("replica on node-1 failed to open")
            && v.health_reason.contains("snapshot install"),
        "{v:?}"
    );
    // The reason names the bad file.
    assert!(member(&v, 1).reason.contains("corrupt.snap"), "{v:?}");
    // The 3-replica bad volume: degraded, node 1's replica failed; the others serve it.
    let v = wait_volume(&client, "bad-3", READY, |v| {
        v.health() == pb::VolumeHealth::Degraded && member(v, 1).state() == pb::ReplicaState::Failed
    })
    .await;
    assert!(v.health_reason.contains("node-1"), "{v:?}");
    verify(&client, "bad-3", &crcs["bad-3"]).await;

    // The metric, the log, cairnctl.
    assert_eq!(
        c.metric_sum(1, "cairn_storaged_group_open_failed").await,
        Some(2.0)
    );
    assert!(failed_opens(&c, 1, bad1.id) >= 1, "{}", c.log_of(1));
    let addr = c.nodes[0].addr.clone();
    let get = cairnctl(&c, &addr, &["volume", "get", "bad-1"]);
    let text = String::from_utf8_lossy(&get.stdout);
    assert!(get.status.success(), "{get:?}");
    assert!(
        text.contains("health: unavailable") && text.contains("failed to open"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("  replica node 1 (node-1): failed")
                && l.contains("corrupt.snap")),
        "the replica line gives the reason: {text}"
    );
    let ls = cairnctl(&c, &addr, &["volume", "ls"]);
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("bad-1 ") && l.contains("unavailable")),
        "{text}"
    );

    // While the groups stay bad: retried with backoff, and the node stays idle.
    let attempts = failed_opens(&c, 1, bad1.id);
    let cpu0 = c.cpu_time(1).expect("node 1's CPU time");
    let others0 = [c.cpu_time(2).unwrap(), c.cpu_time(3).unwrap()];
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu = c.cpu_time(1).expect("node 1's CPU time") - cpu0;
    eprintln!(
        "nodes 2, 3 meanwhile: {:?} {:?}",
        c.cpu_time(2).unwrap() - others0[0],
        c.cpu_time(3).unwrap() - others0[1]
    );
    let share = cpu.as_secs_f64() / t0.elapsed().as_secs_f64();
    eprintln!(
        "node 1 with two bad groups: {cpu:?} of CPU in {:?} ({:.2} % of a core)",
        t0.elapsed(),
        share * 100.0
    );
    assert!(share < 0.05, "node 1 used {:.1} % of a core", share * 100.0);
    let retried = failed_opens(&c, 1, bad1.id);
    assert!(
        retried > attempts,
        "no retry in 10 s ({attempts} attempts before)"
    );
    assert!(
        retried <= attempts + 4,
        "retried {retried} times: no backoff"
    );

    // Deleting a bad volume clears its report and removes what was left on disk.
    client.delete_volume("bad-1").await.unwrap();
    let deadline = Instant::now() + READY;
    while c.metric_sum(1, "cairn_storaged_group_open_failed").await != Some(1.0) {
        assert!(Instant::now() < deadline, "bad-1 still reported as failed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let removed = format!(
        "volume group removed and its data deleted group={}",
        bad1.id
    );
    wait_log(&c, 1, "bad-1 removed", READY, |l| l.ends_with(&removed)).await;
    assert_eq!(
        spool_files(&data_dir, bad1.id),
        0,
        "bad-1's corrupt spool file is removed"
    );
    c.kill9(1);
    let left = disk_faults::group_keys(&data_dir, bad1.id).unwrap();
    assert!(left.values().all(|n| *n == 0), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_meta_group_stops_storaged_with_a_clear_message() {
    let _serial = SERIAL.lock().await;
    let mut c = ProcCluster::start(bin(), 1, &[]).unwrap();
    c.wait_ready(READY).await.unwrap();
    c.kill9(1);
    let data_dir = c.nodes[0].data_dir.clone();
    disk_faults::corrupt_group(&data_dir, cairn_storaged::raft::META_GROUP).unwrap();
    c.restart(1).unwrap();
    let deadline = Instant::now() + READY;
    let status = loop {
        if let Some(s) = c.exit_status(1) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "storaged still runs with a bad meta group"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(3), "{status:?}\n{}", c.log_of(1));
    let log = c.log_of(1);
    assert!(
        log.contains(
            "storaged: the meta group (this node's catalogue and membership) cannot be opened"
        ),
        "{log}"
    );
    assert!(log.contains("corrupt.snap"), "the bad file is named: {log}");
}
