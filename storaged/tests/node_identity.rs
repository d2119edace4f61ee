//! A node identity cannot be reused: a wiped member refuses to start rather than vote as
//! if it had promised nothing, and a data dir stamped for one node id refuses another.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cairn_proto::cairn::v1 as pb;
use cairn_storaged::testkit::ProcCluster;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_member_refuses_to_start_and_no_committed_write_is_lost() {
    let mut cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
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
