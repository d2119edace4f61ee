//! Zone spread with real storaged processes labelled `zone=…`: 3-replica volumes span every
//! zone they can (2 zones, 3 zones), a replacement after a node loss keeps the spread when
//! a node in the lost zone is free, and a volume that cannot be spread says so.

mod repair_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use cairn_storaged::testkit::ProcCluster;
use repair_support::{READY, bin, create, fill, member_not, verify, wait_whole};

const VOL_SIZE: u64 = 16 << 20;
const WRITTEN: u64 = 1 << 20;
const HEAL: Duration = Duration::from_secs(60);

/// One cluster at a time: the machine's cores are shared.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The zones of `v`'s members, `zones[i]` being node i+1's.
fn zones_of(v: &pb::Volume, zones: &[&str]) -> BTreeSet<String> {
    v.members
        .iter()
        .map(|m| zones[m.node_id as usize - 1].to_string())
        .collect()
}

async fn start(zones: &[&str]) -> ProcCluster {
    let c = ProcCluster::start_zoned(
        bin(),
        zones,
        &["--replica-down-timeout", "2s", "--snapshot-logs", "8"],
    )
    .unwrap();
    c.wait_ready(READY).await.unwrap();
    c
}

/// Creates and fills 3-replica volumes `names`, each spanning `spread` zones; their CRCs.
async fn create_spread(
    client: &VolumeClient,
    names: &[&'static str],
    zones: &[&str],
    spread: usize,
) -> BTreeMap<&'static str, BTreeMap<u64, u32>> {
    let mut crcs = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let v = create(client, name, VOL_SIZE).await;
        assert_eq!(zones_of(&v, zones).len(), spread, "{v:?}");
        let v = client.get_volume(name).await.unwrap();
        assert_eq!(v.zone_warning, "", "{v:?}");
        crcs.insert(*name, fill(client, name, 60 + i as u64, WRITTEN).await);
    }
    crcs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_zones_every_volume_spans_both_and_says_when_it_cannot() {
    let _serial = SERIAL.lock().await;
    // Three nodes in zone a: by capacity and id alone, a volume would sit in a only.
    let zones = ["a", "a", "a", "b"];
    let mut c = start(&zones).await;
    let client = c.client();
    let names = ["two-a", "two-b", "two-c"];
    let crcs = create_spread(&client, &names, &zones, 2).await;
    // Zone b's only node is lost (whoever leads the meta group then repairs): the
    // replacements can only go to zone a, and say so.
    c.kill9(4);
    wait_whole(&client, &names, 4, HEAL).await;
    for name in names {
        let v = client.get_volume(name).await.unwrap();
        assert_eq!(zones_of(&v, &zones).len(), 1, "{v:?}");
        assert!(
            v.zone_warning
                .starts_with("replicas span 1 of the cluster's 2 zones (a)"),
            "{v:?}"
        );
        verify(&client, name, &crcs[name]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_zones_one_replica_each_and_a_replacement_keeps_the_spread() {
    let _serial = SERIAL.lock().await;
    let zones = ["a", "a", "b", "b", "c", "c"];
    let mut c = start(&zones).await;
    let client = c.client();
    let names = ["three-a", "three-b", "three-c"];
    let crcs = create_spread(&client, &names, &zones, 3).await;
    // Lose a member of the first volume that does not lead the meta group.
    let meta = client.cluster_status().await.unwrap().meta_leader_id;
    let v = client.get_volume(names[0]).await.unwrap();
    let victim = member_not(&v, meta);
    let lost_zone = zones[victim as usize - 1];
    c.kill9(victim);
    wait_whole(&client, &names, victim, HEAL).await;
    for name in names {
        let v = client.get_volume(name).await.unwrap();
        assert_eq!(zones_of(&v, &zones).len(), 3, "{v:?}");
        assert_eq!(v.zone_warning, "", "{v:?}");
        verify(&client, name, &crcs[name]).await;
    }
    // The first volume's new member is the lost node's zone-mate.
    let v = client.get_volume(names[0]).await.unwrap();
    let mate = (1..=zones.len() as u64)
        .find(|n| *n != victim && zones[*n as usize - 1] == lost_zone)
        .unwrap();
    assert!(v.members.iter().any(|m| m.node_id == mate), "{v:?}");
}
