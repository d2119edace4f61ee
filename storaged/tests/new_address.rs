//! A node that comes back on a new address (a pod that moved): the catalogue, the meta
//! group and its volume groups take the new address, and peers reach it there.

mod repair_support;

use std::time::{Duration, Instant};

use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use cairn_storaged::node::status;
use cairn_storaged::raft::{ChannelCache, META_GROUP};
use cairn_storaged::testkit::ProcCluster;
use cairn_storaged::tls::Identity;
use repair_support::{PIECE, READY, bin, cairnctl, create, fill, verify};
use tonic::Code;

const VOL_SIZE: u64 = 16 << 20;
const WRITTEN: u64 = 4 << 20;
/// From the restart until the catalogue and every membership have the new address.
const FOLLOW: Duration = Duration::from_secs(60);

/// Node `id`'s address in `group`'s membership as node `asked` knows it.
async fn member_addr(c: &ProcCluster, asked: u64, group: u64, id: u64) -> Option<String> {
    let addr = c.nodes[c.index_of(asked)].addr.clone();
    let channels = ChannelCache::new(c.security_for(&Identity::Node(asked)));
    status::ask(&channels, &addr, group, Duration::from_secs(1))
        .await?
        .addrs
        .get(&id)
        .cloned()
}

/// Node `id`'s address in the catalogue (`ListNodes`).
async fn catalogue_addr(client: &VolumeClient, id: u64) -> Option<String> {
    let nodes = client.list_nodes().await.ok()?;
    nodes.into_iter().find(|n| n.id == id).map(|n| n.addr)
}

