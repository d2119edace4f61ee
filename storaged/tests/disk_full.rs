//! A node whose data filesystem fills up, with real processes on a small loop-mounted ext4:
//! writes to its volumes are refused cleanly (RESOURCE_EXHAUSTED) before the disk is full,
//! nothing acknowledged is lost, and deleting a volume gives the space back so writes resume;
//! and placement counts the bytes really used on each node, with `--overcommit` (050).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use cairn_storaged::testkit::ProcCluster;
use tonic::Code;

const MIB: u64 = 1 << 20;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_storaged"))
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An ext4 filesystem of a given size in a file, loop-mounted (`-o loop`: the loop device
/// goes with the unmount); unmounted on drop.
struct SmallFs {
    mnt: PathBuf,
}

impl SmallFs {
    fn new(dir: &Path, bytes: u64) -> SmallFs {
        let img = dir.join("disk.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(bytes))
            .expect("disk image");
        let img = img.to_str().expect("utf-8 path");
        run("mkfs.ext4", &["-q", "-F", "-m", "0", img]);
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).expect("mount point");
        run(
            "mount",
            &["-o", "loop", img, mnt.to_str().expect("utf-8 path")],
        );
        SmallFs { mnt }
    }

    fn free(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.mnt).expect("statvfs");
        s.blocks_available() * s.fragment_size()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

/// The contents of block `i`: incompressible, different for every block.
fn block(i: u64) -> Bytes {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (i + 1);
    let mut v = Vec::with_capacity(MIB as usize);
    while v.len() < MIB as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(v)
}

/// A client of `cluster` once it is ready.
async fn ready(cluster: &ProcCluster) -> VolumeClient {
    cluster
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("cluster ready");
    cluster.client()
}

async fn create(client: &VolumeClient, name: &str, size_bytes: u64) {
    client
        .create_volume(pb::CreateVolumeRequest {
            name: name.into(),
            size_bytes,
            replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_node_refuses_writes_loses_nothing_and_recovers_when_a_volume_goes() {
    let tmp = tempfile::tempdir_in("/var/tmp").expect("temp dir");
    // Declared before the cluster, so the processes stop before the unmount.
    let fs = SmallFs::new(tmp.path(), 640 * MIB);
    let dirs = [
        fs.mnt.join("data"),
        tmp.path().join("node-2"),
        tmp.path().join("node-3"),
    ];
    for d in &dirs {
        std::fs::create_dir_all(d).expect("data dir");
    }
    let reserve = 160 * MIB;
    // `big` is thin-provisioned: 2 GiB on a 640 MiB disk needs the overcommit.
    let cluster =
        ProcCluster::start_on(bin(), &dirs, &["--reserve", "160MiB", "--overcommit", "8"])
            .expect("start");
    let client = ready(&cluster).await;
    create(&client, "small", 64 * MIB).await;
    create(&client, "big", 2048 * MIB).await;
    client
        .write("small", 0, block(1000))
        .await
        .expect("a write with room to spare");

    // Fill node 1's disk through `big` (each of its replicas is on a node, node 1 included).
    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..2048u64 {
        match client.write("big", i * MIB, block(i)).await {
            Ok(()) => acked.push(i),
            Err(s) if s.code() == Code::ResourceExhausted => {
                refusal = Some(s);
                break;
            }
            Err(s) => panic!("write {i}: expected success or RESOURCE_EXHAUSTED, got {s:?}"),
        }
    }
    let refusal = refusal.expect("2 GiB written to a volume with a replica on a 640 MiB disk");
    assert!(
        refusal.message().contains("node 1") && refusal.message().contains("reserve"),
        "the refusal names the node and the reserve: {}",
        refusal.message()
    );
    assert!(acked.len() >= 64, "only {} MiB written", acked.len());
    // Refused before the disk itself filled: RocksDB never met ENOSPC.
    let free = fs.free();
    assert!(
        free > reserve / 4,
        "{free} bytes left on node 1's disk after the refusal"
    );
    assert!(
        !cluster.log_of(1).contains("No space left on device"),
        "node 1 hit ENOSPC:\n{}",
        cluster.log_of(1)
    );
    eprintln!(
        "refused after {} MiB acknowledged, {} MiB free on node 1 (reserve {} MiB)",
        acked.len(),
        free / MIB,
        reserve / MIB
    );
    // Every write acknowledged before the refusal reads back intact.
    for &i in &acked {
        let got = client
            .read("big", i * MIB, MIB as u32)
            .await
            .unwrap_or_else(|e| panic!("read block {i}: {e}"));
        assert!(got == block(i), "block {i} of `big` changed");
    }
    // Another volume with a replica on node 1 is refused too; deleting `big` frees the space
    // and writes resume by themselves.
    let err = client
        .write("small", MIB, block(1001))
        .await
        .expect_err("node 1 is still short of space");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    client.delete_volume("big").await.expect("delete big");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match client.write("small", MIB, block(1001)).await {
            Ok(()) => break,
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(s) => panic!(
                "writes did not resume after `big` was deleted ({} bytes free on node 1): {s:?}",
                fs.free()
            ),
        }
    }
    for (off, i) in [(0, 1000), (MIB, 1001)] {
        let got = client.read("small", off, MIB as u32).await.expect("read");
        assert!(got == block(i), "`small` at {off} changed");
    }
}

fn on_node(name: &str, size_bytes: u64, node: &str, required: bool) -> pb::CreateVolumeRequest {
    let term = pb::TopologyTerm {
        segments: [("topology.cairn.dev/node".to_string(), node.to_string())].into(),
    };
    pb::CreateVolumeRequest {
        name: name.into(),
        size_bytes,
        replicas: 1,
        requisite: if required { vec![term.clone()] } else { vec![] },
        preferred: vec![term],
        ..Default::default()
    }
}

/// What GetCapacity says a one-replica volume on `node` may have.
async fn room_on(client: &VolumeClient, node: &str) -> u64 {
    client
        .get_capacity(pb::GetCapacityRequest {
            topology: Some(pb::TopologyTerm {
                segments: [("topology.cairn.dev/node".to_string(), node.to_string())].into(),
            }),
            kind: pb::VolumeKind::Replicated as i32,
            replicas: 1,
        })
        .await
        .expect("get capacity")
        .available_bytes
}

async fn node_view(client: &VolumeClient, id: u64) -> pb::Node {
    let nodes = client.list_nodes().await.expect("list nodes");
    nodes.into_iter().find(|n| n.id == id).expect("node listed")
}

/// A refusal for want of real space on node 1: RESOURCE_EXHAUSTED, saying so and naming it.
fn refused_really_free_on_node_1(err: &tonic::Status) {
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("really free") && err.message().contains("`node-1`"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_counts_bytes_really_used_and_overcommit_lets_sizes_pass_capacity() {
    let tmp = tempfile::tempdir_in("/var/tmp").expect("temp dir");
    // Node 1: a 1 GiB disk offering 64 GiB (the testkit's default): only real usage can stop
    // it. Node 2: 1 GiB offered, twice over, on a large disk.
    let fs = SmallFs::new(tmp.path(), 1024 * MIB);
    let dirs = [fs.mnt.join("data"), tmp.path().join("node-2")];
    for d in &dirs {
        std::fs::create_dir_all(d).expect("data dir");
    }
    let node_args = [
        vec![],
        ["--capacity", "1GiB", "--overcommit", "2"]
            .map(String::from)
            .to_vec(),
    ];
    let cluster = ProcCluster::start_on_with(bin(), &dirs, &node_args, &["--reserve", "64MiB"])
        .expect("start");
    let client = ready(&cluster).await;

    // Both nodes' usage reports reach the catalogue's answers, with their overcommit.
    let deadline = Instant::now() + Duration::from_secs(30);
    let used_before = loop {
        let (n1, n2) = (node_view(&client, 1).await, node_view(&client, 2).await);
        if n1.used_bytes > 0 && n2.used_bytes > 0 {
            assert_eq!((n1.overcommit, n2.overcommit), (1.0, 2.0));
            break n1.used_bytes;
        }
        assert!(Instant::now() < deadline, "no usage reports: {n1:?} {n2:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Write 400 MiB to a volume on node 1.
    client
        .create_volume(on_node("a", 512 * MIB, "node-1", true))
        .await
        .expect("create a on node 1");
    let before = room_on(&client, "node-1").await;
    assert!(
        before > 600 * MIB,
        "node 1 has {before} bytes of room before the writes"
    );
    for i in 0..400u64 {
        client
            .write("a", i * MIB, block(i))
            .await
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let used = node_view(&client, 1).await.used_bytes;
        let room = room_on(&client, "node-1").await;
        if used >= used_before + 300 * MIB && room < 600 * MIB {
            eprintln!(
                "node 1: {} MiB used, {} MiB of room",
                used / MIB,
                room / MIB
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1's usage did not grow: {used} bytes used, {room} bytes of room"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // 600 MiB fits node 1 by provisioned sizes (64 GiB − 512 MiB) but not by real space:
    // preferred there, it goes to node 2; required there, it is refused, saying why.
    let b = client
        .create_volume(on_node("b", 600 * MIB, "node-1", false))
        .await
        .expect("create b");
    let members: Vec<u64> = b.members.iter().map(|m| m.node_id).collect();
    assert_eq!(
        members,
        vec![2],
        "b must avoid node 1, whose disk is used up"
    );
    let err = client
        .create_volume(on_node("c", 600 * MIB, "node-1", true))
        .await
        .expect_err("node 1 has no real room for c");
    refused_really_free_on_node_1(&err);
    // Growing `a` by 600 MiB fails the same way, and leaves its size as it was.
    let err = client
        .resize_volume("a", 1112 * MIB)
        .await
        .expect_err("node 1 has no real room to grow a");
    refused_really_free_on_node_1(&err);
    assert_eq!(client.get_volume("a").await.unwrap().size_bytes, 512 * MIB);

    // Node 2 (1 GiB, overcommit 2) takes 600 + 768 MiB of volumes, beyond its capacity, then
    // refuses by provisioned sizes (2 GiB in all), not by real usage.
    client
        .create_volume(on_node("d", 768 * MIB, "node-2", true))
        .await
        .expect("node 2 takes d past its capacity");
    let n2 = node_view(&client, 2).await;
    assert!(
        n2.allocated_bytes > n2.capacity_bytes,
        "allocated {} of {}",
        n2.allocated_bytes,
        n2.capacity_bytes
    );
    let err = client
        .create_volume(on_node("e", 768 * MIB, "node-2", true))
        .await
        .expect_err("2 GiB provisioned on node 2 at most");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(!err.message().contains("really free"), "{}", err.message());
}
