//! Exactly-once block writes with real storaged processes: a write resent under its write
//! identity after other writers wrote the block is not applied again, also by a new leader.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use cairn_storaged::testkit::ProcCluster;
use cairn_storaged::tls::Identity;
use pb::block_service_client::BlockServiceClient;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_storaged"))
}

fn block(byte: u8) -> Bytes {
    Bytes::from(vec![byte; 4096])
}

/// Sends `req` as it is (the same write identity every time) to whichever node leads.
async fn send_raw(cluster: &ProcCluster, req: &pb::WriteRequest) {
    let security = cluster.security_for(&Identity::Admin);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        for addr in cluster.addrs() {
            let Ok(ch) = security.endpoint(&addr).unwrap().connect().await else {
                continue;
            };
            match BlockServiceClient::new(ch).write(req.clone()).await {
                Ok(_) => return,
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        // Waiting out an election: the next round asks every node again.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader took the write within 20 s: {last}");
}

async fn first_byte(client: &VolumeClient, vol: &str) -> u8 {
    client.read(vol, 0, 4096).await.expect("read")[0]
}

/// The chaos runner's interleaving (seed 11): client 1's write applied, clients 2 and 3
/// overwrite the block, then client 1's resend arrives: the block keeps client 3's value,
/// on the leader and, after a kill -9 of it, on the new one. Without an identity
/// (client 0, an older caller) the resend lands again: the test can tell the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_write_is_not_applied_again_after_other_writers_or_a_failover() {
    let mut cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let client = cluster.client();
    let vol = "once";
    client
        .create_volume(pb::CreateVolumeRequest {
            name: vol.into(),
            size_bytes: 1 << 20,
            replicas: 3,
            ..Default::default()
        })
        .await
        .expect("create volume");
    let a = |client_id: u64| pb::WriteRequest {
        volume: vol.into(),
        offset: 0,
        data: block(0x60),
        generation: 0,
        client_id,
        seq: 5,
        first_incomplete: 5,
    };
    let others = cluster.client();

    send_raw(&cluster, &a(77)).await;
    assert_eq!(first_byte(&client, vol).await, 0x60);
    others.write(vol, 0, block(0x67)).await.unwrap();
    client.write(vol, 0, block(0x70)).await.unwrap();
    send_raw(&cluster, &a(77)).await;
    assert_eq!(first_byte(&client, vol).await, 0x70, "the resend applied");

    let leader = cluster
        .volume_leader(vol, Duration::from_secs(10))
        .await
        .unwrap();
    cluster.kill9(leader);
    send_raw(&cluster, &a(77)).await;
    assert_eq!(
        first_byte(&client, vol).await,
        0x70,
        "the new leader applied the resend"
    );

    // The control: the same resend without an identity is applied again.
    send_raw(&cluster, &a(0)).await;
    client.write(vol, 0, block(0x70)).await.unwrap();
    send_raw(&cluster, &a(0)).await;
    assert_eq!(first_byte(&client, vol).await, 0x60);
}
