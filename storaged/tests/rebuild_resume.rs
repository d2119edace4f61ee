//! Resumable rebuilds with real storaged processes: a rebuild interrupted by a restart of
//! its target or of its source carries on without copying again what had arrived.

mod repair_support;

use std::time::{Duration, Instant};

use cairn_proto::cairn::v1 as pb;
use cairn_storaged::testkit::ProcCluster;
use repair_support::{READY, bin, create, fill, member_not, verify, wait_whole};

const VOL_SIZE: u64 = 32 << 20;
/// Written to the volume: six snapshot pages, about 6 s of rebuild at `RATE`.
const WRITTEN: u64 = 24 << 20;
const RATE: &str = "4MiB";
/// A snapshot page (`raft::snapshot::PAGE_BYTES`): the slack allowed on the bytes copied.
const PAGE: u64 = 4 << 20;
/// From the kill until the volume is whole again (5 s down timeout, a rebuild of
/// `WRITTEN` at `RATE`, a restart).
const HEAL: Duration = Duration::from_secs(90);
const RECEIVED: &str = "cairn_storaged_rebuild_bytes_total";

/// One cluster at a time: the machine's cores are shared.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Clone, Copy, Debug)]
enum Restarted {
    /// The node being rebuilt.
    Target,
    /// The group's leader, which streams the snapshot.
    Source,
}

/// Kills a member of a filled volume, restarts the rebuild's target or source once about a
/// third of the snapshot has arrived, and checks that the bytes the target received in all
/// are the volume's written bytes within one page, and that its copy reads back right.
async fn rebuild_resumes_after_a_restart_of(restarted: Restarted, name: &str, seed: u64) {
    let _serial = SERIAL.lock().await;
    let mut c = ProcCluster::start(
        bin(),
        4,
        &[
            // Longer than a restart, so the restarted target is not replaced in turn.
            "--replica-down-timeout",
            "5s",
            "--snapshot-logs",
            "8",
            "--rebuild-rate",
            RATE,
        ],
    )
    .unwrap();
    c.wait_ready(READY).await.unwrap();
    let client = c.client();
    let v = create(&client, name, VOL_SIZE).await;
    let crcs = fill(&client, name, seed, WRITTEN).await;
    let meta = client.cluster_status().await.unwrap().meta_leader_id;
    let victim = member_not(&v, meta);
    // Four nodes, three members: the one node without a replica is the rebuild's target.
    let target = (1..=4u64)
        .find(|id| v.members.iter().all(|m| m.node_id != *id))
        .unwrap();
    c.kill9(victim);

    // Wait until the target has received about a third of the written bytes.
    let deadline = Instant::now() + HEAL;
    let before = loop {
        let got = c.metric_sum(target, RECEIVED).await.unwrap_or(0.0);
        if got >= (WRITTEN * 3 / 10) as f64 {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: the rebuild to node {target} never got a third of the way ({got} bytes)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        before <= (WRITTEN * 7 / 10) as f64,
        "{name}: {before} bytes received before the restart: not midway"
    );
    let source = client.get_volume(name).await.unwrap().leader_node_id;
    let (restart, kept) = match restarted {
        Restarted::Target => (target, before),
        // The target keeps running and counting: its counter covers both transfers.
        Restarted::Source => (source, 0.0),
    };
    assert_ne!(restart, victim);
    c.restart(restart).unwrap();
    eprintln!("{name}: node {restart} ({restarted:?}) restarted after {before} bytes");

    let (took, _) = wait_whole(&client, &[name], victim, HEAL).await;
    let received = kept + c.metric_sum(target, RECEIVED).await.unwrap_or(0.0);
    eprintln!("{name}: whole {took:?} after the restart; {received} bytes received in all");
    // Every chunk arrived once: at least the written bytes (less a page the counter had
    // not yet seen when the target was killed), and not a second time.
    assert!(
        received >= (WRITTEN - PAGE) as f64,
        "{name}: only {received} bytes received"
    );
    assert!(
        received <= (WRITTEN + PAGE) as f64,
        "{name}: {received} bytes received for {WRITTEN} written (a restart from 0 % sends {})",
        before + WRITTEN as f64
    );
    assert!(
        c.nodes
            .iter()
            .any(|n| c.log_of(n.id).contains("resuming a snapshot transfer")),
        "no sender resumed a transfer"
    );
    // Nothing of the transfer is left in the target's spool directory.
    let spool = c.nodes[c.index_of(target)].data_dir.join("snapshots");
    let left: Vec<_> = std::fs::read_dir(&spool)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", spool.display());

    // The data is right on the target: attach the volume there so it leads and serves
    // the reads from its own state machine (decision 014).
    let node_name = client
        .get_volume(name)
        .await
        .unwrap()
        .members
        .iter()
        .find(|m| m.node_id == target)
        .expect("the target is a member")
        .node_name
        .clone();
    client
        .publish_volume(pb::PublishVolumeRequest {
            name: name.to_string(),
            node_name,
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get_volume(name).await.map(|v| v.leader_node_id).ok() != Some(target) {
        assert!(Instant::now() < deadline, "{name}: node {target} never led");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    verify(&client, name, &crcs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_resumes_after_its_target_restarts() {
    rebuild_resumes_after_a_restart_of(Restarted::Target, "resume-t", 41).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_resumes_after_its_source_restarts() {
    rebuild_resumes_after_a_restart_of(Restarted::Source, "resume-s", 43).await;
}
