//! Real 3-process storaged clusters on loopback: leader kill -9 during writes, power loss,
//! lost quorum and maximal write batches; every acknowledged write is verified.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use cairn_storaged::testkit::ProcCluster;
use rand::{Rng, SeedableRng};
use tonic::Code;

const SLOT: u64 = 64 * 1024;
const VOL_SIZE: u64 = 64 << 20;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_storaged"))
}

/// Per 64 KiB slot: the contents a correct store may return (CRCs).
#[derive(Default, Clone)]
struct Model {
    slots: HashMap<(String, u64), BTreeSet<u32>>,
}

impl Model {
    fn zero_crc() -> u32 {
        crc32fast::hash(&vec![0u8; SLOT as usize])
    }
    fn acked(&mut self, vol: &str, slot: u64, crc: u32) {
        self.slots
            .insert((vol.to_string(), slot), BTreeSet::from([crc]));
    }
    fn ambiguous(&mut self, vol: &str, slot: u64, crc: u32) {
        self.slots
            .entry((vol.to_string(), slot))
            .or_insert_with(|| BTreeSet::from([Self::zero_crc()]))
            .insert(crc);
    }
}

async fn create_volumes(client: &VolumeClient, names: &[&str]) {
    for n in names {
        client
            .create_volume(pb::CreateVolumeRequest {
                name: n.to_string(),
                size_bytes: VOL_SIZE,
                replicas: 3,
                ..Default::default()
            })
            .await
            .expect("create volume");
    }
}

/// Writes `total` bytes of random 64 KiB slots to `vol` until `stop`, recording outcomes.
async fn writer(
    client: VolumeClient,
    vol: String,
    seed: u64,
    total: u64,
    model: Arc<Mutex<Model>>,
) -> (u64, u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut ok, mut failed) = (0, 0);
    let mut written = 0;
    while written < total {
        let slot = rng.random_range(0..VOL_SIZE / SLOT);
        let mut data = vec![0u8; SLOT as usize];
        rng.fill(&mut data[..]);
        let crc = crc32fast::hash(&data);
        // In flight = ambiguous: either the old or the new content is correct until acked.
        model.lock().unwrap().ambiguous(&vol, slot, crc);
        match client.write(&vol, slot * SLOT, data.into()).await {
            Ok(()) => {
                model.lock().unwrap().acked(&vol, slot, crc);
                ok += 1;
            }
            Err(_) => failed += 1,
        }
        written += SLOT;
    }
    (ok, failed)
}

fn acked_count(model: &Mutex<Model>) -> usize {
    model
        .lock()
        .unwrap()
        .slots
        .values()
        .filter(|s| s.len() == 1)
        .count()
}

