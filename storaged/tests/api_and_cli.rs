//! The volume API and `cairnctl` against real storaged processes: block
//! semantics, every bad input with its exact code (and no state change), node join/leave.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_proto::cairn::v1 as pb;
use cairn_storaged::testkit::{ProcCluster, free_port};
use cairn_storaged::tls::Identity;
use tonic::Code;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_storaged"))
}

fn create(name: &str, size: u64, replicas: u32) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.into(),
        size_bytes: size,
        replicas,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_semantics_and_bad_input() {
    let cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let c = cluster.client();
    let v = c.create_volume(create("vol1", 8 << 20, 3)).await.unwrap();
    assert_eq!(v.size_bytes, 8 << 20);
    assert_eq!(v.members.len(), 3);
    // Idempotent create returns the same volume.
    assert_eq!(
        c.create_volume(create("vol1", 8 << 20, 3))
            .await
            .unwrap()
            .id,
        v.id
    );

    // Thin: never-written ranges read as zeros.
    assert_eq!(
        c.read("vol1", 1 << 20, 8192).await.unwrap(),
        vec![0u8; 8192]
    );
    // 512-byte granularity, read-modify-write inside a chunk.
    c.write("vol1", 512, vec![1u8; 1024].into()).await.unwrap();
    let got = c.read("vol1", 0, 4096).await.unwrap();
    assert_eq!(&got[..512], &[0u8; 512][..]);
    assert_eq!(&got[512..1536], &[1u8; 1024][..]);
    assert_eq!(&got[1536..], &vec![0u8; 4096 - 1536][..]);
    // 1 MiB writes, discard, flush.
    c.write("vol1", 1 << 20, vec![9u8; 1 << 20].into())
        .await
        .unwrap();
    c.discard("vol1", (1 << 20) + 4096, 8192).await.unwrap();
    let got = c.read("vol1", 1 << 20, 16384).await.unwrap();
    assert_eq!(&got[..4096], &[9u8; 4096][..]);
    assert_eq!(&got[4096..12288], &[0u8; 8192][..]);
    assert_eq!(&got[12288..], &[9u8; 4096][..]);
    c.flush("vol1").await.unwrap();

    // Bad input: exact codes, and nothing changes.
    let code = |r: Result<pb::Volume, tonic::Status>| r.unwrap_err();
    let e = code(c.create_volume(create("", 1 << 20, 3)).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("`name`"), "{}", e.message());
    let e = code(c.create_volume(create("bad", 1000, 3)).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("size_bytes"), "{}", e.message());
    let e = code(c.create_volume(create("bad", 1 << 20, 9)).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("replicas"));
    assert_eq!(
        code(c.create_volume(create("vol1", 16 << 20, 3)).await).code(),
        Code::AlreadyExists
    );
    assert_eq!(
        code(c.create_volume(create("vol1", 8 << 20, 1)).await).code(),
        Code::AlreadyExists
    );
    assert_eq!(
        code(c.create_volume(create("big", 1 << 20, 5)).await).code(),
        Code::ResourceExhausted
    );
    assert_eq!(code(c.get_volume("nope").await).code(), Code::NotFound);
    assert_eq!(
        code(c.resize_volume("vol1", 4 << 20).await).code(),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.resize_volume("nope", 16 << 20).await).code(),
        Code::NotFound
    );
    assert_eq!(
        c.delete_volume("nope").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        c.write("vol1", 8 << 20, vec![1u8; 512].into())
            .await
            .unwrap_err()
            .code(),
        Code::OutOfRange
    );
    assert_eq!(
        c.write("vol1", 100, vec![1u8; 512].into())
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.write("vol1", 0, vec![1u8; 100].into())
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.write("vol1", 0, vec![1u8; 2 << 20].into())
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.read("vol1", 0, 3 << 20).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.read("nope", 0, 512).await.unwrap_err().code(),
        Code::NotFound
    );
    let after = c.get_volume("vol1").await.unwrap();
    assert_eq!(
        (after.size_bytes, after.replicas),
        (8 << 20, 3),
        "bad input changed nothing"
    );
    assert_eq!(
        c.list_all_volumes().await.unwrap().len(),
        1,
        "no volume was created by bad input"
    );
    assert_eq!(
        c.read("vol1", 1 << 20, 4096).await.unwrap(),
        vec![9u8; 4096],
        "data untouched"
    );

    // Grow only; data survives the resize.
    let grown = c.resize_volume("vol1", 16 << 20).await.unwrap();
    assert_eq!(grown.size_bytes, 16 << 20);
    c.write("vol1", 12 << 20, vec![5u8; 4096].into())
        .await
        .unwrap();
    assert_eq!(
        c.read("vol1", 1 << 20, 4096).await.unwrap(),
        vec![9u8; 4096]
    );

    // Pagination.
    for i in 0..5 {
        c.create_volume(create(&format!("page-{i}"), 1 << 20, 1))
            .await
            .unwrap();
    }
    let p1 = c.list_volumes(4, "").await.unwrap();
    assert_eq!(p1.volumes.len(), 4);
    assert!(!p1.next_page_token.is_empty());
    let p2 = c.list_volumes(4, &p1.next_page_token).await.unwrap();
    assert_eq!(p2.volumes.len(), 2);
    assert!(p2.next_page_token.is_empty());
    assert_eq!(
        c.list_volumes(4, "garbage").await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // Health from the members: "healthy" once every replica answers as leader or
    // caught-up follower. Right after the writes a member may briefly be neither (a
    // status call timing out on the busy cores, an election), so wait for it, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let v = c.get_volume("vol1").await.unwrap();
        if v.health() == pb::VolumeHealth::Healthy || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(v.health(), pb::VolumeHealth::Healthy, "{v:?}");
    assert!(
        v.members
            .iter()
            .any(|m| m.state() == pb::ReplicaState::Leader)
    );

    // Delete removes it everywhere.
    c.delete_volume("vol1").await.unwrap();
    assert_eq!(
        c.get_volume("vol1").await.unwrap_err().code(),
        Code::NotFound
    );
}

