//! Peers by DNS name and node identity from the node (decision 030): a cluster named by
//! `localhost:PORT`, seed nodes that bootstrap once and keep their ids, a node that joins
//! under a fresh id, and a wiped node that never gets its old id back.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_proto::cairn::v1 as pb;
use cairn_storaged::identity::read_stamp;
use cairn_storaged::testkit::{Peers, ProcCluster, free_port};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_storaged"))
}

async fn create_and_write(c: &ProcCluster, name: &str, fill: u8) {
    let client = c.client().with_deadline(Duration::from_secs(20));
    client
        .create_volume(pb::CreateVolumeRequest {
            name: name.into(),
            size_bytes: 16 << 20,
            replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    c.wait_replicas_healthy(&[name], Duration::from_secs(60))
        .await
        .unwrap();
    client
        .write(name, 8192, vec![fill; 4096].into())
        .await
        .unwrap();
}

async fn read_back(c: &ProcCluster, name: &str) -> Vec<u8> {
    let client = c.client().with_deadline(Duration::from_secs(30));
    client.read(name, 8192, 4096).await.unwrap()
}

/// Waits (60 s at most) until the catalogue lists node `id` under `name`.
async fn wait_registered(client: &cairn_client::VolumeClient, id: u64, name: &str, what: &str) {
    eventually(Duration::from_secs(60), what, async || {
        let s = client.cluster_status().await.ok()?;
        s.nodes
            .iter()
            .any(|r| r.id == id && r.name == name)
            .then_some(())
    })
    .await;
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `within`.
async fn eventually<T>(within: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within {within:?}: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_named_by_dns_form_a_cluster_that_serves_a_volume() {
    let c = ProcCluster::start_with(bin(), 3, &[], Peers::Names).unwrap();
    c.wait_ready(Duration::from_secs(60)).await.unwrap();
    create_and_write(&c, "named", 7).await;
    assert_eq!(read_back(&c, "named").await, vec![7u8; 4096]);
    // Each node found its own entry by resolving it: none was refused as misnamed.
    for n in &c.nodes {
        assert!(!c.log_of(n.id).contains("resolves elsewhere"), "{}", n.name);
    }
}

/// Runs storaged with `args`; returns its output once it exits, or `None` (it is then
/// killed) if it still runs after `within`.
fn run_for(args: &[&str], within: Duration, log: &Path) -> Option<(i32, String)> {
    let out = std::fs::File::create(log).unwrap();
    let mut child = Command::new(bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Some((s.code().unwrap_or(-1), text));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn bad_peer_flags_are_refused_and_unresolved_names_are_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let log = dir.path().join("out.log");
    let listen = format!("127.0.0.1:{}", free_port());
    let base = ["--listen", &listen, "--data-dir", data, "--insecure"];
    let refused = |extra: &[&str], flag: &str| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (code, out) = run_for(&args, Duration::from_secs(20), &log)
            .unwrap_or_else(|| panic!("{extra:?} was not refused"));
        assert_ne!(code, 0, "{extra:?}");
        assert!(out.contains(&format!("--{flag}")), "{extra:?}: {out}");
    };
    refused(
        &["--node-id", "1", "--initial-cluster", "1=bad_host:1"],
        "initial-cluster",
    );
    refused(&["--node-id", "1", "--join", "localhost"], "join");
    refused(&["--initial-cluster", "1=localhost:1"], "initial-cluster");
    refused(&["--join", "localhost:1"], "node-name");
    refused(
        &[
            "--node-id",
            "1",
            "--join",
            "localhost:1",
            "--bootstrap-expect",
            "3",
        ],
        "bootstrap-expect",
    );
    // A name that does not resolve (yet) is retried, not fatal.
    let own = format!("1={}", "not-yet.invalid:7001");
    let args: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--node-id", "1", "--initial-cluster", &own])
        .collect();
    assert!(
        run_for(&args, Duration::from_secs(3), &log).is_none(),
        "storaged exited on a name that does not resolve"
    );
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(
        out.contains("does not resolve yet") && out.contains("not-yet.invalid:7001"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_nodes_bootstrap_once_keep_their_identity_and_a_later_node_joins() {
    let mut c = ProcCluster::start_with(bin(), 3, &[], Peers::Seeds).unwrap();
    c.wait_ready(Duration::from_secs(90)).await.unwrap();
    // Every node chose the id its address ranks at, and all chose the same voters.
    let stamps: Vec<_> = (0..3)
        .map(|i| read_stamp(&c.nodes[i].data_dir).unwrap().expect("stamped"))
        .collect();
    for (i, s) in stamps.iter().enumerate() {
        assert_eq!(s.node_id, c.nodes[i].id, "{}", c.nodes[i].name);
        assert_eq!(s.initial_cluster, stamps[0].initial_cluster);
        assert_eq!(s.initial_cluster[&s.node_id], c.nodes[i].addr);
    }
    let status = c.client().cluster_status().await.unwrap();
    for n in &c.nodes {
        let rec = status
            .nodes
            .iter()
            .find(|r| r.id == n.id)
            .expect("registered");
        assert_eq!(rec.name, n.name);
    }
    create_and_write(&c, "seeded", 9).await;

    // A later node with the same flags joins under a fresh id, far from the first ones.
    let i = c.add_seed_node().unwrap();
    let fresh = c
        .adopt_stamped_id(i, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(fresh >= 1 << 32, "fresh id {fresh}");
    let client = c.client();
    wait_registered(&client, fresh, &c.nodes[i].name, "the new node registered").await;

    // A restarted voter keeps its id (from its stamp, whatever the seeds say now) and data:
    // with another voter down, the meta group and the volume need it to answer.
    let (kept, other) = (c.nodes[0].id, c.nodes[1].id);
    c.restart(kept).unwrap();
    c.wait_replicas_healthy(&["seeded"], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(c.stamped_id(0), Some(kept));
    assert!(c.log_of(kept).contains("node id from the data dir's stamp"));
    c.kill9(other);
    assert_eq!(read_back(&c, "seeded").await, vec![9u8; 4096]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_seed_node_never_gets_its_old_identity_back() {
    let mut c = ProcCluster::start_with(bin(), 3, &[], Peers::Seeds).unwrap();
    c.wait_ready(Duration::from_secs(90)).await.unwrap();
    let i = c.index_of(3);
    c.kill9(3);
    ProcCluster::wipe(&c.nodes[i].data_dir);
    c.restart(3).unwrap();
    let fresh = c
        .adopt_stamped_id(i, Duration::from_secs(60))
        .await
        .unwrap();
    assert_ne!(fresh, 3, "a wiped node took its old id back");
    // Its name still belongs to node 3: registration is refused, and the leader's messages
    // for node 3, arriving at this address, are refused rather than answered.
    eventually(
        Duration::from_secs(30),
        "registration refused",
        async || {
            let log = c.log_of(fresh);
            let refused = log.contains("Raft message for another node id at this address");
            (log.contains("belongs to node 3") && refused).then_some(())
        },
    )
    .await;
    let client = c.client();
    let status = client.cluster_status().await.unwrap();
    assert!(status.nodes.iter().all(|r| r.id != fresh));
    assert!(status.nodes.iter().any(|r| r.id == 3));
    // Once the operator removes node 3, the node registers under its new id.
    client.remove_node(3).await.unwrap();
    wait_registered(&client, fresh, &c.nodes[i].name, "the new id registered").await;
}
