//! Write fencing with real storaged processes: a writer holding a superseded publish
//! generation is refused by the volume's group, also after the group's leader is killed,
//! and a read-only publish never writes.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use cairn_storaged::testkit::ProcCluster;
use tonic::Code;

const MIB: u64 = 1 << 20;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_storaged"))
}

async fn create(client: &VolumeClient, name: &str) {
    client
        .create_volume(pb::CreateVolumeRequest {
            name: name.into(),
            size_bytes: 16 * MIB,
            replicas: 3,
            ..Default::default()
        })
        .await
        .expect("create volume");
}

/// Publishes `name` to `node`; returns the publish's generation.
async fn publish(client: &VolumeClient, name: &str, node: &str, readonly: bool) -> u64 {
    let v = client
        .publish_volume(pb::PublishVolumeRequest {
            name: name.into(),
            node_name: node.into(),
            readonly,
            multi_node: false,
        })
        .await
        .expect("publish");
    v.attachments
        .iter()
        .find(|a| a.node_name == node)
        .expect("the publish is recorded")
        .generation
}

fn pattern(byte: u8) -> Bytes {
    Bytes::from(vec![byte; 64 * 1024])
}

/// A publishes and writes, is unpublished without detaching, B publishes (after a kill
/// -9 of the group's leader, if `kill_leader`): A's writes are refused, B's data intact.
async fn stale_writer_is_refused(kill_leader: bool) {
    let mut cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client();
    let vol = if kill_leader { "fence-kill" } else { "fence" };
    create(&client, vol).await;

    let gen_a = publish(&client, vol, "node-1", false).await;
    assert!(gen_a > 0, "a publish gets a generation");
    assert_eq!(
        publish(&client, vol, "node-1", false).await,
        gen_a,
        "a repeated publish keeps its generation"
    );
    client.write_as(vol, 0, pattern(0xaa), gen_a).await.unwrap();
    client
        .unpublish_volume(vol, "node-1")
        .await
        .expect("unpublish");
    if kill_leader {
        let leader = cluster
            .volume_leader(vol, Duration::from_secs(10))
            .await
            .unwrap();
        cluster.kill9(leader);
    }
    let gen_b = publish(&client, vol, "node-2", false).await;
    assert!(gen_b > gen_a, "generations grow: {gen_a} then {gen_b}");
    client.write_as(vol, 0, pattern(0xbb), gen_b).await.unwrap();

    let refused = client
        .write_as(vol, 0, pattern(0xaa), gen_a)
        .await
        .expect_err("a superseded generation is refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains(&format!(
            "volume published to node-2 at generation {gen_b}; this writer holds {gen_a}"
        )),
        "{}",
        refused.message()
    );
    let data = client.read(vol, 0, 64 * 1024).await.unwrap();
    assert!(data.iter().all(|b| *b == 0xbb), "B's data is intact");
    // An unfenced admin write (generation 0) cannot write under B's publish (decision
    // 032); once B unpublishes, it goes through.
    let refused = client
        .write(vol, 64 * 1024, pattern(0xcc))
        .await
        .expect_err("an unfenced write under a publish is refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("holds no publish (generation 0)"),
        "{}",
        refused.message()
    );
    client
        .unpublish_volume(vol, "node-2")
        .await
        .expect("unpublish B");
    client.write(vol, 64 * 1024, pattern(0xcc)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_superseded_publish_cannot_write() {
    stale_writer_is_refused(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_superseded_publish_cannot_write_after_the_leader_is_killed() {
    stale_writer_is_refused(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_publish_refuses_writes() {
    let cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client();
    create(&client, "fence-ro").await;
    client.write("fence-ro", 0, pattern(0x11)).await.unwrap();
    let generation = publish(&client, "fence-ro", "node-3", true).await;
    let refused = client
        .write_as("fence-ro", 0, pattern(0x22), generation)
        .await
        .expect_err("a read-only publish does not write");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("read-only"), "{refused:?}");
    let data = client.read("fence-ro", 0, 64 * 1024).await.unwrap();
    assert!(data.iter().all(|b| *b == 0x11));
}
