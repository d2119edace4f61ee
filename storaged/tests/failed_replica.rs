//! A replica that fails to open is replaced like one on a dead node (decision 051), with real
//! storaged processes: its node stays up and keeps serving its other replicas.

mod repair_support;

use std::time::{Duration, Instant};

use cairn_proto::cairn::v1 as pb;
use cairn_storaged::disk_faults;
use cairn_storaged::testkit::ProcCluster;
use repair_support::{
    READY, bin, create, create_on, fill, member, spool_files, verify, wait_log, wait_volume,
    wait_whole,
};

const VOL_SIZE: u64 = 16 << 20;
const WRITTEN: u64 = 4 << 20;
/// From the restart with a corrupt replica until the volume is whole again: 3 s of failing
/// to open, then a snapshot and the log to the fourth node.
const HEAL: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_fails_to_open_is_replaced_and_its_node_keeps_the_rest() {
    let mut c = ProcCluster::start(
        bin(),
        4,
        &["--replica-down-timeout", "3s", "--snapshot-logs", "8"],
    )
    .unwrap();
    c.wait_ready(READY).await.unwrap();
    let client = c.client();
    let bad = create(&client, "bad", VOL_SIZE).await;
    // The victim leads `bad` (and maybe the meta group too).
    let victim = c.volume_leader("bad", READY).await.unwrap();
    let fourth = (1..=4u64)
        .find(|n| bad.members.iter().all(|m| m.node_id != *n))
        .expect("a node without a replica");
    // The victim's only copy of `own`: only the victim itself can serve it afterwards.
    let own = create_on(&client, "own", &format!("node-{victim}"), VOL_SIZE).await;
    assert_eq!(own.members.len(), 1, "{own:?}");
    let bad_crcs = fill(&client, "bad", 1, WRITTEN).await;
    let own_crcs = fill(&client, "own", 2, WRITTEN).await;

    // `bad` goes quiet on every member before the kill: the victim comes back answering
    // pings but never campaigns, so only its restart, seen in its pings, can wake the other
    // two to elect.
    let label = "volume=\"bad\"";
    let deadline = Instant::now() + READY;
    for m in &bad.members {
        while c
            .metric_where(m.node_id, "cairn_storaged_raft_quiet", label)
            .await
            != Some(1.0)
        {
            assert!(
                Instant::now() < deadline,
                "bad never went quiet on node {}",
                m.node_id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    c.kill9(victim);
    let data_dir = c.nodes[c.index_of(victim)].data_dir.clone();
    let t0 = Instant::now();
    disk_faults::corrupt_group(&data_dir, bad.id).expect("corrupt a group offline");
    c.restart(victim).unwrap();
    eprintln!(
        "node {victim} down for {:?} (kill, corrupt, restart)",
        t0.elapsed()
    );

    // First reported FAILED, the volume degraded (the victim answers: it is not down), once
    // the other two have a leader (the victim may have led the group: until the survivors
    // elect one, the group is rightly unavailable).
    let v = wait_volume(&client, "bad", READY, |v| {
        v.members
            .iter()
            .any(|m| m.node_id == victim && m.state() == pb::ReplicaState::Failed)
            && v.health() == pb::VolumeHealth::Degraded
    })
    .await;
    assert_ne!(v.leader_node_id, victim, "{v:?}");
    assert!(member(&v, victim).reason.contains("corrupt.snap"), "{v:?}");
    assert_eq!(
        c.metric_sum(victim, "cairn_storaged_group_open_failed")
            .await,
        Some(1.0)
    );

    // Then replaced: healthy, the victim gone from the members, the fourth node in.
    let (took, degraded) = wait_whole(&client, &["bad"], victim, HEAL).await;
    eprintln!("replica failed to open on node {victim}: volume whole again after {took:?}");
    assert!(degraded["bad"], "bad was never reported degraded");
    let v = client.get_volume("bad").await.unwrap();
    assert!(
        v.members.iter().any(|m| m.node_id == fourth),
        "node {fourth} took the replica: {v:?}"
    );
    verify(&client, "bad", &bad_crcs).await;

    // The meta leader (the victim may have led it, so whichever did the repair) said why; it
    // replaced the replica as failed, not its node as down.
    let why = format!("replica on node {victim} failed to open: ");
    let said =
        |l: &str| l.contains(&why) && l.contains("corrupt.snap") && l.contains("; replacing it");
    let deadline = Instant::now() + HEAL;
    let repairer = loop {
        if let Some(id) = (1..=4u64).find(|id| c.log_of(*id).lines().any(said)) {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "no node's log showed the failed-open repair"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let started = format!(
        "replica repair started volume=bad group={} from={victim} to={fourth}",
        bad.id
    );
    assert!(
        c.log_of(repairer).contains(&started),
        "{}",
        c.log_of(repairer)
    );

    // The victim, no longer a member, dropped its report and destroyed its corrupt copy.
    let removed = format!("volume group removed and its data deleted group={}", bad.id);
    wait_log(&c, victim, "the corrupt copy removed", HEAL, |l| {
        l.ends_with(&removed)
    })
    .await;
    let deadline = Instant::now() + READY;
    while c
        .metric_sum(victim, "cairn_storaged_group_open_failed")
        .await
        != Some(0.0)
    {
        assert!(Instant::now() < deadline, "the failed open still reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        spool_files(&data_dir, bad.id),
        0,
        "the corrupt spool file is removed"
    );

    // The victim still serves its other replica, and stays a member of it.
    verify(&client, "own", &own_crcs).await;
    let o = wait_volume(&client, "own", READY, |v| {
        v.health() == pb::VolumeHealth::Healthy
    })
    .await;
    assert_eq!(
        member(&o, victim).state(),
        pb::ReplicaState::Leader,
        "{o:?}"
    );

    c.kill9(victim);
    let left = disk_faults::group_keys(&data_dir, bad.id).unwrap();
    assert!(left.values().all(|n| *n == 0), "{left:?}");
}
