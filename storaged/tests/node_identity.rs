//! A node identity cannot be reused: a wiped member refuses to start rather than vote as
//! if it had promised nothing, and a data dir stamped for one node id refuses another.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use cairn_storaged::identity;
use cairn_storaged::node::status;
use cairn_storaged::raft::{ChannelCache, META_GROUP};
use cairn_storaged::testkit::ProcCluster;
use cairn_storaged::tls::Identity;

const VOL: &str = "ident";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_storaged"))
}

/// Runs storaged with `args` until it exits (bounded); its exit status and output.
fn run_to_exit(args: &[String], log: &Path) -> (ExitStatus, String) {
    let out = std::fs::File::create(log).unwrap();
    let mut child = Command::new(bin())
        .args(args)
        .env("RUST_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "storaged {args:?} still runs after 60 s:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(log).unwrap_or_default())
}

fn node_args(cluster: &ProcCluster, id: u64, data_dir: &Path) -> Vec<String> {
    let addrs = cluster.node_addrs();
    let initial = addrs
        .iter()
        .map(|(id, a)| format!("{id}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        "--node-id".into(),
        id.to_string(),
        "--listen".into(),
        addrs[&id].clone(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--initial-cluster".into(),
        initial,
        "--capacity".into(),
        "64GiB".into(),
        "--tls-dir".into(),
        cluster
            .tls_dir(&cairn_storaged::tls::Identity::Node(id))
            .unwrap()
            .display()
            .to_string(),
    ]
}

/// A ready 3-node cluster holding `VOL` (3 replicas), and an admin client.
async fn cluster_with_volume() -> (ProcCluster, VolumeClient) {
    let cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let client = cluster.client().with_deadline(Duration::from_secs(20));
    client
        .create_volume(pb::CreateVolumeRequest {
            name: VOL.into(),
            size_bytes: 16 << 20,
            replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    (cluster, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_member_refuses_to_start_and_no_committed_write_is_lost() {
    let (mut cluster, client) = cluster_with_volume().await;
    cluster
        .wait_replicas_healthy(&[VOL], Duration::from_secs(30))
        .await
        .unwrap();
    client.write(VOL, 0, vec![1u8; 4096].into()).await.unwrap();

    // Node 1 is paused: the next writes commit on nodes 2 and 3 only.
    cluster.pause(1, true);
    for i in 1..8u64 {
        client
            .write(VOL, i * 4096, vec![i as u8 + 1; 4096].into())
            .await
            .unwrap();
    }

    // Node 2's data dir is stamped for node 2: started as node 3, it is refused.
    cluster.kill9(2);
    let dir2 = cluster.nodes[cluster.index_of(2)].dir.clone();
    let scratch = tempfile::tempdir().unwrap();
    let (status, log) = run_to_exit(
        &node_args(&cluster, 3, &dir2),
        &scratch.path().join("wrong-id.log"),
    );
    assert!(!status.success(), "{log}");
    assert!(log.contains("belongs to node 2"), "{log}");

    // Wiped, node 2 refuses to start under its old id (node 3 knows it as a member).
    ProcCluster::wipe(&dir2);
    let (status, log) = run_to_exit(
        &node_args(&cluster, 2, &dir2),
        &scratch.path().join("wiped.log"),
    );
    assert!(!status.success(), "a wiped member must not start:\n{log}");
    assert!(
        log.contains("is a member of the cluster") && log.contains("cairnctl node remove"),
        "{log}"
    );
    assert!(
        !dir2.join("IDENTITY").exists(),
        "a refused start stamps nothing"
    );

    // The last original holding the writes goes; node 1 (which lacks them) comes back.
    cluster.kill9(3);
    cluster.pause(1, false);
    let short = cluster.client().with_deadline(Duration::from_secs(3));
    for i in 0..8u64 {
        match short.read(VOL, i * 4096, 4096).await {
            Err(_) => {}
            Ok(got) => assert_eq!(
                got,
                vec![i as u8 + 1; 4096],
                "block {i}: the cluster answered a state that lacks a committed write"
            ),
        }
    }
    assert!(
        short.write(VOL, 0, vec![0xee; 4096].into()).await.is_err(),
        "one live member of three must not commit"
    );

    // The original returns: every write reads back.
    cluster.restart(3).unwrap();
    let client = cluster.client().with_deadline(Duration::from_secs(30));
    for i in 0..8u64 {
        assert_eq!(
            client.read(VOL, i * 4096, 4096).await.unwrap(),
            vec![i as u8 + 1; 4096],
            "block {i}"
        );
    }
}

/// Waits (bounded) until `log` contains `text`, or the process exits; whether it did.
fn wait_for_log(child: &mut std::process::Child, log: &Path, text: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(text)
        {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains(text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Waits (bounded) for `child` to exit; its status.
fn wait_exit(child: &mut std::process::Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Polls until node `asked`'s view of the meta group knows node `id` (bounded).
async fn knows_within(cluster: &ProcCluster, asked: u64, id: u64, within: Duration) -> bool {
    let addr = cluster.nodes[cluster.index_of(asked)].addr.clone();
    let channels = ChannelCache::new(cluster.security_for(&Identity::Node(asked)));
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = status::ask(&channels, &addr, META_GROUP, Duration::from_secs(1)).await
            && identity::knows(&s, id)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_clusters_dir_is_refused_and_a_wiped_member_never_bootstraps_alone() {
    let (mut cluster, client) = cluster_with_volume().await;
    client.write(VOL, 0, vec![7u8; 4096].into()).await.unwrap();
    // Node 3 is the peer that refuses the wiped node 2 below, so it must know node 2 first:
    // a node that started empty learns the catalogue from the meta leader a moment later.
    assert!(
        knows_within(&cluster, 3, 2, Duration::from_secs(30)).await,
        "node 3's meta group never learnt node 2:\n{}",
        cluster.log_of(3)
    );
    let dir2 = cluster.nodes[cluster.index_of(2)].dir.clone();
    let stamp = std::fs::read_to_string(dir2.join("IDENTITY")).unwrap();
    assert!(
        stamp.contains("\"cluster\""),
        "the stamp names the cluster: {stamp}"
    );

    // Node 2's data dir started with another cluster's CA: refused, the stamp unchanged.
    cluster.kill9(2);
    let scratch = tempfile::tempdir().unwrap();
    let other_ca = scratch.path().join("other-ca");
    let other_tls = scratch.path().join("other-node-2");
    cairn_storaged::tls::certs::init_ca(&other_ca).unwrap();
    let req = cairn_storaged::tls::certs::Issue {
        identity: cairn_storaged::tls::Identity::Node(2),
        ips: vec![],
        dns: vec![],
    };
    cairn_storaged::tls::certs::issue(&other_ca, &req, &other_tls).unwrap();
    let mut args = node_args(&cluster, 2, &dir2);
    *args.last_mut().unwrap() = other_tls.display().to_string();
    let (status, log) = run_to_exit(&args, &scratch.path().join("foreign.log"));
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("belongs to cluster") && log.contains("--tls-dir's CA is cluster"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(dir2.join("IDENTITY")).unwrap(),
        stamp
    );

    // Wiped, with every peer down: node 2 waits and initializes nothing.
    ProcCluster::wipe(&dir2);
    cluster.kill9(1);
    cluster.kill9(3);
    let log_path = scratch.path().join("wiped-alone.log");
    let out = std::fs::File::create(&log_path).unwrap();
    let mut wiped = Command::new(bin())
        .args(node_args(&cluster, 2, &dir2))
        .env("RUST_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let waiting = wait_for_log(
        &mut wiped,
        &log_path,
        "never bootstraps alone",
        Duration::from_secs(30),
    );
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(waiting, "a wiped member alone must wait:\n{log}");
    assert!(
        wiped.try_wait().unwrap().is_none(),
        "it waits, running:\n{log}"
    );
    assert!(!log.contains("bootstrapping"), "{log}");
    assert!(
        !dir2.join("IDENTITY").exists(),
        "a waiting start stamps nothing"
    );

    // A peer that knows node 2 returns: the wiped node refuses and exits.
    cluster.restart(3).unwrap();
    let status = wait_exit(&mut wiped, Duration::from_secs(60));
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    assert!(log.contains("is a member of the cluster"), "{log}");
    assert!(
        !dir2.join("IDENTITY").exists(),
        "a refused start stamps nothing"
    );

    // Nodes 1 and 3 serve the write; nothing was lost.
    cluster.restart(1).unwrap();
    let client = cluster.client().with_deadline(Duration::from_secs(30));
    assert_eq!(
        client.read(VOL, 0, 4096).await.unwrap(),
        vec![7u8; 4096],
        "the write reads back"
    );
}

/// Initial voters that stamped their data dirs and lost their Raft state (a crash between the
/// stamp and `initialize`, or state removed by hand) must still answer each other's probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stamped_voters_without_raft_state_answer_each_others_probes_and_bootstrap() {
    let mut cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    for id in 1..=3 {
        cluster.kill9(id);
    }
    for id in 1..=3 {
        let dir = cluster.nodes[cluster.index_of(id)].dir.clone();
        assert!(dir.join("IDENTITY").exists(), "node {id} was stamped");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n == "IDENTITY") {
                continue;
            }
            if path.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }
    for id in 1..=3 {
        cluster.restart(id).unwrap();
    }
    let formed = cluster.wait_ready(Duration::from_secs(60)).await;
    let logs: String = (1..=3).map(|id| cluster.log_of(id)).collect();
    assert!(
        formed.is_ok(),
        "stamped empty voters never formed a cluster ({formed:?}):\n{logs}"
    );
}