/// Runs cairnctl against `cluster` as `admin`.
fn cairnctl(cluster: &ProcCluster, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cairnctl"))
        .args(["--endpoint", &cluster.addrs().join(",")])
        .arg("--tls-dir")
        .arg(cluster.tls_dir(&Identity::Admin).unwrap())
        .args(args)
        .output()
        .expect("run cairnctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairnctl_volumes_io_and_node_join_leave() {
    let cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let ep = cluster.addrs().join(",");
    let ok = |o: &std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr))
    };

    ok(&cairnctl(
        &cluster,
        &[
            "volume",
            "create",
            "cli",
            "--size",
            "4MiB",
            "--replicas",
            "3",
        ],
    ));
    let out = cairnctl(&cluster, &["-o", "json", "volume", "get", "cli"]);
    ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["size_bytes"], 4 << 20);
    assert_eq!(v["replicas"], 3);

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let payload: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&input, &payload).unwrap();
    ok(&cairnctl(
        &cluster,
        &[
            "volume",
            "write",
            "cli",
            "--offset",
            "4096",
            "--file",
            input.to_str().unwrap(),
        ],
    ));
    let out = cairnctl(
        &cluster,
        &[
            "volume", "read", "cli", "--offset", "4096", "--length", "8192",
        ],
    );
    ok(&out);
    assert_eq!(out.stdout, payload);

    // Exit codes tell failures apart.
    assert_eq!(
        cairnctl(&cluster, &["volume", "get", "missing"])
            .status
            .code(),
        Some(3)
    );
    assert_eq!(
        cairnctl(
            &cluster,
            &["volume", "create", "x", "--size", "1MiB", "--replicas", "9"]
        )
        .status
        .code(),
        Some(2)
    );
    assert_eq!(
        cairnctl(&cluster, &["volume", "create", "cli", "--size", "8MiB"])
            .status
            .code(),
        Some(4)
    );
    assert_eq!(
        cairnctl(&cluster, &["volume", "create", "y", "--size", "lots"])
            .status
            .code(),
        Some(2)
    );
    let table = cairnctl(&cluster, &["volume", "ls"]);
    ok(&table);
    assert!(String::from_utf8_lossy(&table.stdout).contains("cli"));

    // A fourth node joins, shows up, and leaves.
    let root = tempfile::tempdir().unwrap();
    let addr4 = format!("127.0.0.1:{}", free_port());
    let mut n4 = Command::new(bin())
        .args([
            "--node-id",
            "4",
            "--listen",
            &addr4,
            "--join",
            &ep,
            "--capacity",
            "8GiB",
            "--label",
            "zone=z4",
        ])
        .arg("--data-dir")
        .arg(root.path())
        .arg("--tls-dir")
        .arg(cluster.tls_dir(&Identity::Node(4)).unwrap())
        .stderr(std::fs::File::create(root.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut joined = false;
    while Instant::now() < deadline && !joined {
        let out = cairnctl(&cluster, &["-o", "json", "node", "ls"]);
        if out.status.success() {
            let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            joined = nodes
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["id"] == 4 && n["labels"]["zone"] == "z4");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(joined, "node 4 never appeared in `node ls`");
    // A volume pinned to the new node lands there.
    ok(&cairnctl(
        &cluster,
        &[
            "volume",
            "create",
            "on4",
            "--size",
            "1MiB",
            "--replicas",
            "1",
            "--node",
            "node-4",
        ],
    ));
    let out = cairnctl(&cluster, &["-o", "json", "volume", "get", "on4"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["members"][0]["node_id"], 4);
    // Removing a node that holds replicas is refused; after deleting the volume it succeeds.
    assert_eq!(
        cairnctl(&cluster, &["node", "remove", "--id", "4"])
            .status
            .code(),
        Some(4)
    );
    ok(&cairnctl(&cluster, &["volume", "rm", "on4"]));
    ok(&cairnctl(&cluster, &["node", "remove", "--id", "4"]));
    let out = cairnctl(&cluster, &["-o", "json", "node", "ls"]);
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!nodes.as_array().unwrap().iter().any(|n| n["id"] == 4));
    let _ = n4.kill();
    let _ = n4.wait();
}

/// AttachVolume and RefreshSize read the catalogue fresh on every node (a follower read
/// through the meta leader's read index), so a volume created or grown a moment ago is
/// found, at its new size, on followers as well as on the meta leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_sees_a_create_and_a_resize_at_once() {
    let cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let c = cluster.client();
    let nodes: Vec<cairn_client::NodeClient> = cluster
        .nodes
        .iter()
        .map(|n| {
            let me = cluster.security_for(&Identity::CsiNode(format!("node-{}", n.id)));
            cairn_client::NodeClient::connect(&n.addr, &me).unwrap()
        })
        .collect();
    for round in 0..4 {
        let name = format!("fresh-{round}");
        c.create_volume(create(&name, 8 << 20, 3)).await.unwrap();
        for (i, node) in nodes.iter().enumerate() {
            let a = node
                .attach_volume(pb::AttachVolumeRequest {
                    volume: name.clone(),
                    frontend: pb::Frontend::Nbd as i32,
                    readonly: false,
                    generation: 0,
                })
                .await
                .unwrap_or_else(|s| panic!("attach {name} on node index {i}: {s:?}"));
            assert_eq!(a.size_bytes, 8 << 20, "node index {i}");
        }
        c.resize_volume(&name, 24 << 20).await.unwrap();
        for (i, node) in nodes.iter().enumerate() {
            let a = node.refresh_size(&name).await.unwrap();
            assert_eq!(a.size_bytes, 24 << 20, "{name} on node index {i}");
            node.detach_volume(&name).await.unwrap();
        }
    }
}

/// A deleted local volume's pool file is removed on its node, also when a volume of the
/// same name exists again (files are named by volume id), and so is a file no volume owns
/// (a volume deleted while the node was down); a live volume's file stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_local_volumes_leave_no_pool_files() {
    let cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let c = cluster.client();
    let gone = c
        .create_volume(pb::CreateVolumeRequest {
            kind: pb::VolumeKind::Local as i32,
            ..create("local-gone", 4 << 20, 1)
        })
        .await
        .unwrap();
    let owner = gone.members[0].node_id;
    // Later volumes are placed on the same node by its name.
    let on_owner = |name: &str| pb::CreateVolumeRequest {
        kind: pb::VolumeKind::Local as i32,
        requisite: vec![pb::TopologyTerm {
            segments: [(
                cairn_storaged::meta::catalog::NODE_KEY.to_string(),
                gone.members[0].node_name.clone(),
            )]
            .into(),
        }],
        ..create(name, 4 << 20, 1)
    };
    let pool = cluster.nodes[cluster.index_of(owner)]
        .dir
        .join("local-pool");
    // What an attach leaves: the volume's sparse file in its node's pool.
    std::fs::create_dir_all(pool.join("volumes")).unwrap();
    let file = |v: &pb::Volume| pool.join(format!("volumes/{}-{}.img", v.id, v.name));
    let kept = c.create_volume(on_owner("local-kept")).await.unwrap();
    assert_eq!(kept.members[0].node_id, owner);
    std::fs::write(file(&kept), b"live").unwrap();
    c.delete_volume("local-gone").await.unwrap();
    // The same name again, on the same node: it must not inherit the old file.
    let again = c.create_volume(on_owner("local-gone")).await.unwrap();
    assert_eq!(again.members[0].node_id, owner);
    assert_ne!(again.id, gone.id);
    // Files the clean-up has not seen yet (as if the node had been down meanwhile): the
    // first `local-gone`'s, and two that no volume owns.
    std::fs::write(file(&gone), b"old contents").unwrap();
    let ghosts = [pool.join("volumes/999-ghost.img"), pool.join("ghost.img")];
    for g in &ghosts {
        std::fs::write(g, b"deleted while the node was down").unwrap();
    }
    // A catalogue change runs the clean-up at once.
    c.create_volume(on_owner("local-trigger")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    while file(&gone).exists() || ghosts.iter().any(|g| g.exists()) {
        assert!(
            Instant::now() < deadline,
            "pool files of deleted volumes are still there after 40 s:\n{}",
            cluster.log_of(owner)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !file(&again).exists(),
        "the new volume starts without a file"
    );
    assert!(file(&kept).exists(), "a live volume's file is kept");
    assert_eq!(
        std::fs::read(file(&kept)).unwrap(),
        b"live",
        "and untouched"
    );
}

/// `GET /metrics` on the address a node logged for `--metrics-addr 127.0.0.1:0`.
async fn scrape(cluster: &ProcCluster, id: u64) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = loop {
        let log = cluster.log_of(id);
        if let Some(rest) = log.split("serving metrics addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "node {id} logged no metrics address:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: storaged\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    out
}

/// `--metrics-addr` serves Prometheus metrics: I/O bytes and latency by operation and
/// result on the node that served it, and each hosted Raft group's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_io_and_raft_state() {
    let cluster = ProcCluster::start(bin(), 3, &["--metrics-addr", "127.0.0.1:0"]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let c = cluster.client();
    let vol = c
        .create_volume(create("metered", 1 << 20, 3))
        .await
        .unwrap();
    let leader = cluster
        .volume_leader("metered", Duration::from_secs(20))
        .await
        .unwrap();
    c.write("metered", 0, vec![1u8; 8192].into()).await.unwrap();
    c.read("metered", 0, 4096).await.unwrap();
    let err = c.read("metered", 1 << 20, 4096).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);

    let text = scrape(&cluster, leader).await;
    for want in [
        "cairn_storaged_io_bytes_total{op=\"write\"} 8192".to_string(),
        "cairn_storaged_io_bytes_total{op=\"read\"} 4096".to_string(),
        "cairn_storaged_io_seconds_count{op=\"write\",result=\"ok\"} 1".to_string(),
        "cairn_storaged_io_seconds_count{op=\"read\",result=\"OutOfRange\"} 1".to_string(),
        format!(
            "cairn_storaged_raft_leader{{volume=\"metered\",group=\"{}\"}} 1",
            vol.id
        ),
    ] {
        assert!(
            text.contains(&want),
            "leader {leader} lacks `{want}`:\n{text}"
        );
    }
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let want = format!(
        "cairn_storaged_raft_leader{{volume=\"metered\",group=\"{}\"}} 0",
        vol.id
    );
    // The write may have committed without this follower: it reports the group once it
    // hosts it, which is waited for (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = scrape(&cluster, follower).await;
    while !text.contains(&want) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        text = scrape(&cluster, follower).await;
    }
    assert!(
        text.contains(&want),
        "follower {follower} lacks `{want}`:\n{text}"
    );
    assert!(
        !text.contains("cairn_storaged_io_bytes_total{op=\"write\"}"),
        "the follower served no I/O:\n{text}"
    );
}

/// The value of `metric{volume="<volume>",...}` in a scrape, if present.
fn group_gauge(text: &str, metric: &str, volume: &str) -> Option<u64> {
    let prefix = format!("{metric}{{volume=\"{volume}\",");
    text.lines()
        .find(|l| l.starts_with(&prefix))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// 1 MiB writes: openraft alone keeps 1024 entries behind each snapshot (1 GiB per group on
/// every node); the log window purges all but the newest `KEEP_BYTES` (64 MiB) of writes, so
/// after 192 MiB every node has purged its log and holds about 64 + 32 MiB of it (at most
/// 140 entries are allowed; it briefly holds more until the last snapshot's purge is taken).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_writes_keep_a_bounded_raft_log() {
    use futures::StreamExt;
    const MIB: u64 = 1 << 20;
    let cluster = ProcCluster::start(bin(), 3, &["--metrics-addr", "127.0.0.1:0"]).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).await.unwrap();
    let c = cluster.client().with_deadline(Duration::from_secs(30));
    c.create_volume(create("big", 256 * MIB, 3)).await.unwrap();
    let written: Vec<_> = futures::stream::iter(0..192u64)
        .map(|i| {
            let c = c.clone();
            async move {
                c.write("big", i * MIB, vec![i as u8; MIB as usize].into())
                    .await
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    assert!(written.iter().all(|r| r.is_ok()), "every write succeeds");
    for id in 1..=3 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = scrape(&cluster, id).await;
            let last = group_gauge(&text, "cairn_storaged_raft_last_log_index", "big");
            let purged = group_gauge(&text, "cairn_storaged_raft_purged_index", "big");
            // The purge follows each snapshot (it waits for openraft to take it in), so
            // a node may briefly hold more; with the window alone it would hold 1024.
            if let (Some(last), Some(purged)) = (last, purged)
                && last >= 192
                && purged > 0
                && last - purged <= 140
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not cut its log to 140 entries of 1 MiB in 30 s (last {last:?}, \
                 purged {purged:?}):\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let back = c.read("big", 191 * MIB, 4096).await.unwrap();
    assert!(back.iter().all(|b| *b == 191), "the last write reads back");
}
