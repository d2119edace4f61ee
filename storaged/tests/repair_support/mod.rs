//! Shared fixtures for the repair and rebuild tests: volumes filled with random data and
//! checked by CRC, and waits until a volume is whole again, over a `ProcCluster`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use cairn_storaged::testkit::ProcCluster;
use cairn_storaged::tls::Identity;
use rand::{Rng, SeedableRng};

pub const PIECE: u64 = 256 << 10;
pub const READY: Duration = Duration::from_secs(30);

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_storaged"))
}

/// cairnctl with the cluster's `admin` certificate.
pub fn cairnctl(c: &ProcCluster, endpoint: &str, args: &[&str]) -> std::process::Output {
    let tls = c.tls_dir(&Identity::Admin).expect("an admin certificate");
    std::process::Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(["--endpoint", endpoint])
        .arg("--tls-dir")
        .arg(tls)
        .args(args)
        .output()
        .expect("run cairnctl")
}

/// A 3-replica volume of `size` bytes.
pub async fn create(client: &VolumeClient, name: &str, size: u64) -> pb::Volume {
    client
        .create_volume(pb::CreateVolumeRequest {
            name: name.into(),
            size_bytes: size,
            replicas: 3,
            ..Default::default()
        })
        .await
        .expect("create volume")
}

/// Writes `written` bytes of random data to `vol`; the CRC of each piece by offset.
/// Retries (bounded) while the group elects its first leader.
pub async fn fill(client: &VolumeClient, vol: &str, seed: u64, written: u64) -> BTreeMap<u64, u32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut crcs = BTreeMap::new();
    for off in (0..written).step_by(PIECE as usize) {
        let mut data = vec![0u8; PIECE as usize];
        rng.fill(&mut data[..]);
        crcs.insert(off, crc32fast::hash(&data));
        let data = bytes::Bytes::from(data);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match client.write(vol, off, data.clone()).await {
                Ok(()) => break,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("write {vol}@{off}: {e}"),
            }
        }
    }
    crcs
}

/// Every piece of `vol` reads back with its CRC (reads retried while a leader is elected).
pub async fn verify(client: &VolumeClient, vol: &str, crcs: &BTreeMap<u64, u32>) {
    for (off, crc) in crcs {
        let deadline = Instant::now() + Duration::from_secs(15);
        let data = loop {
            match client.read(vol, *off, PIECE as u32).await {
                Ok(d) => break d,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("read {vol}@{off}: {e}"),
            }
        };
        assert_eq!(crc32fast::hash(&data), *crc, "{vol}@{off}: wrong contents");
    }
}

/// `name` summed over every running node (0 where a node reports none).
pub async fn total_metric(c: &ProcCluster, name: &str) -> f64 {
    let mut total = 0.0;
    for id in c.nodes.iter().map(|n| n.id).filter(|id| c.is_running(*id)) {
        total += c.metric_sum(id, name).await.unwrap_or(0.0);
    }
    total
}

/// A member of `v` other than node `meta` (a meta leader cannot remove itself).
pub fn member_not(v: &pb::Volume, meta: u64) -> u64 {
    v.members
        .iter()
        .map(|m| m.node_id)
        .find(|id| *id != meta)
        .expect("a member besides the meta leader")
}

/// Whole: healthy, three members, none on `gone`, every one leader or follower.
pub fn whole(v: &pb::Volume, gone: u64) -> bool {
    v.health() == pb::VolumeHealth::Healthy
        && v.members.len() == 3
        && v.members.iter().all(|m| {
            m.node_id != gone
                && matches!(
                    m.state(),
                    pb::ReplicaState::Leader | pb::ReplicaState::Follower
                )
        })
}

/// Polls until every volume in `names` is whole without node `gone`, within `within`;
/// returns how long it took and whether each was seen degraded on the way.
pub async fn wait_whole(
    client: &VolumeClient,
    names: &[&str],
    gone: u64,
    within: Duration,
) -> (Duration, BTreeMap<String, bool>) {
    let started = Instant::now();
    let mut degraded: BTreeMap<String, bool> =
        names.iter().map(|n| (n.to_string(), false)).collect();
    let mut last = String::new();
    while started.elapsed() < within {
        let mut all = true;
        for name in names {
            match client.get_volume(name).await {
                Ok(v) => {
                    if v.health() == pb::VolumeHealth::Degraded {
                        degraded.insert(name.to_string(), true);
                    }
                    if !whole(&v, gone) {
                        all = false;
                        last = format!(
                            "{name}: {} {:?}",
                            v.health().word(),
                            v.members
                                .iter()
                                .map(|m| (m.node_id, m.state().word(), m.matched_index))
                                .collect::<Vec<_>>()
                        );
                    }
                }
                Err(e) => {
                    all = false;
                    last = format!("{name}: {}", e.message());
                }
            }
        }
        if all {
            return (started.elapsed(), degraded);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("volumes not whole without node {gone} within {within:?}: {last}");
}

/// A 1-replica volume on node `node` (its only copy: only that node can serve it).
pub async fn create_on(client: &VolumeClient, name: &str, node: &str, size: u64) -> pb::Volume {
    let term = pb::TopologyTerm {
        segments: [("topology.cairn.dev/node".to_string(), node.to_string())].into(),
    };
    client
        .create_volume(pb::CreateVolumeRequest {
            name: name.into(),
            size_bytes: size,
            replicas: 1,
            requisite: vec![term],
            ..Default::default()
        })
        .await
        .expect("create a 1-replica volume")
}

/// Polls GetVolume until `pred` holds (bounded); the volume as last seen.
pub async fn wait_volume(
    client: &VolumeClient,
    name: &str,
    within: Duration,
    pred: impl Fn(&pb::Volume) -> bool,
) -> pb::Volume {
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(v) = client.get_volume(name).await {
            if pred(&v) {
                return v;
            }
            last = Some(v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("volume {name} not as expected within {within:?}: {last:?}");
}

pub fn member(v: &pb::Volume, node: u64) -> &pb::Replica {
    v.members
        .iter()
        .find(|m| m.node_id == node)
        .unwrap_or_else(|| panic!("node {node} is not a member of {v:?}"))
}

/// Polls until a line of node `id`'s log satisfies `cond` (bounded by `within`).
pub async fn wait_log(
    c: &ProcCluster,
    id: u64,
    what: &str,
    within: Duration,
    cond: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + within;
    while !c.log_of(id).lines().any(&cond) {
        assert!(
            Instant::now() < deadline,
            "node {id}'s log never showed {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Spool files of `group` left in the snapshot directory of data dir `data_dir`.
pub fn spool_files(data_dir: &Path, group: u64) -> usize {
    let prefix = format!("g{group}-");
    std::fs::read_dir(data_dir.join("snapshots"))
        .expect("the snapshot directory")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .count()
}
