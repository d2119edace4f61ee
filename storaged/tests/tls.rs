//! Mutual TLS and authorization per API against real storaged processes: callers without
//! a certificate, with another CA's, or with the wrong identity are refused with the exact
//! code, a forged Raft message from a non-member changes nothing, and certificates rotated
//! on disk are used by new connections without a restart.

use std::error::Error as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::Security;
use cairn_client::reload::Reloading;
use cairn_proto::cairn::v1 as pb;
use cairn_storaged::raft::{AppendEntriesRequest, META_GROUP, Vote, encode};
use cairn_storaged::testkit::ProcCluster;
use cairn_storaged::tls::Identity;
use cairn_storaged::tls::certs::{self, Issue};
use pb::raft_service_client::RaftServiceClient;
use pb::volume_service_client::VolumeServiceClient;
use tokio_rustls::rustls::pki_types::ServerName;
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

    // node:9 is not a member: its (valid) certificate does not make it a leader, not even
    // on a node that started empty and has not heard from the meta leader yet (sent to
    // every node right after the cluster is ready, when a late joiner may be in that window).
    let nine = cluster.security_for(&Identity::Node(9));
    for node in &cluster.nodes {
        let err = RaftServiceClient::new(channel(&nine, &node.addr))
            .append_entries(heartbeat(META_GROUP, huge, 9))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "node {}: {err:?}",
            node.id
        );
        assert!(err.message().contains("node 9"), "{}", err.message());
    }

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

/// The first certificate of a PEM file, DER.
fn first_cert(path: &Path) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// The certificate the server at `addr` presents on a new connection, to a client holding
/// `tls` (the handshake verifies it against the cluster CA).
async fn presented(tls: &Arc<Reloading>, addr: &str) -> Vec<u8> {
    let config = cairn_client::reload::client_config(tls).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(cairn_client::SERVER_NAME).unwrap();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    conn.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Issues a new certificate for `identity` and moves it into `dir` file by file, as a
/// Secret update lands; the new certificate, DER.
fn rotate(cluster: &ProcCluster, identity: Identity, dir: &Path) -> Vec<u8> {
    let scratch = tempfile::tempdir().unwrap();
    let req = Issue {
        identity,
        ips: vec![],
        dns: vec![],
    };
    certs::issue(&cluster.ca_dir(), &req, scratch.path()).unwrap();
    for f in ["tls.key", "tls.crt"] {
        std::fs::rename(scratch.path().join(f), dir.join(f)).unwrap();
    }
    first_cert(&dir.join("tls.crt"))
}

/// Polls `f` until it returns `want` (bounded); every other answer must be `old`.
async fn until_rotated<F: AsyncFnMut() -> Vec<u8>>(mut f: F, old: &[u8], want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = f().await;
        if got == want {
            return;
        }
        assert_eq!(got, old, "neither the old certificate nor the new one");
        assert!(
            Instant::now() < deadline,
            "the new certificate is not used after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_used_without_a_restart() {
    let cluster = ProcCluster::start(bin(), 1, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let addr = cluster.node_addrs()[&1].clone();
    let admin_dir = cluster.tls_dir(&Identity::Admin).unwrap();
    let admin = Arc::new(Reloading::load(&admin_dir).unwrap());

    // The server: a new handshake presents the certificate now in node 1's --tls-dir.
    let node_dir = cluster.tls_dir(&Identity::Node(1)).unwrap();
    let old = first_cert(&node_dir.join("tls.crt"));
    assert_eq!(presented(&admin, &addr).await, old);
    let new = rotate(&cluster, Identity::Node(1), &node_dir);
    assert_ne!(new, old, "a new certificate (new key, new serial)");
    until_rotated(async || presented(&admin, &addr).await, &old, &new).await;
    let client =
        cairn_client::VolumeClient::new(vec![addr.clone()], Security::Tls(admin.clone())).unwrap();
    assert_eq!(
        client.list_nodes().await.unwrap().len(),
        1,
        "the node serves on"
    );

    // The client: a new connection of the same process presents its new certificate.
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let node_tls = Arc::new(Reloading::load(&node_dir).unwrap());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        cairn_client::reload::server_config(&node_tls).unwrap(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let recorder = listener.local_addr().unwrap().to_string();
    let record = seen.clone();
    let server = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            if let Ok(conn) = acceptor.accept(tcp).await
                && let Some(certs) = conn.get_ref().1.peer_certificates()
            {
                record.lock().unwrap().push(certs[0].to_vec());
            }
        }
    });
    let security = Security::Tls(admin.clone());
    let mut client_cert = async || {
        let n = seen.lock().unwrap().len();
        let ch = security.channel(&recorder, |e| e).unwrap();
        // Not a gRPC server: the call fails, after the handshake the recorder saw.
        let _ = VolumeServiceClient::new(ch)
            .list_nodes(pb::ListNodesRequest::default())
            .await;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), n + 1, "one handshake per new channel");
        seen[n].clone()
    };
    let old = first_cert(&admin_dir.join("tls.crt"));
    assert_eq!(client_cert().await, old);
    let new = rotate(&cluster, Identity::Admin, &admin_dir);
    until_rotated(&mut client_cert, &old, &new).await;
    server.abort();
}
