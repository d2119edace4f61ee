//! Self-healing with real storaged processes: a lost node's replicas rebuilt on the
//! others, a drain then remove, and a returning node dropping its replaced copies.

mod repair_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_proto::cairn::v1 as pb;
use cairn_storaged::disk_faults;
use cairn_storaged::raft::ChannelCache;
use cairn_storaged::testkit::ProcCluster;
use cairn_storaged::tls::Identity;
use repair_support::{
    READY, bin, cairnctl, create, fill, member_not, total_metric, verify, wait_whole, whole,
};
use tonic::Code;

const VOL_SIZE: u64 = 16 << 20;
/// Written per volume: more than a few snapshots' worth at `--snapshot-logs 8`, so a
/// new member catches up from a snapshot and then the log.
const WRITTEN: u64 = 8 << 20;
/// From the kill until every volume is whole again (2 s down timeout, then a
/// snapshot and the log to a new member, three volumes).
const HEAL: Duration = Duration::from_secs(60);

/// One cluster at a time: the machine's cores are shared.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(down_timeout: &str) -> ProcCluster {
    let c = ProcCluster::start(
        bin(),
        4,
        &[
            "--replica-down-timeout",
            down_timeout,
            "--snapshot-logs",
            "8",
        ],
    )
    .unwrap();
    c.wait_ready(READY).await.unwrap();
    c
}

/// `cairn_storaged_volume_health` of `vol` summed over the running nodes: only its group's
/// leader reports it, so 1 healthy, 2 degraded (0 while no leader answers).
async fn health_metric(c: &ProcCluster, vol: &str) -> f64 {
    let label = format!("volume=\"{vol}\"");
    let mut sum = 0.0;
    for id in c.nodes.iter().map(|n| n.id) {
        if c.is_running(id) {
            sum += c
                .metric_where(id, "cairn_storaged_volume_health", &label)
                .await
                .unwrap_or(0.0);
        }
    }
    sum
}

