//! A storaged restart under a mounted volume (decision 041): ext4 on a 3-replica volume
//! attached through NodeService on node 1, a writer doing write + fsync of numbered records;
//! node 1's storaged is killed (-9) or stopped (SIGTERM, an upgrade) and started again. The
//! writer sees no error and stalls briefly, every fsynced record reads back, and a detach
//! afterwards leaves no process, mount or loop device behind. With a frontend host (decision
//! 064), the same holds when storaged goes with every process it started (a container restart).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_client::NodeClient;
use cairn_proto::cairn::v1 as pb;
use cairn_storaged::frontend::process::pid_alive;
use cairn_storaged::testkit::{ProcCluster, frontend_pids};
use cairn_storaged::tls::Identity;

const VOLUME: &str = "mounted";
const RECORD: usize = 4096;
const MAGIC: &[u8; 8] = b"cairnrec";
/// The longest a write + fsync may stall across the restart.
const MAX_STALL: Duration = Duration::from_secs(10);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_storaged"))
}

fn sh(script: &str) -> String {
    let out = std::process::Command::new("bash")
        .args(["-c", script])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Record `i`: its number, a magic, then a byte pattern of its own.
fn record(i: u64) -> Vec<u8> {
    let mut r = vec![(i % 251) as u8; RECORD];
    r[..8].copy_from_slice(&i.to_le_bytes());
    r[8..16].copy_from_slice(MAGIC);
    r
}

/// What the writer thread did.
struct Written {
    /// Records written and fsynced: 0..count.
    count: u64,
    longest: Duration,
    error: Option<String>,
}

/// Writes record after record at `path` (pwrite + fsync) until `stop` or an error.
fn writer(path: PathBuf, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> Written {
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            return Written {
                count: 0,
                longest: Duration::ZERO,
                error: Some(format!("open: {e}")),
            };
        }
    };
    let mut longest = Duration::ZERO;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let res = file
            .write_all_at(&record(i), i * RECORD as u64)
            .and_then(|()| file.sync_all());
        longest = longest.max(started.elapsed());
        if let Err(e) = res {
            return Written {
                count: i,
                longest,
                error: Some(format!("record {i}: {e}")),
            };
        }
        i += 1;
        done.store(i, Ordering::SeqCst);
    }
    Written {
        count: i,
        longest,
        error: None,
    }
}

