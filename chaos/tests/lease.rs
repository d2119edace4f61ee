//! Lease reads under clock drift: a leader cut off from followers whose clocks run twice as
//! fast as its own must stop serving reads on its lease before they can elect another leader.

// The followers' clocks run fast (libfaketime): their election timers and the time they
// refuse other candidates after the leader's last message both end early in real time, so
// the leader's clock is, relative to theirs, at half the rate. A leader that trusted its
// whole lease would answer a read with a value the new leader has already overwritten
// (storaged's `LEASE_SHARE`, decision 054). Needs root, FUSE, nft and Debian's faketime.

use std::time::{Duration, Instant};

use cairn_chaos::cluster::FaultCluster;
use cairn_chaos::{clock, partition};
use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use cairn_storaged::node::status;
use cairn_storaged::raft::ChannelCache;
use cairn_storaged::testkit::sibling_bin;
use cairn_storaged::tls::Identity;

const VOL: &str = "lease";

/// Waits until the volume has a leader on real time whose two followers run on `env`'s fast
/// clocks, restarting nodes to get there (bounded). Returns the leader.
async fn lead_among_fast_followers(
    cluster: &mut FaultCluster,
    env: &[(String, String)],
    within: Duration,
) -> u64 {
    let deadline = Instant::now() + within;
    let client = cluster
        .procs
        .client()
        .with_deadline(Duration::from_secs(20));
    loop {
        assert!(Instant::now() < deadline, "no leader with fast followers");
        // A write wakes the group if it went quiet, so restarted members catch up.
        client
            .write(VOL, 4096, vec![0u8; 4096].into())
            .await
            .unwrap();
        cluster
            .procs
            .wait_replicas_healthy(&[VOL], Duration::from_secs(30))
            .await
            .unwrap();
        let leader = cluster
            .procs
            .volume_leader(VOL, Duration::from_secs(10))
            .await
            .unwrap();
        let fast = |id: u64| {
            cluster
                .procs
                .pid(id)
                .is_some_and(|pid| clock::has_env(pid, env))
        };
        let ids = cluster.node_ids();
        if fast(leader) {
            // A fast node won: every node back on real time, then the followers again.
            let skewed: Vec<u64> = ids.iter().copied().filter(|id| fast(*id)).collect();
            for id in skewed {
                cluster.procs.restart_with_env(id, Vec::new()).unwrap();
            }
            continue;
        }
        let slow: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| *id != leader && !fast(*id))
            .collect();
        if slow.is_empty() {
            return leader;
        }
        // A follower's restart leaves the leader in place.
        for id in slow {
            cluster.procs.restart_with_env(id, env.to_vec()).unwrap();
        }
    }
}

/// Cuts off by the volume's leader is repeated this many times (each with a new value): the
/// window a stale read needs is a few hundred milliseconds wide at most.
const ROUNDS: u8 = 3;

/// What one cut showed: who led and who took over, when (after the cut) the newer write was
/// acknowledged, and every read the cut-off leader answered with bytes, by when it was sent.
struct Round {
    leader: u64,
    new_leader: u64,
    new_write: Duration,
    reads: Vec<(Duration, u8)>,
}