/// Replicas per node over `vols`.
fn holdings(vols: &[pb::Volume]) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for v in vols {
        for m in &v.members {
            *out.entry(m.node_id).or_default() += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_node_is_replaced_and_every_byte_survives() {
    let _serial = SERIAL.lock().await;
    let mut c = start("2s").await;
    let client = c.client();
    let names = ["heal-a", "heal-b", "heal-c"];
    let mut data = BTreeMap::new();
    let mut vols = Vec::new();
    for (i, n) in names.iter().enumerate() {
        vols.push(create(&client, n, VOL_SIZE).await);
        data.insert(n.to_string(), fill(&client, n, i as u64, WRITTEN).await);
    }
    // Nine replicas on four nodes: one node holds a replica of every volume.
    let (&victim, &held) = holdings(&vols).iter().max_by_key(|(_, n)| **n).unwrap();
    assert_eq!(held, names.len(), "{vols:?}");
    for n in &names {
        let v = client.get_volume(n).await.unwrap();
        assert_eq!(
            v.health(),
            pb::VolumeHealth::Healthy,
            "{n} before the fault"
        );
    }
    assert_eq!(
        health_metric(&c, "heal-a").await,
        1.0,
        "healthy, on its leader"
    );

    c.kill9(victim);
    std::fs::remove_dir_all(&c.nodes[c.index_of(victim)].dir).unwrap();
    let deadline = Instant::now() + HEAL;
    while health_metric(&c, "heal-a").await != 2.0 {
        assert!(
            Instant::now() < deadline,
            "heal-a's leader never reported it degraded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (took, degraded) = wait_whole(&client, &names, victim, HEAL).await;
    eprintln!("node {victim} killed and wiped: every volume healthy again after {took:?}");
    for (n, seen) in &degraded {
        assert!(seen, "{n} was never reported degraded");
    }
    for n in &names {
        verify(&client, n, &data[*n]).await;
    }
    // The new members were rebuilt from streamed snapshots holding the written bytes.
    let received = total_metric(&c, "cairn_storaged_rebuild_bytes_total").await;
    assert!(
        received >= (names.len() as u64 * WRITTEN / 2) as f64,
        "rebuild bytes received: {received}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while health_metric(&c, "heal-a").await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "heal-a's leader never reported it healthy again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The bytes are on the new members too: each volume is attached (in the catalogue)
    // to its new member, its leadership follows (decision 014), and reads are served
    // from that member's state machine.
    for (before, n) in vols.iter().zip(&names) {
        let v = client.get_volume(n).await.unwrap();
        let new = v
            .members
            .iter()
            .find(|m| before.members.iter().all(|b| b.node_id != m.node_id))
            .expect("a new member")
            .clone();
        client
            .publish_volume(pb::PublishVolumeRequest {
                name: n.to_string(),
                node_name: new.node_name.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.get_volume(n).await.map(|v| v.leader_node_id).ok() != Some(new.node_id) {
            assert!(
                Instant::now() < deadline,
                "{n}: node {} never led",
                new.node_id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        verify(&client, n, &data[*n]).await;
    }
    // The new members caught up from a snapshot (the log behind it was purged).
    assert!(
        c.nodes
            .iter()
            .filter(|n| n.id != victim)
            .any(|n| c.log_of(n.id).contains("received snapshot")),
        "no new member installed a snapshot"
    );
    // The catalogue moved the replicas too: nothing is left on the lost node.
    let vols = client.list_all_volumes().await.unwrap();
    assert!(!holdings(&vols).contains_key(&victim), "{vols:?}");
    assert!(
        vols.iter().all(|v| v.health() == pb::VolumeHealth::Healthy),
        "`volume ls` health: {vols:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_node_can_be_removed() {
    let _serial = SERIAL.lock().await;
    let c = start("5m").await;
    let client = c.client();
    let v = create(&client, "drain-a", VOL_SIZE).await;
    let crcs = fill(&client, "drain-a", 7, WRITTEN).await;
    let meta = client.cluster_status().await.unwrap().meta_leader_id;
    // The node to drain holds a replica and does not lead the meta group (a meta
    // leader cannot remove itself); `spare` is the one node without a replica.
    let victim = member_not(&v, meta);
    let spare = (1..=4u64)
        .find(|id| v.members.iter().all(|m| m.node_id != *id))
        .unwrap();
    let name = |id: u64| format!("node-{id}");

    // Precise refusals.
    let e = client.drain_node("Not_A_Name!").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("name"), "{}", e.message());
    let e = client.drain_node("node-9").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = client.cordon_node("node-9", true).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = client.remove_node(victim).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // A cordoned node takes no new replica, and with the spare cordoned the drain
    // has nowhere to go.
    let n = client.cordon_node(&name(spare), true).await.unwrap();
    assert!(n.cordoned && !n.draining);
    let other = create(&client, "drain-b", VOL_SIZE).await;
    assert!(
        other.members.iter().all(|m| m.node_id != spare),
        "{other:?}"
    );
    client.delete_volume("drain-b").await.unwrap();
    let e = client.drain_node(&name(victim)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("drain-a"), "{}", e.message());
    assert!(
        !client
            .cordon_node(&name(spare), false)
            .await
            .unwrap()
            .cordoned
    );

    // Through cairnctl: the drain waits until no replica is left on the node.
    let ep = c.addrs().join(",");
    let started = Instant::now();
    let out = cairnctl(&c, &ep, &["node", "drain", &name(victim), "--wait", "60"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("drained"),
        "{out:?}"
    );
    let (took, _) = wait_whole(&client, &["drain-a"], victim, HEAL).await;
    eprintln!("node {victim} drained in {:?}", started.elapsed() + took);
    let nodes = client.list_nodes().await.unwrap();
    assert!(
        nodes
            .iter()
            .any(|n| n.id == victim && n.draining && n.cordoned)
    );
    let ls = cairnctl(&c, &ep, &["volume", "ls"]);
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.contains("HEALTH") && ls.contains("healthy"), "{ls}");
    let v = client.get_volume("drain-a").await.unwrap();
    assert!(v.members.iter().any(|m| m.node_id == spare), "{v:?}");
    verify(&client, "drain-a", &crcs).await;
    client.remove_node(victim).await.unwrap();
    let nodes = client.list_nodes().await.unwrap();
    assert!(nodes.iter().all(|n| n.id != victim), "{nodes:?}");
}

/// Whether node `id` hosts `group` (`None`: it did not answer).
async fn hosted(c: &ProcCluster, id: u64, group: u64) -> Option<bool> {
    let addr = c.nodes[c.index_of(id)].addr.clone();
    let channels = ChannelCache::new(c.security_for(&Identity::Node(id)));
    cairn_storaged::node::status::ask(&channels, &addr, group, Duration::from_secs(1))
        .await
        .map(|s| s.hosted)
}

/// Waits, bounded, until node `id` no longer hosts `group` and has logged its removal.
async fn wait_removed(c: &ProcCluster, id: u64, group: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if hosted(c, id, group).await == Some(false)
            && c.log_of(id)
                .contains("volume group removed and its data deleted")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} still hosts group {group} {within:?} after its return"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_returning_node_drops_its_replaced_replicas() {
    let _serial = SERIAL.lock().await;
    let mut c = start("2s").await;
    let client = c.client();
    let v = create(&client, "back-a", VOL_SIZE).await;
    let crcs = fill(&client, "back-a", 11, WRITTEN).await;
    let victim = v.members[0].node_id;
    let group = v.id;
    assert_eq!(hosted(&c, victim, group).await, Some(true));

    c.kill9(victim);
    wait_whole(&client, &["back-a"], victim, HEAL).await;
    c.restart(victim).unwrap();
    wait_removed(&c, victim, group, Duration::from_secs(30)).await;
    // Still gone after another start (nothing left on disk to reopen): a reopened
    // group would be hosted within its first reconcile, so a few seconds of grace.
    c.restart(victim).unwrap();
    c.wait_ready(READY).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(hosted(&c, victim, group).await, Some(false));
    let v = client.get_volume("back-a").await.unwrap();
    assert!(whole(&v, victim), "{v:?}");
    verify(&client, "back-a", &crcs).await;
}

/// A volume deleted while one of its members is down is destroyed on that member when it
/// returns: its reconcile sweep finds the group on disk that the catalogue no longer has.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_volume_deleted_while_a_member_is_down_is_destroyed_when_it_returns() {
    let _serial = SERIAL.lock().await;
    // No repair during the test: the member stays a member while it is down.
    let mut c = start("10m").await;
    let client = c.client();
    let v = create(&client, "gone-a", VOL_SIZE).await;
    fill(&client, "gone-a", 12, WRITTEN).await;
    let meta = client.cluster_status().await.unwrap().meta_leader_id;
    let victim = v
        .members
        .iter()
        .map(|m| m.node_id)
        .find(|n| *n != meta)
        .expect("a member that does not lead the meta group");
    assert_eq!(hosted(&c, victim, v.id).await, Some(true));

    c.kill9(victim);
    client
        .delete_volume("gone-a")
        .await
        .expect("a delete while one member is down");
    let err = client.get_volume("gone-a").await.expect_err("deleted");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    c.restart(victim).unwrap();
    wait_removed(&c, victim, v.id, Duration::from_secs(30)).await;
}

/// A crash between the steps of a destroy (spool files, data and applied state gone; the
/// log and Raft state not yet) is finished at the next start: nothing of the group is
/// left on disk, and the node says so in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_destroy_cut_by_a_crash_is_finished_at_the_next_start() {
    let _serial = SERIAL.lock().await;
    let mut c = start("10m").await;
    let client = c.client();
    let v = create(&client, "cut-a", VOL_SIZE).await;
    fill(&client, "cut-a", 13, WRITTEN).await;
    let meta = client.cluster_status().await.unwrap().meta_leader_id;
    let victim = member_not(&v, meta);
    let crash = vec![(
        "CAIRN_TEST_CRASH_AT".to_string(),
        format!("destroy:{}", v.id),
    )];
    c.restart_with_env(victim, crash).unwrap();
    let deadline = Instant::now() + READY;
    while hosted(&c, victim, v.id).await != Some(true) {
        assert!(
            Instant::now() < deadline,
            "node {victim} did not reopen the group"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    client.delete_volume("cut-a").await.unwrap();
    let deadline = Instant::now() + READY;
    while c.exit_status(victim).is_none() {
        assert!(
            Instant::now() < deadline,
            "node {victim} did not crash in its destroy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let data_dir = c.nodes[c.index_of(victim)].data_dir.clone();
    let left = disk_faults::group_keys(&data_dir, v.id).unwrap();
    // Cut between the steps: the data went, the Raft state stayed.
    assert_eq!((left["data"], left["meta"]), (0, 0), "{left:?}");
    assert!(left["raft_state"] > 0, "{left:?}");

    c.restart_with_env(victim, Vec::new()).unwrap();
    let deadline = Instant::now() + READY;
    let logged = |c: &ProcCluster, what: &str| {
        c.log_of(victim)
            .lines()
            .any(|l| l.contains(what) && l.ends_with(&format!(" group={}", v.id)))
    };
    while !(logged(&c, "removing a group left on disk")
        && logged(&c, "volume group removed and its data deleted"))
    {
        assert!(
            Instant::now() < deadline,
            "node {victim} did not finish the destroy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(hosted(&c, victim, v.id).await, Some(false));
    c.kill9(victim);
    let left = disk_faults::group_keys(&data_dir, v.id).unwrap();
    assert!(left.values().all(|n| *n == 0), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repair_survives_a_meta_leader_restart_midway() {
    let _serial = SERIAL.lock().await;
    let mut c = start("2s").await;
    let client = c.client();
    let v = create(&client, "mid-a", VOL_SIZE).await;
    let crcs = fill(&client, "mid-a", 21, WRITTEN).await;
    let meta = client.cluster_status().await.unwrap().meta_leader_id;
    let victim = member_not(&v, meta);
    c.kill9(victim);
    // Wait for the replacement to be under way: a fourth member, shown rebuilding
    // (the volume degraded meanwhile).
    let deadline = Instant::now() + HEAL;
    loop {
        if let Ok(v) = client.get_volume("mid-a").await
            && v.members.len() == 4
            && v.members
                .iter()
                .any(|m| m.state() == pb::ReplicaState::Rebuilding)
        {
            assert_eq!(v.health(), pb::VolumeHealth::Degraded, "{v:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no repair seen within {HEAL:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The meta leader dies in the middle; whoever leads next carries on.
    c.restart(meta).unwrap();
    let (took, _) = wait_whole(&client, &["mid-a"], victim, HEAL).await;
    eprintln!("repair finished {took:?} after the meta leader's restart");
    verify(&client, "mid-a", &crcs).await;
}

/// The rate of `--rebuild-rate` in the next test, in bytes a second.
const RATE: u64 = 2 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_keeps_to_the_rate_and_shows_its_progress() {
    let _serial = SERIAL.lock().await;
    let mut c = ProcCluster::start(
        bin(),
        4,
        &[
            "--replica-down-timeout",
            "2s",
            "--snapshot-logs",
            "8",
            "--rebuild-rate",
            "2MiB",
        ],
    )
    .unwrap();
    c.wait_ready(READY).await.unwrap();
    let client = c.client();
    let v = create(&client, "rate-a", VOL_SIZE).await;
    let crcs = fill(&client, "rate-a", 31, WRITTEN).await;
    let meta = client.cluster_status().await.unwrap().meta_leader_id;
    let victim = member_not(&v, meta);
    c.kill9(victim);

    // Poll the volume through the rebuild: it is seen rebuilding, then part-way with
    // bytes copied, a total near the bytes written and an ETA, then whole.
    let ep = c.addrs().join(",");
    let deadline = Instant::now() + HEAL;
    let mut rebuilding_since = None;
    let mut midway: Option<(pb::RebuildProgress, String, f64)> = None;
    loop {
        let v = client.get_volume("rate-a").await.ok();
        if let Some(v) = &v {
            if whole(v, victim) {
                break;
            }
            for m in &v.members {
                if m.state() == pb::ReplicaState::Rebuilding && rebuilding_since.is_none() {
                    rebuilding_since = Some(Instant::now());
                }
                if let Some(p) = &m.rebuild
                    && p.copied_bytes >= 1 << 20
                    && p.percent < 100
                    && midway.is_none()
                {
                    let shown = cairnctl(&c, &ep, &["volume", "get", "rate-a"]);
                    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
                    let remaining =
                        total_metric(&c, "cairn_storaged_rebuild_remaining_bytes").await;
                    midway = Some((*p, shown, remaining));
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "rate-a not whole within {HEAL:?}: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = rebuilding_since.expect("never seen rebuilding").elapsed();
    let (p, shown, remaining) = midway.expect("no progress seen part-way through the rebuild");
    eprintln!("rebuild at {RATE} B/s took {took:?}; part-way: {p:?}\n{shown}");
    assert!(
        (WRITTEN / 2..=WRITTEN * 2).contains(&p.total_bytes),
        "total {} for {WRITTEN} bytes written",
        p.total_bytes
    );
    assert_eq!(
        p.percent as u64,
        p.copied_bytes * 100 / p.total_bytes,
        "{p:?}"
    );
    // The ETA follows the rate: the bytes left at 2 MiB/s, give or take a page.
    let left = (p.total_bytes - p.copied_bytes) as f64 / RATE as f64;
    assert!(
        (p.eta_seconds as f64) >= left * 0.5 && (p.eta_seconds as f64) <= left * 2.0 + 2.0,
        "{p:?}"
    );
    assert!(
        shown.contains("rebuilding") && shown.contains("copied") && shown.contains("ETA"),
        "{shown}"
    );
    assert!(remaining > 0.0, "no rebuild_remaining_bytes part-way");

    // The snapshot bytes the new member received took at least bytes / rate to arrive; the
    // rebuild is seen starting up to one poll (100 ms, plus the call) after it started, so
    // the floor allows that much.
    let received = total_metric(&c, "cairn_storaged_rebuild_bytes_total").await;
    let floor =
        Duration::from_secs_f64(received / RATE as f64).saturating_sub(Duration::from_millis(250));
    assert!(
        received >= (WRITTEN / 2) as f64,
        "rebuild bytes received: {received}"
    );
    assert!(
        took >= floor,
        "{received} bytes rebuilt in {took:?}, faster than {RATE} B/s allows ({floor:?})"
    );
    assert!(
        took <= floor + Duration::from_secs(30),
        "{received} bytes rebuilt in {took:?} at {RATE} B/s"
    );
    verify(&client, "rate-a", &crcs).await;
}

#[test]
fn bad_rebuild_flags_exit_2_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value) in [
        ("rebuild-rate", "fast"),
        ("rebuild-rate", "0"),
        ("rebuild-rate", "-1MiB"),
        ("rebuild-concurrency", "0"),
    ] {
        let out = std::process::Command::new(bin())
            .args(["--node-id", "1", "--listen", "127.0.0.1:1"])
            .args(["--initial-cluster", "1=127.0.0.1:1", "--insecure"])
            .arg("--data-dir")
            .arg(dir.path())
            .arg(format!("--{flag}={value}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--{flag} {value}: {err}");
        assert!(
            err.contains(&format!("--{flag}")),
            "--{flag} {value}: {err}"
        );
    }
}