/// Unmounts the test's ext4 mount even when the test fails; dropped before the cluster
/// (declared after it), whose drop then removes node 1's frontends and their devices.
struct Cleanup {
    mnt: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Waits up to `within` for `cond`, polling.
async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

enum Stop {
    Kill9,
    Term,
    /// What a container restart does: storaged is given `--frontend-host`, then killed (-9)
    /// with every process descended from it or in its session or process group.
    Container,
}

/// A `storaged frontend-host` for node 1, killed (and reaped) when dropped.
struct Host(std::process::Child);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts node 1's frontend host on `<run>/frontend-host.sock` and waits until it answers.
async fn start_host(run_dir: &Path, tls_dir: &Path) -> (Host, PathBuf) {
    let socket = run_dir.join("frontend-host.sock");
    std::fs::create_dir_all(run_dir).unwrap();
    let log = std::fs::File::create(run_dir.join("frontend-host.log")).unwrap();
    let child = std::process::Command::new(bin())
        .arg("frontend-host")
        .arg("--socket")
        .arg(&socket)
        .arg("--run-dir")
        .arg(run_dir)
        .arg("--tls-dir")
        .arg(tls_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the frontend host");
    let host = Host(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while cairn_storaged::frontend::host::health(&socket)
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the frontend host never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (host, socket)
}

/// `pid`, every process descended from it, and every process in its session or process
/// group: what the end of a container takes with it.
fn container_of(pid: u32) -> Vec<u32> {
    let mut procs: Vec<(u32, u32, u32, u32)> = Vec::new(); // pid, ppid, pgrp, session
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let f: Vec<u32> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().skip(1).take(3))
            .into_iter()
            .flatten()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [ppid, pgrp, sid] = f[..] {
            procs.push((p, ppid, pgrp, sid));
        }
    }
    let mut out = vec![pid];
    loop {
        let before = out.len();
        for &(p, ppid, pgrp, sid) in &procs {
            let joined = out.contains(&ppid) || pgrp == pid || sid == pid;
            if joined && !out.contains(&p) {
                out.push(p);
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// One scenario at a time: two 3-node clusters at once on a small machine would make the
/// stall measure the machine, not the restart.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn restart_under_a_mounted_volume(how: Stop) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut cluster = ProcCluster::start(bin(), 3, &[]).unwrap();
    cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
    let node1 = cluster.nodes[0].clone_paths();
    // Node 1 asks its frontend host to start frontends from now on.
    let _host = match how {
        Stop::Container => {
            let tls = cluster.tls_dir(&Identity::Node(1)).unwrap();
            let (host, socket) = start_host(&node1.run_dir, &tls).await;
            cluster.nodes[0].args = vec!["--frontend-host".into(), socket.display().to_string()];
            cluster.restart(1).unwrap();
            cluster.wait_ready(Duration::from_secs(60)).await.unwrap();
            let csi = cluster.security_for(&Identity::CsiNode("node-1".into()));
            let api = NodeClient::connect(&node1.addr, &csi).unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while api.list_attachments().await.is_err() {
                assert!(Instant::now() < deadline, "node 1 never served again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(host)
        }
        _ => None,
    };
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _cleanup = Cleanup { mnt: mnt.clone() };
    let admin = cluster.client().with_deadline(Duration::from_secs(30));
    admin
        .create_volume(pb::CreateVolumeRequest {
            name: VOLUME.into(),
            size_bytes: 256 << 20,
            replicas: 3,
            ..Default::default()
        })
        .await
        .expect("create the volume");
    // What the CSI controller and node plugin do: publish to node-1, attach with its generation.
    let published = admin
        .publish_volume(pb::PublishVolumeRequest {
            name: VOLUME.into(),
            node_name: "node-1".into(),
            ..Default::default()
        })
        .await
        .expect("publish");
    let generation = published
        .attachments
        .iter()
        .find(|a| a.node_name == "node-1")
        .map(|a| a.generation)
        .expect("the publish");
    let csi = cluster.security_for(&Identity::CsiNode("node-1".into()));
    let node_api = NodeClient::connect(&node1.addr, &csi).unwrap();
    let attached = node_api
        .attach_volume(pb::AttachVolumeRequest {
            volume: VOLUME.into(),
            frontend: pb::Frontend::Fuse as i32,
            readonly: false,
            generation,
        })
        .await
        .expect("attach");
    let device = attached.device_path.clone();
    assert!(device.starts_with("/dev/loop"), "{attached:?}");
    let frontends = frontend_pids(&node1.run_dir);
    assert_eq!(frontends.len(), 1, "one frontend process: {frontends:?}");
    sh(&format!("mkfs.ext4 -q -F {device}"));
    sh(&format!("mount {device} {}", mnt.display()));
    // The attached node leads (decision 014), so the restart takes the leader away.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.volume_leader(VOLUME, Duration::from_secs(10)).await != Ok(1) {
        assert!(Instant::now() < deadline, "node 1 never led the volume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let (path, s, d) = (mnt.join("records"), stop.clone(), done.clone());
    let writing = std::thread::spawn(move || writer(path, s, d));
    // Waits until the writer has fsynced `n` more records.
    let more = |n: u64, what: &'static str| {
        let done = done.clone();
        let target = done.load(Ordering::SeqCst) + n;
        wait_for(what, Duration::from_secs(60), move || {
            done.load(Ordering::SeqCst) >= target
        })
    };
    more(50, "50 records before the restart").await;

    let down_at = Instant::now();
    match how {
        Stop::Kill9 => cluster.kill9(1),
        Stop::Container => {
            let pid = cluster.pid(1).expect("node 1 runs");
            let doomed = container_of(pid);
            println!("killing node 1's storaged and what it started: {doomed:?}");
            for p in doomed.iter().filter(|p| **p != pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            cluster.kill9(1);
        }
        Stop::Term => {
            let took = cluster.terminate(1, Duration::from_secs(30)).await;
            assert!(took.is_some(), "storaged did not stop on SIGTERM");
        }
    }
    assert!(
        pid_alive(frontends[0]),
        "the frontend process must outlive storaged"
    );
    // While node 1's storaged is down, the frontend writes through the new leader.
    more(20, "20 records while storaged is down").await;
    cluster.restart(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let adopted = loop {
        if let Ok(list) = node_api.list_attachments().await
            && let Some(a) = list.into_iter().find(|a| a.volume == VOLUME)
        {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted node never listed the attachment"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("node 1 back after {:?}", down_at.elapsed());
    assert_eq!(adopted.device_path, device, "the same loop device, adopted");
    assert_eq!(adopted.generation, generation);
    assert_eq!(
        frontend_pids(&node1.run_dir),
        frontends,
        "the same frontend process, adopted"
    );
    assert!(
        cluster
            .log_of(1)
            .contains("adopted a running frontend process"),
        "node 1 should have adopted its frontend"
    );
    more(50, "50 records after the restart").await;
    stop.store(true, Ordering::SeqCst);
    let written = writing.join().expect("the writer thread");
    println!(
        "writer: {} records fsynced, longest write+fsync stall {:?}",
        written.count, written.longest
    );
    assert_eq!(written.error, None, "the writer saw an error");
    assert!(
        written.longest < MAX_STALL,
        "the writer stalled {:?}",
        written.longest
    );

    // Every fsynced record reads back from the volume (the page cache goes with the unmount).
    sh(&format!("umount {}", mnt.display()));
    sh(&format!("mount {device} {}", mnt.display()));
    let file = std::fs::File::open(mnt.join("records")).unwrap();
    let mut buf = vec![0; RECORD];
    for i in 0..written.count {
        file.read_exact_at(&mut buf, i * RECORD as u64)
            .unwrap_or_else(|e| panic!("record {i}: {e}"));
        assert!(buf == record(i), "record {i} differs after the restart");
    }
    drop(file);
    sh(&format!("umount {}", mnt.display()));

    // A detach after the restart leaves nothing behind.
    node_api.detach_volume(VOLUME).await.expect("detach");
    wait_for("the frontend to exit", Duration::from_secs(15), || {
        !pid_alive(frontends[0])
    })
    .await;
    assert!(frontend_pids(&node1.run_dir).is_empty());
    let run = node1.run_dir.display().to_string();
    let loops = sh("losetup -l -n -O BACK-FILE");
    assert!(
        !loops.lines().any(|l| l.trim().starts_with(&run)),
        "loop device left behind: {loops}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&run),
        "mount left behind under {run}: {mounts}"
    );
    assert!(node_api.list_attachments().await.unwrap().is_empty());
}

/// Node paths the test needs after the cluster has moved on.
struct NodePaths {
    addr: String,
    run_dir: PathBuf,
}

trait ClonePaths {
    fn clone_paths(&self) -> NodePaths;
}

impl ClonePaths for cairn_storaged::testkit::ProcNode {
    fn clone_paths(&self) -> NodePaths {
        let run = self.run_dir();
        NodePaths {
            addr: self.addr.clone(),
            run_dir: std::fs::canonicalize(&run).unwrap_or(run),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_storaged_only_stalls_a_mounted_volume() {
    restart_under_a_mounted_volume(Stop::Kill9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_container_restart_with_a_frontend_host_only_stalls_a_mounted_volume() {
    restart_under_a_mounted_volume(Stop::Container).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_and_a_new_start_only_stall_a_mounted_volume() {
    restart_under_a_mounted_volume(Stop::Term).await;
}