async fn verify(client: &VolumeClient, model: &Model) {
    for ((vol, slot), allowed) in &model.slots {
        let data = client
            .read(vol, slot * SLOT, SLOT as u32)
            .await
            .expect("read back");
        let crc = crc32fast::hash(&data);
        assert!(
            allowed.contains(&crc),
            "volume {vol} slot {slot}: content {crc:08x} not in {allowed:x?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill9_during_writes_loses_no_acknowledged_write() {
    let cluster = Arc::new(tokio::sync::Mutex::new(
        ProcCluster::start(bin(), 3, &[]).unwrap(),
    ));
    let client = cluster.lock().await.client();
    cluster
        .lock()
        .await
        .wait_ready(Duration::from_secs(30))
        .await
        .unwrap();
    let vols = ["kill-a", "kill-b", "kill-c"];
    create_volumes(&client, &vols).await;
    let model = Arc::new(Mutex::new(Model::default()));
    // 64 MiB of random data in total, spread over the three volumes.
    let writers: Vec<_> = vols
        .iter()
        .enumerate()
        .map(|(i, v)| {
            tokio::spawn(writer(
                client.clone(),
                v.to_string(),
                i as u64 + 1,
                (64 << 20) / 3,
                model.clone(),
            ))
        })
        .collect();
    // Chaos: kill -9 the leader of each group in turn, then restart it.
    let chaos = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let mut kills = 0;
            for v in ["kill-a", "kill-b", "kill-c"] {
                let leader = cluster
                    .lock()
                    .await
                    .volume_leader(v, Duration::from_secs(20))
                    .await
                    .unwrap();
                cluster.lock().await.kill9(leader);
                let killed_at = Instant::now();
                kills += 1;
                // The client finds the new leader and I/O resumes within 3 s.
                let c = cluster.lock().await.client();
                let read = c.read(v, 0, 4096).await;
                let resumed = killed_at.elapsed();
                eprintln!("{v}: leader node {leader} killed; I/O resumed after {resumed:?}");
                if read.is_err() || resumed >= Duration::from_secs(3) {
                    let cl = cluster.lock().await;
                    let tails: String = (1..=3)
                        .map(|id| {
                            let log = cl.log_of(id);
                            let lines: Vec<&str> = log.lines().collect();
                            let tail = &lines[lines.len().saturating_sub(40)..];
                            format!("--- node {id}\n{}\n", tail.join("\n"))
                        })
                        .collect();
                    panic!(
                        "{v}: I/O after the leader (node {leader}) was killed: {:?} after {resumed:?} (bound 3 s)\n{tails}",
                        read.err()
                    );
                }
                // Let the remaining majority take writes, then bring the old leader back.
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    if matches!(c.get_volume(v).await, Ok(vol) if vol.leader_node_id != 0 && vol.leader_node_id != leader)
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                cluster.lock().await.restart(leader).unwrap();
                // One fault at a time: the next kill must leave a majority, so the restarted
                // node has to be back in every group first.
                cluster
                    .lock()
                    .await
                    .wait_replicas_healthy(&vols, Duration::from_secs(30))
                    .await
                    .unwrap();
            }
            kills
        })
    };
    let mut acked = 0;
    for w in writers {
        let (ok, _failed) = w.await.unwrap();
        acked += ok;
    }
    assert_eq!(chaos.await.unwrap(), 3);
    assert!(
        acked > 900,
        "most writes should succeed across leader changes, got {acked}"
    );
    let snapshot = model.lock().unwrap().clone();
    verify(&client, &snapshot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_loss_of_every_node_keeps_acknowledged_writes() {
    // Frequent snapshots: the log is purged while applied state is still unflushed
    // in memory, which must not lose acknowledged writes.
    let mut cluster = ProcCluster::start(bin(), 3, &["--snapshot-logs", "32"]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client();
    create_volumes(&client, &["power-a", "power-b"]).await;
    let model = Arc::new(Mutex::new(Model::default()));
    let w1 = tokio::spawn(writer(
        client.clone(),
        "power-a".into(),
        11,
        16 << 20,
        model.clone(),
    ));
    let w2 = tokio::spawn(writer(
        client.clone(),
        "power-b".into(),
        12,
        16 << 20,
        model.clone(),
    ));
    // Mid-write: wait until some writes are acknowledged, then kill -9 everything at once.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked_count(&model) < 150 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snapshots: usize = (1..=3)
        .map(|id| cluster.log_of(id).matches("built snapshot").count())
        .sum();
    for id in 1..=3 {
        cluster.kill9(id);
    }
    assert!(
        snapshots > 0,
        "the log should have been snapshotted and purged before the power loss"
    );
    w1.abort();
    w2.abort();
    let _ = w1.await;
    let _ = w2.await;
    let before = acked_count(&model);
    assert!(
        before >= 150,
        "expected writes before the power loss, got {before}"
    );
    for id in 1..=3 {
        cluster.restart(id).unwrap();
    }
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    // Writes in flight at the kill were recorded as ambiguous before they were sent.
    let snapshot = model.lock().unwrap().clone();
    verify(&cluster.client(), &snapshot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_quorum_writes_fail_fast_and_resume_when_a_node_returns() {
    let mut cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client().with_deadline(Duration::from_secs(4));
    create_volumes(&client, &["quorum"]).await;
    client
        .write("quorum", 0, vec![7u8; 4096].into())
        .await
        .expect("first write");
    cluster.kill9(2);
    cluster.kill9(3);
    let start = Instant::now();
    let err = client
        .write("quorum", 4096, vec![8u8; 4096].into())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    cluster.restart(2).unwrap();
    let client = cluster.client().with_deadline(Duration::from_secs(20));
    client
        .write("quorum", 4096, vec![8u8; 4096].into())
        .await
        .expect("write after a node returns");
    assert_eq!(
        client.read("quorum", 0, 8192).await.unwrap(),
        [vec![7u8; 4096], vec![8u8; 4096]].concat()
    );
}

/// 64 concurrent 1 MiB writes (the largest request) on a 3-replica volume: the Raft
/// batches are tens of MiB and must still replicate, not time out and retry forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_concurrent_writes_replicate_and_read_back() {
    let cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    // 64 MiB replicated three times while the other tests of this binary run their own
    // clusters on the same 2 cores: allow more than the default 8 s per write (seen in CI).
    let client = cluster.client().with_deadline(Duration::from_secs(30));
    create_volumes(&client, &["large"]).await;
    const MIB: u64 = 1 << 20;
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let blocks: Vec<bytes::Bytes> = (0..64)
        .map(|_| {
            let mut b = vec![0u8; MIB as usize];
            rng.fill(&mut b[..]);
            bytes::Bytes::from(b)
        })
        .collect();
    let writes = blocks.iter().enumerate().map(|(i, b)| {
        let c = client.clone();
        let b = b.clone();
        async move { c.write("large", i as u64 * MIB, b).await }
    });
    for (i, r) in futures::future::join_all(writes)
        .await
        .into_iter()
        .enumerate()
    {
        r.unwrap_or_else(|e| panic!("1 MiB write {i} failed: {e}"));
    }
    for (i, b) in blocks.iter().enumerate() {
        let got = client
            .read("large", i as u64 * MIB, MIB as u32)
            .await
            .expect("read back");
        assert!(got[..] == b[..], "block {i} differs after replication");
    }
}

/// Writes `count` random 64 KiB slots from `first` on, one at a time, as the holder of
/// publish `generation` (0: the volume is not published); returns them.
async fn write_slots(
    client: &VolumeClient,
    vol: &str,
    (first, count): (u64, u64),
    generation: u64,
    rng: &mut rand::rngs::StdRng,
) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for slot in first..first + count {
        let mut data = vec![0u8; SLOT as usize];
        rng.fill(&mut data[..]);
        client
            .write_as(vol, slot * SLOT, data.clone().into(), generation)
            .await
            .unwrap_or_else(|e| panic!("write of slot {slot}: {e}"));
        out.push((slot, data));
    }
    out
}

/// A follower that misses far more than the kept log catches up from a snapshot that
/// is streamed in pages and spooled; then it alone holds the newest writes, becomes
/// leader, and serves every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_far_behind_catches_up_from_a_streamed_snapshot() {
    // Snapshots every 32 entries, 8 entries kept after each: a node down for 24 MiB
    // of writes cannot catch up from the log.
    let mut cluster = ProcCluster::start(bin(), 3, &["--snapshot-logs", "32"]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client().with_deadline(Duration::from_secs(30));
    create_volumes(&client, &["behind"]).await;
    let leader = cluster
        .volume_leader("behind", Duration::from_secs(20))
        .await
        .unwrap();
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    let other = (1..=3).find(|id| *id != leader && *id != lagging).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);

    cluster.kill9(lagging);
    let mut written = write_slots(&client, "behind", (0, 384), 0, &mut rng).await;
    // The leader purges behind its snapshots while a follower is down (the log does not
    // grow for a dead member), so the returning node's next entry is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let purged = cluster
            .metric_where(
                leader,
                "cairn_storaged_raft_purged_index",
                "volume=\"behind\"",
            )
            .await
            .unwrap_or(0.0);
        if purged >= 64.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leader {leader} purged its log only to {purged} with a follower down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.restart(lagging).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cluster.log_of(lagging).contains("installed snapshot") {
        assert!(
            Instant::now() < deadline,
            "node {lagging} installed no snapshot in 60 s:\n{}",
            cluster.log_of(lagging)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = cluster.log_of(lagging);
    let pages: u64 = log
        .split("pages=")
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .max()
        .expect("the received snapshot's page count is logged");
    assert!(
        pages >= 4,
        "24 MiB should arrive in several pages, got {pages}"
    );

    // With `other` down, these commit only if the caught-up node takes part.
    cluster.kill9(other);
    written.extend(write_slots(&client, "behind", (384, 16), 0, &mut rng).await);
    // Only `lagging` has the newest entries now, so it is the one `other` votes for.
    cluster.kill9(leader);
    cluster.restart(other).unwrap();
    let new_leader = cluster
        .volume_leader("behind", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        new_leader, lagging,
        "the only node with the newest writes leads"
    );
    for (slot, data) in &written {
        let got = client
            .read("behind", slot * SLOT, SLOT as u32)
            .await
            .expect("read back");
        assert!(got[..] == data[..], "slot {slot} differs on node {lagging}");
    }
}

/// Waits until GetVolume reports `want` as the leader of `vol`.
async fn wait_for_leader(cluster: &ProcCluster, vol: &str, want: u64, within: Duration) {
    let client = cluster.client().with_deadline(Duration::from_secs(2));
    let deadline = Instant::now() + within;
    let mut seen = 0;
    while Instant::now() < deadline {
        if let Ok(v) = client.get_volume(vol).await {
            seen = v.leader_node_id;
            if seen == want {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "volume {vol}: leader is {seen}, not the attached node {want}, after {within:?}:\n{}",
        cluster.log_of(want)
    );
}

/// A volume's Raft leader moves to the node it is attached to (so that node's frontend
/// does I/O locally), keeps every write across the move, fails over when that node dies,
/// and comes back to it once it returns and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_follows_the_attachment() {
    let mut cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client().with_deadline(Duration::from_secs(20));
    create_volumes(&client, &["follow"]).await;
    let first = cluster
        .volume_leader("follow", Duration::from_secs(20))
        .await
        .unwrap();
    let attached = (1..=3).find(|id| *id != first).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut written = write_slots(&client, "follow", (0, 16), 0, &mut rng).await;

    let node_name = format!("node-{attached}");
    let published = client
        .publish_volume(pb::PublishVolumeRequest {
            name: "follow".into(),
            node_name: node_name.clone(),
            ..Default::default()
        })
        .await
        .expect("publish");
    // From now on only the publish's generation may write (unfenced writes are refused).
    let generation = published
        .attachments
        .iter()
        .find(|a| a.node_name == node_name)
        .map(|a| a.generation)
        .expect("the attachment");
    wait_for_leader(&cluster, "follow", attached, Duration::from_secs(15)).await;
    let log = cluster.log_of(first);
    assert!(
        log.contains("handing leadership to the attached node"),
        "node {first} should have handed over:\n{log}"
    );
    written.extend(write_slots(&client, "follow", (16, 16), generation, &mut rng).await);

    // The attached node dies: another member leads, and writes go on.
    cluster.kill9(attached);
    written.extend(write_slots(&client, "follow", (32, 16), generation, &mut rng).await);
    let interim = cluster
        .volume_leader("follow", Duration::from_secs(10))
        .await
        .unwrap();
    assert_ne!(interim, attached);
    // It returns, catches up, and leads again.
    cluster.restart(attached).unwrap();
    wait_for_leader(&cluster, "follow", attached, Duration::from_secs(30)).await;
    for (slot, data) in &written {
        let got = client
            .read("follow", slot * SLOT, SLOT as u32)
            .await
            .expect("read back");
        assert!(got[..] == data[..], "slot {slot} differs after the moves");
    }
}

/// Node `id`'s view of Raft group `group` (`RaftService.GroupStatus`).
async fn group_status(
    cluster: &ProcCluster,
    id: u64,
    group: u64,
) -> cairn_storaged::node::GroupStatus {
    let addr = cluster.node_addrs()[&id].clone();
    // RaftService answers node identities only: ask as the node itself.
    let channel = cluster
        .security_for(&cairn_storaged::tls::Identity::Node(id))
        .endpoint(&addr)
        .expect("node address")
        .connect()
        .await
        .expect("connect to the node");
    let mut c = pb::raft_service_client::RaftServiceClient::new(channel);
    let reply = c
        .group_status(pb::RaftMessage {
            group_id: group,
            payload: Default::default(),
        })
        .await
        .expect("group status")
        .into_inner();
    cairn_storaged::raft::decode(&reply.payload).expect("decode group status")
}

/// Pre-Vote: a follower cut off from the other two (both paused) keeps asking whether it
/// would be elected, and never is, so its term stays. Without Pre-Vote its term climbs with
/// every election timeout (300–600 ms), five to ten times over the fault, and its first reply
/// to the leader unseats it. Once the others are back, all three agree on one leader at the
/// old term or the next: the paused leader's lease lapsed too, so one election may follow
/// (the lone follower may win it if its Pre-Vote reaches the leader before a heartbeat
/// reaches it), but never the string of elections an inflated term forces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_follower_keeps_its_term_and_unseats_no_leader() {
    let cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client().with_deadline(Duration::from_secs(30));
    create_volumes(&client, &["prevote"]).await;
    let group = client.get_volume("prevote").await.unwrap().id;
    let leader = cluster
        .volume_leader("prevote", Duration::from_secs(20))
        .await
        .unwrap();
    client
        .write("prevote", 0, vec![1u8; 4096].into())
        .await
        .unwrap();
    let lone = (1..=3).find(|id| *id != leader).unwrap();
    let other = (1..=3).find(|id| *id != leader && *id != lone).unwrap();
    // The lone follower must have heard from the leader first (the first commit may have
    // been the other two's): its term is then the leader's.
    let term = group_status(&cluster, leader, group).await.term;
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let s = group_status(&cluster, lone, group).await;
        if (s.leader, s.term) == (Some(leader), term) {
            break;
        }
        assert!(
            Instant::now() < until,
            "node {lone} did not follow node {leader} at term {term}: {:?}",
            (s.leader, s.term)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    cluster.pause(leader, true);
    cluster.pause(other, true);
    // The fault lasts 3 s, five to ten of the lone follower's election timeouts; its term
    // is watched throughout.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let now = group_status(&cluster, lone, group).await.term;
        assert_eq!(now, term, "node {lone}, cut off, moved its term");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The leader first: a write it commits with the lone follower refreshes that
    // follower's lease, so `other`, resumed next, cannot win a Pre-Vote either.
    cluster.pause(leader, false);
    client
        .write("prevote", 4096, vec![2u8; 4096].into())
        .await
        .expect("leader and the lone follower commit");
    cluster.pause(other, false);
    client
        .write("prevote", 8192, vec![3u8; 4096].into())
        .await
        .expect("all three back");
    // A node resumed last learns of a new leader at its next heartbeat: wait, bounded,
    // until all three agree.
    let until = Instant::now() + Duration::from_secs(5);
    let views = loop {
        let mut views = Vec::new();
        for id in 1..=3 {
            let s = group_status(&cluster, id, group).await;
            views.push((s.leader, s.term));
        }
        if views.iter().all(|v| *v == views[0]) || Instant::now() > until {
            break views;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        views.iter().all(|v| *v == views[0]),
        "nodes 1-3 disagree on the leader and term after the fault: {views:?}"
    );
    let (after_leader, after_term) = views[0];
    assert!(
        after_term <= term + 1 && after_leader.is_some(),
        "at most one election after the fault: term {term} became {after_term} (leader {after_leader:?})"
    );
    let back = client.read("prevote", 4096, 8192).await.unwrap();
    assert!(back[..4096].iter().all(|b| *b == 2) && back[4096..].iter().all(|b| *b == 3));
}

/// SIGTERM stops every node promptly, followers first, then the leader: a leader keeps its
/// replication stream (`AppendStream`) to each follower open for as long as it leads, and
/// a graceful stop that waited for it to end never ended (the follower lingered until
/// SIGKILL). storaged's own safety net gives up waiting after 10 s; 5 s is asked here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_followers_and_the_leader_promptly() {
    let mut cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client().with_deadline(Duration::from_secs(30));
    create_volumes(&client, &["term"]).await;
    client
        .write("term", 0, vec![7u8; 65536].into())
        .await
        .expect("write with all three up");
    let leader = cluster
        .volume_leader("term", Duration::from_secs(20))
        .await
        .unwrap();
    let mut order: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    order.push(leader);
    for id in order {
        let took = cluster.terminate(id, Duration::from_secs(30)).await;
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(5)),
            "node {id} (the volume's leader is {leader}) took {took:?} to stop on SIGTERM"
        );
    }
}