/// Polls until the catalogue and, on every node in `askers`, the meta group's and
/// `group`'s memberships have node `id` at `want`; what was last seen otherwise.
async fn wait_followed(
    c: &ProcCluster,
    askers: &[u64],
    group: u64,
    id: u64,
    want: &str,
) -> Result<Duration, String> {
    let client = c.client();
    let started = Instant::now();
    let mut last = String::new();
    'poll: while started.elapsed() < FOLLOW {
        let cat = catalogue_addr(&client, id).await;
        if cat.as_deref() != Some(want) {
            last = format!("catalogue has node {id} at {cat:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        for asked in askers {
            for g in [META_GROUP, group] {
                let seen = member_addr(c, *asked, g, id).await;
                if seen.as_deref() != Some(want) {
                    last = format!("node {asked}: group {g} has node {id} at {seen:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'poll;
                }
            }
        }
        return Ok(started.elapsed());
    }
    Err(format!("not followed within {FOLLOW:?}: {last}"))
}

/// Polls until the meta group and `vol`'s group are led by a node other than `gone`.
async fn wait_led_without(c: &ProcCluster, vol: &str, gone: u64) {
    let client = c.client();
    let started = Instant::now();
    loop {
        let meta = client
            .cluster_status()
            .await
            .map_or(0, |s| s.meta_leader_id);
        let group = client.get_volume(vol).await.map_or(0, |v| v.leader_node_id);
        if ![0, gone].contains(&meta) && ![0, gone].contains(&group) {
            return;
        }
        assert!(
            started.elapsed() < FOLLOW,
            "no leaders without node {gone}: meta {meta}, {vol} {group}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes one piece of `byte` at `off`, retried (bounded) while the group elects a leader.
async fn write_piece(client: &VolumeClient, vol: &str, off: u64, byte: u8) -> Duration {
    let data = bytes::Bytes::from(vec![byte; PIECE as usize]);
    let started = Instant::now();
    loop {
        match client.write(vol, off, data.clone()).await {
            Ok(()) => return started.elapsed(),
            Err(_) if started.elapsed() < FOLLOW => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("write {vol}@{off} after {:?}: {e}", started.elapsed()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_back_on_a_new_address_is_followed_by_the_catalogue_and_its_groups() {
    let mut c = ProcCluster::start(bin(), 3, &[]).unwrap();
    c.wait_ready(READY).await.unwrap();
    let client = c.client();
    let vol = create(&client, "moved", VOL_SIZE).await;
    let mut crcs = fill(&client, "moved", 7, WRITTEN).await;
    let old = c.nodes[c.index_of(3)].addr.clone();
    // One status call may time out on a loaded machine: ask until node 1 answers, bounded.
    let asked = Instant::now();
    let before = loop {
        let seen = member_addr(&c, 1, vol.id, 3).await;
        if seen.is_some() || asked.elapsed() > FOLLOW {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(before.as_deref(), Some(old.as_str()));

    // Node 3 stops and comes back on another port: same data dir, same id, same flags.
    c.terminate(3, Duration::from_secs(20)).await;
    // While it is away its groups elect leaders among the others, which then follow it.
    wait_led_without(&c, "moved", 3).await;
    let new = c.restart_at_new_address(3).unwrap();
    assert_ne!(new, old);
    let took = wait_followed(&c, &[1, 2, 3], vol.id, 3, &new)
        .await
        .unwrap();
    eprintln!("node 3 moved {old} -> {new}: catalogue and memberships followed in {took:?}");
    c.wait_replicas_healthy(&["moved"], FOLLOW).await.unwrap();

    // What an operator sees, and what the logs say.
    let ls = cairnctl(&c, &c.nodes[0].addr, &["node", "ls"]);
    let out = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success(), "{ls:?}");
    assert!(out.contains(&new) && !out.contains(&old), "{out}");
    let logs: String = [1, 2, 3].iter().map(|id| c.log_of(*id)).collect();
    assert!(
        logs.contains("node registered at a new address"),
        "the meta leader logs the catalogue change"
    );
    let (old_f, new_f) = (format!("old={old}"), format!("new={new}"));
    assert!(
        logs.lines().any(
            |l| l.contains("group membership takes a node's new address")
                && l.contains("node=3")
                && l.contains(&old_f)
                && l.contains(&new_f)
        ),
        "a group leader logs each membership change with node, old and new"
    );

    // The old address's channels are dropped where a group first dials the new one.
    assert!(
        logs.lines()
            .any(|l| l.contains("peer moved: dialling its new address")
                && l.contains("node=3")
                && l.contains(&new_f)),
        "a peer logs that it follows node 3 to its new address"
    );

    // Another node's certificate may not move node 3 back.
    let node2 = VolumeClient::new(c.addrs(), c.security_for(&Identity::Node(2))).unwrap();
    let err = node2
        .add_node(pb::AddNodeRequest {
            id: 3,
            addr: old.clone(),
            name: "node-3".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        catalogue_addr(&client, 3).await.as_deref(),
        Some(new.as_str())
    );

    // Node 1 dies: the meta group and the volume now need node 3 at its new address.
    c.kill9(1);
    let client = c.client();
    let off = WRITTEN;
    let took = write_piece(&client, "moved", off, 0xa5).await;
    eprintln!("write with node 1 dead served after {took:?}");
    crcs.insert(off, crc32fast::hash(&[0xa5u8; PIECE as usize]));
    verify(&client, "moved", &crcs).await;
    let v = client.get_volume("moved").await.unwrap();
    assert!(
        v.leader_node_id == 2 || v.leader_node_id == 3,
        "led by a live node: {v:?}"
    );
}

/// Two of a volume's three replicas move at once (two pods rescheduled together): while they
/// are away the volume has no quorum; back on new ports, they elect through the member that
/// stayed (whose address they still have), the catalogue (the meta group keeps its quorum of
/// five) and both memberships take both new addresses, and nothing written is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_majority_of_a_volume_moving_at_once_is_followed_and_loses_nothing() {
    let mut c = ProcCluster::start(bin(), 5, &[]).unwrap();
    c.wait_ready(READY).await.unwrap();
    let client = c.client();
    let vol = create(&client, "moved2", VOL_SIZE).await;
    let mut crcs = fill(&client, "moved2", 9, WRITTEN).await;
    let meta = client.cluster_status().await.unwrap().meta_leader_id;
    let members: Vec<u64> = vol.members.iter().map(|m| m.node_id).collect();
    let movers: Vec<u64> = members
        .iter()
        .copied()
        .filter(|&n| n != meta)
        .take(2)
        .collect();
    assert_eq!(movers.len(), 2, "{members:?}, meta leader {meta}");

    let mut moved = Vec::new();
    for &id in &movers {
        c.terminate(id, Duration::from_secs(20)).await;
    }
    for &id in &movers {
        let old = c.nodes[c.index_of(id)].addr.clone();
        let new = c.restart_at_new_address(id).unwrap();
        assert_ne!(new, old);
        moved.push((id, old, new));
    }
    for (id, old, new) in &moved {
        let took = wait_followed(&c, &members, vol.id, *id, new).await.unwrap();
        eprintln!("node {id} moved {old} -> {new}: followed in {took:?}");
    }
    c.wait_replicas_healthy(&["moved2"], FOLLOW).await.unwrap();
    let off = WRITTEN;
    let took = write_piece(&client, "moved2", off, 0x5a).await;
    eprintln!("write after both moves served after {took:?}");
    crcs.insert(off, crc32fast::hash(&[0x5au8; PIECE as usize]));
    verify(&client, "moved2", &crcs).await;
}

/// Every node comes back on a new address at once (new pod IPs after a whole cluster
/// restarted): no meta leader can be elected at the old addresses, so the nodes find each
/// other through their seeds (`--join`, a headless Service's DNS name in the manifests;
/// here the new addresses themselves), then commit their new addresses as one node would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_moving_at_once_finds_the_others_through_the_seeds() {
    let mut c = ProcCluster::start(bin(), 3, &[]).unwrap();
    c.wait_ready(READY).await.unwrap();
    let client = c.client();
    let vol = create(&client, "all-moved", VOL_SIZE).await;
    let mut crcs = fill(&client, "all-moved", 9, WRITTEN).await;
    let old: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();

    for id in 1..=3 {
        c.kill9(id);
    }
    for node in c.nodes.iter_mut() {
        let mut addr: std::net::SocketAddr = node.addr.parse().unwrap();
        addr.set_port(cairn_storaged::testkit::free_port());
        node.addr = addr.to_string();
    }
    let seeds = c
        .nodes
        .iter()
        .map(|n| n.addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    for id in 1..=3 {
        let i = c.index_of(id);
        c.nodes[i].args = vec!["--join".into(), seeds.clone()];
        c.restart(id).unwrap();
    }
    let started = Instant::now();
    for id in 1..=3 {
        let new = c.nodes[c.index_of(id)].addr.clone();
        assert!(!old.contains(&new));
        if let Err(e) = wait_followed(&c, &[1, 2, 3], vol.id, id, &new).await {
            let logs: String = (1..=3).map(|id| c.log_of(id)).collect();
            panic!("node {id} not followed to {new}: {e}\n{logs}");
        }
    }
    eprintln!(
        "all three nodes moved: catalogue and memberships followed in {:?}",
        started.elapsed()
    );
    let logs: String = (1..=3).map(|id| c.log_of(id)).collect();
    assert!(
        logs.contains("peer found through the seeds away from its membership address"),
        "the nodes found each other through the seeds"
    );

    let client = c.client();
    let off = WRITTEN;
    write_piece(&client, "all-moved", off, 0x5a).await;
    crcs.insert(off, crc32fast::hash(&[0x5au8; PIECE as usize]));
    verify(&client, "all-moved", &crcs).await;
    c.wait_replicas_healthy(&["all-moved"], FOLLOW)
        .await
        .unwrap();
}
