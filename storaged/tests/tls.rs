//! Mutual TLS and authorization per API against real storaged processes: callers without
//! a certificate, with another CA's, or with the wrong identity are refused with the exact
//! code, and a forged Raft message from a non-member changes nothing.

use std::error::Error as _;
use std::path::Path;
use std::time::Duration;

use cairn_client::Security;
use cairn_proto::cairn::v1 as pb;
use cairn_storaged::raft::{AppendEntriesRequest, META_GROUP, Vote, encode};
use cairn_storaged::testkit::ProcCluster;
use cairn_storaged::tls::Identity;
use cairn_storaged::tls::certs::{self, Issue};
use pb::raft_service_client::RaftServiceClient;
use pb::volume_service_client::VolumeServiceClient;
use tonic::Code;
use tonic::transport::Channel;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_storaged"))
}

fn channel(security: &Security, addr: &str) -> Channel {
    security
        .endpoint(addr)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

async fn list_nodes(ch: Channel) -> Result<usize, tonic::Status> {
    let r = VolumeServiceClient::new(ch)
        .list_nodes(pb::ListNodesRequest::default())
        .await?;
    Ok(r.into_inner().nodes.len())
}

/// An empty AppendEntries (a heartbeat) whose vote names `leader` at `term`.
fn heartbeat(group: u64, term: u64, leader: u64) -> pb::RaftMessage {
    let rpc = AppendEntriesRequest {
        vote: Vote::new_committed(term, leader),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    pb::RaftMessage {
        group_id: group,
        payload: encode(&rpc).unwrap().into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_refused_by_certificate_and_identity() {
    let cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    // The volume API is served on the meta leader: ask it.
    let leader = cluster
        .client()
        .cluster_status()
        .await
        .unwrap()
        .meta_leader_id;
    let addr = cluster.node_addrs()[&leader].clone();

    // admin may use the volume API.
    let admin = cluster.security_for(&Identity::Admin);
    assert_eq!(list_nodes(channel(&admin, &addr)).await.unwrap(), 3);

    // No client certificate at all (plaintext): the server takes the h2 preface for a bad
    // TLS hello and drops the connection; the client sees a transport error (GOAWAY or a
    // broken pipe, depending on timing), never an answer.
    let err = list_nodes(channel(&Security::Insecure, &addr))
        .await
        .unwrap_err();
    assert!(err.source().is_some(), "not a transport failure: {err:?}");

    // A certificate from another CA: the handshake fails.
    let other = tempfile::tempdir().unwrap();
    certs::init_ca(&other.path().join("ca")).unwrap();
    let req = Issue {
        identity: Identity::Admin,
        ips: vec![],
        dns: vec![],
    };
    certs::issue(&other.path().join("ca"), &req, &other.path().join("admin")).unwrap();
    let stranger = Security::from_flags(Some(&other.path().join("admin")), false).unwrap();
    let err = list_nodes(channel(&stranger, &addr)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // A valid certificate with the wrong identity: PERMISSION_DENIED naming both.
    let csi = cluster.security_for(&Identity::CsiNode("node-1".into()));
    let err = RaftServiceClient::new(channel(&csi, &addr))
        .group_status(pb::RaftMessage {
            group_id: META_GROUP,
            payload: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("csi-node:node-1"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("RaftService"), "{}", err.message());
    // ... and the same node plugin may not create volumes.
    let err = VolumeServiceClient::new(channel(&csi, &addr))
        .create_volume(pb::CreateVolumeRequest {
            name: "nope".into(),
            size_bytes: 1 << 20,
            replicas: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let c = cluster.client();
    assert_eq!(
        c.get_volume("nope").await.unwrap_err().code(),
        Code::NotFound
    );

    // A node plugin may attach only on its own node.
    let addrs = cluster.node_addrs();
    let own = cairn_client::NodeClient::connect(&addrs[&1], &csi).unwrap();
    own.list_attachments().await.unwrap();
    let other_node = cairn_client::NodeClient::connect(&addrs[&2], &csi).unwrap();
    let err = other_node.list_attachments().await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_raft_messages_change_nothing() {
    let cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let c = cluster.client();
    let before = c.cluster_status().await.unwrap();
    let addr = cluster.nodes[0].addr.clone();
    let huge = before.term + 1_000;

    // node:9 is not a member: its (valid) certificate does not make it a leader.
    let nine = cluster.security_for(&Identity::Node(9));
    let err = RaftServiceClient::new(channel(&nine, &addr))
        .append_entries(heartbeat(META_GROUP, huge, 9))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("node 9"), "{}", err.message());

    // node:2's certificate cannot speak for node 3.
    let two = cluster.security_for(&Identity::Node(2));
    let err = RaftServiceClient::new(channel(&two, &addr))
        .append_entries(heartbeat(META_GROUP, huge, 3))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("node:2"), "{}", err.message());

    // Nothing changed: same leader, same term.
    let after = c.cluster_status().await.unwrap();
    assert_eq!(after.meta_leader_id, before.meta_leader_id);
    assert_eq!(after.term, before.term);
}