/// Writes `old` through the leader, cuts the leader off, and until a follower that leads
/// takes `new`, keeps reading from the cut-off leader (from the host, which still reaches
/// it). Heals before returning.
async fn cut_off_leader(cluster: &FaultCluster, leader: u64, old: u8, new: u8) -> Round {
    let admin = cluster.procs.security_for(&Identity::Admin);
    let addr = |id: u64| cluster.procs.nodes[cluster.procs.index_of(id)].addr.clone();
    let on_leader = VolumeClient::new(vec![addr(leader)], admin.clone())
        .unwrap()
        .with_deadline(Duration::from_millis(300));
    let followers: Vec<(u64, VolumeClient)> = cluster
        .node_ids()
        .into_iter()
        .filter(|id| *id != leader)
        .map(|id| {
            let c = VolumeClient::new(vec![addr(id)], admin.clone()).unwrap();
            (id, c.with_deadline(Duration::from_millis(300)))
        })
        .collect();
    let group = on_leader.get_volume(VOL).await.unwrap().id;
    let channels = ChannelCache::new(cluster.procs.security_for(&Identity::Node(leader)));

    // A write through the leader just before the cut: its lease is as fresh as it gets. After
    // the previous round's heal an election may still be settling, so it is retried (each try
    // waits up to the client's deadline), within a bound.
    let settle = Instant::now() + Duration::from_secs(10);
    while let Err(e) = on_leader.write(VOL, 0, vec![old; 4096].into()).await {
        assert!(
            Instant::now() < settle,
            "no write through node {leader} within 10 s: {e}"
        );
    }
    let cut = partition::cut(partition::Shape::Isolate, leader, &cluster.node_ids(), &[]);
    let net = &cluster.net;
    let link = |id: u64| net.host_link(id).unwrap_or_default().to_string();
    partition::apply(&partition::rules(&net.table(), &cut.pairs, link)).unwrap();
    let cut_at = Instant::now();

    // Reads of the cut-off leader, one after another, from the cut on.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = tokio::spawn({
        let (done, on_leader) = (done.clone(), on_leader.clone());
        async move {
            let mut reads = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = cut_at.elapsed();
                if let Ok(bytes) = on_leader.read(VOL, 0, 4096).await {
                    reads.push((sent, bytes[0]));
                }
            }
            reads
        }
    });

    // The followers elect one of them (asked directly, never sent on to the cut-off
    // leader) and it takes the newer write.
    let (new_leader, new_write) = 'elected: loop {
        assert!(
            cut_at.elapsed() < Duration::from_secs(20),
            "the majority side never took a write:\n{}",
            cluster.log_tails(20)
        );
        for (id, c) in &followers {
            let leads = status::ask(&channels, &addr(*id), group, Duration::from_millis(100))
                .await
                .is_some_and(|s| s.leader == Some(*id));
            if leads && c.write(VOL, 0, vec![new; 4096].into()).await.is_ok() {
                break 'elected (*id, cut_at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Reads sent up to a second later: the cut-off leader's whole lease is long over.
    tokio::time::sleep(Duration::from_secs(1)).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.await.unwrap();
    partition::heal(&cluster.net.table()).unwrap();
    Round {
        leader,
        new_leader,
        new_write,
        reads,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_leader_reads_nothing_stale_while_its_followers_clocks_run_fast() {
    let env = clock::env(clock::FAST).expect("apt-get install faketime");
    let storaged = sibling_bin("storaged");
    // The cluster makes (and removes on drop) a directory of its own in there.
    let mut cluster =
        FaultCluster::start("lease", &std::env::temp_dir(), &storaged, 3, &[]).unwrap();
    cluster
        .procs
        .wait_ready(Duration::from_secs(60))
        .await
        .unwrap();
    let client = cluster
        .procs
        .client()
        .with_deadline(Duration::from_secs(20));
    client
        .create_volume(pb::CreateVolumeRequest {
            name: VOL.into(),
            size_bytes: 16 << 20,
            replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    for round in 0..ROUNDS {
        let (old, new) = (2 * round + 1, 2 * round + 2);
        let leader = lead_among_fast_followers(&mut cluster, &env, Duration::from_secs(120)).await;
        let r = cut_off_leader(&cluster, leader, old, new).await;
        let served: Vec<String> = r
            .reads
            .iter()
            .map(|(at, b)| format!("{}ms:{b}", at.as_millis()))
            .collect();
        eprintln!(
            "round {round}: leader {} (real time) cut off; node {} (2x) took the newer write {} ms after the cut; \
             the cut-off leader served {} reads: {}",
            r.leader,
            r.new_leader,
            r.new_write.as_millis(),
            r.reads.len(),
            served.join(" ")
        );
        // Any read sent after the newer write was acknowledged must see it.
        let stale: Vec<_> = r
            .reads
            .iter()
            .filter(|(at, b)| *at >= r.new_write && *b != new)
            .collect();
        assert!(
            stale.is_empty(),
            "stale reads on an expired lease: node {} answered {stale:?} (sent at, first byte) \
             after node {} acknowledged {new} at {:?}",
            r.leader,
            r.new_leader,
            r.new_write
        );
        // Healed, the newer bytes read back.
        assert_eq!(client.read(VOL, 0, 4096).await.unwrap(), vec![new; 4096]);
    }
}
