//! fio through volumes staged and published by the real cairn-csi over its Unix sockets (ext4 on
//! 3- and 1-replica volumes, a `type: local` volume) against two references measured in the
//! same run: the frontend's ceiling (the same FUSE + loop + ext4 path over a volume held in
//! memory, storaged's `fuse_ceiling` example) and the limit (ext4 on a loop device on a file).
//!
//! The replicated rows run twice: with each FUSE frontend in a process of its own (as
//! shipped) and served inside storaged (`--in-process-frontends`), to show that hop's cost;
//! the 3-replica row a third time on a plaintext cluster (`--insecure`), to show TLS's.
//!
//! Run by `scripts/bench-csi.sh`; prints IOPS/MB/s per workload and the ratios to both.
//! Environment: `BENCH_SECONDS` (per fio job, default 10), `BENCH_FILE_MIB` (default 256).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use cairn_proto::csi::v1 as csi;
use common::*;
use csi::volume_capability::access_mode::Mode;

const MIB: i64 = 1 << 20;
const VOLUME_BYTES: i64 = 1024 * MIB;

/// One timed fio job.
struct Workload {
    name: &'static str,
    rw: &'static str,
    bs: &'static str,
    iodepth: u32,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        name: "4k randread",
        rw: "randread",
        bs: "4k",
        iodepth: 32,
    },
    Workload {
        name: "4k randwrite",
        rw: "randwrite",
        bs: "4k",
        iodepth: 32,
    },
    Workload {
        name: "1M seq write",
        rw: "write",
        bs: "1M",
        iodepth: 8,
    },
];

/// What fio measured for one workload.
#[derive(Clone, Copy, Default)]
struct Figure {
    iops: f64,
    mib_s: f64,
}

struct Settings {
    seconds: u64,
    file_mib: u64,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `fio` with `args`, asserting success; returns its terse (v3) line.
fn fio(args: &[String]) -> String {
    let out = Command::new("fio").args(args).output().expect("run fio");
    assert!(
        out.status.success(),
        "fio {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("3;"))
        .expect("a terse v3 line from fio")
        .to_string()
}

/// Lays out the test file in `dir`, then runs every workload on it.
fn run_fio(dir: &Path, s: &Settings) -> Vec<Figure> {
    let file = dir.join("fio.dat");
    let common = |name: &str| {
        vec![
            format!("--name={name}"),
            format!("--filename={}", file.display()),
            format!("--size={}M", s.file_mib),
            "--direct=1".to_string(),
            "--ioengine=libaio".to_string(),
            "--output-format=terse".to_string(),
            "--terse-version=3".to_string(),
        ]
    };
    // Untimed layout, so the read job reads written blocks and no job pays for allocation.
    let mut prep = common("layout");
    prep.extend(["--rw=write", "--bs=1M", "--iodepth=8", "--end_fsync=1"].map(String::from));
    fio(&prep);
    WORKLOADS
        .iter()
        .map(|w| {
            let mut args = common(w.rw);
            args.extend([
                format!("--rw={}", w.rw),
                format!("--bs={}", w.bs),
                format!("--iodepth={}", w.iodepth),
                "--time_based".to_string(),
                format!("--runtime={}", s.seconds),
                "--randrepeat=0".to_string(),
            ]);
            let line = fio(&args);
            let f: Vec<&str> = line.split(';').collect();
            // Terse v3: field 7/8 = read KiB/s / IOPS, 48/49 = write KiB/s / IOPS (1-based).
            let (bw, iops) = if w.rw.contains("read") {
                (f[6], f[7])
            } else {
                (f[47], f[48])
            };
            Figure {
                iops: iops.parse().unwrap(),
                mib_s: bw.parse::<f64>().unwrap() / 1024.0,
            }
        })
        .collect()
}

/// Creates, publishes to node-1, stages and publishes `id`; runs fio; tears it all down.
async fn through_csi(
    cluster: &Cluster,
    ctrl: &Plugin,
    node: &Plugin,
    id: &str,
    params: &[(&str, &str)],
    s: &Settings,
) -> Vec<Figure> {
    let cap = mount_cap(Mode::SingleNodeWriter, "ext4");
    let mut req = create_req(id, VOLUME_BYTES, cap.clone(), params);
    // Place the volume (its single replica, or its leader's first member) on node-1.
    req.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![],
        preferred: vec![csi::Topology {
            segments: [("topology.cairn.dev/node".to_string(), "node-1".to_string())].into(),
        }],
    });
    let mut c = ctrl.ctrl().await;
    c.create_volume(req).await.expect("CreateVolume");
    let ctx = c
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: id.into(),
            node_id: "node-1".into(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .expect("ControllerPublishVolume")
        .into_inner()
        .publish_context;
    let (staging, target) = stage_and_publish(node, cluster, 0, id, ctx, cap, "bench").await;
    let att = cluster
        .node_client(0)
        .list_attachments()
        .await
        .expect("ListAttachments")
        .into_iter()
        .find(|a| a.volume == id)
        .expect("attached on node-1");
    eprintln!(
        "bench-csi: {id} on {}, loop direct I/O = {}",
        att.device_path,
        loop_dio(&att.device_path)
    );
    let figures = run_fio(&target, s);
    unpublish_and_unstage(node, id, &staging, &target).await;
    c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
        volume_id: id.into(),
        node_id: "node-1".into(),
        ..Default::default()
    })
    .await
    .expect("ControllerUnpublishVolume");
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: id.into(),
        ..Default::default()
    })
    .await
    .expect("DeleteVolume");
    figures
}

/// `/sys/block/loopN/loop/dio` of a loop device ("1" = direct I/O on the backing file).
fn loop_dio(dev: &str) -> String {
    std::fs::read_to_string(format!(
        "/sys/block/{}/loop/dio",
        dev.trim_start_matches("/dev/")
    ))
    .map(|s| s.trim().to_string())
    .unwrap_or_else(|_| "?".into())
}

/// ext4 on a loop device over a sparse file in `dir`: what the kernel alone gives.
fn loop_limit(dir: &Path, s: &Settings) -> Vec<Figure> {
    let img = dir.join("limit.img");
    let mnt = dir.join("limit-mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::File::create(&img)
        .unwrap()
        .set_len(VOLUME_BYTES as u64)
        .unwrap();
    // Direct I/O on the backing file, as storaged's own loop devices use when they can; a
    // buffered loop device would measure the page cache, not the disk.
    let img_s = img.display();
    let dev = sh(&format!(
        "losetup -f --show --direct-io=on {img_s} 2>/dev/null || losetup -f --show {img_s}"
    ))
    .trim()
    .to_string();
    eprintln!(
        "bench-csi: limit on {dev}, loop direct I/O = {}",
        loop_dio(&dev)
    );
    sh(&format!(
        "mkfs.ext4 -q {dev} && mount {dev} {}",
        mnt.display()
    ));
    let figures = run_fio(&mnt, s);
    sh(&format!("umount {} && losetup -d {dev}", mnt.display()));
    std::fs::remove_file(&img).unwrap();
    figures
}

/// The `fuse_ceiling` process and the loop device and mount on its export; all undone on drop.
struct Ceiling {
    child: Child,
    dev: Option<String>,
    mnt: PathBuf,
}

impl Drop for Ceiling {
    fn drop(&mut self) {
        let mnt = self.mnt.display();
        let _ = Command::new("sh")
            .args(["-c", &format!("mountpoint -q {mnt} && umount {mnt}")])
            .status();
        if let Some(dev) = &self.dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
        // Closing its stdin tells it to unmount the export and exit.
        drop(self.child.stdin.take());
        if self.child.wait().is_err() {
            let _ = self.child.kill();
        }
    }
}

/// ext4 on a loop device over storaged's FUSE export of an in-memory volume: what the
/// frontend itself allows, with no Raft, disk or network behind it.
fn frontend_ceiling(dir: &Path, s: &Settings) -> Vec<Figure> {
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe.with_file_name("fuse_ceiling");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --all-targets`",
        bin.display()
    );
    let mut child = Command::new(&bin)
        .arg(dir.join("fuse"))
        .arg(VOLUME_BYTES.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting fuse_ceiling");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("reading fuse_ceiling's stdout");
    let mnt = dir.join("ceiling-mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut guard = Ceiling {
        child,
        dev: None,
        mnt: mnt.clone(),
    };
    let disk = line
        .trim()
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("fuse_ceiling did not start: {line:?}"))
        .to_string();
    let dev = sh(&format!("losetup -f --show --direct-io=on {disk}"))
        .trim()
        .to_string();
    guard.dev = Some(dev.clone());
    eprintln!(
        "bench-csi: ceiling on {dev}, loop direct I/O = {}",
        loop_dio(&dev)
    );
    sh(&format!(
        "mkfs.ext4 -q {dev} && mount {dev} {}",
        mnt.display()
    ));
    let figures = run_fio(&mnt, s);
    drop(guard);
    figures
}

/// `part / whole` in IOPS, 0 when the reference measured nothing.
fn ratio(part: &Figure, whole: &Figure) -> f64 {
    if whole.iops > 0.0 {
        part.iops / whole.iops
    } else {
        0.0
    }
}

fn print_table(rows: &[(&str, Vec<Figure>)], ceiling: &[Figure], limit: &[Figure]) {
    println!();
    println!(
        "{:<30} {:<13} {:>10} {:>9} {:>11} {:>10}",
        "volume", "workload", "IOPS", "MiB/s", "vs ceiling", "vs limit"
    );
    for (name, figs) in rows {
        for (i, (w, f)) in WORKLOADS.iter().zip(figs).enumerate() {
            println!(
                "{:<30} {:<13} {:>10.0} {:>9.1} {:>10.3}x {:>9.3}x",
                name,
                w.name,
                f.iops,
                f.mib_s,
                ratio(f, &ceiling[i]),
                ratio(f, &limit[i])
            );
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let s = Settings {
        seconds: env_u64("BENCH_SECONDS", 10),
        file_mib: env_u64("BENCH_FILE_MIB", 256),
    };
    eprintln!(
        "bench-csi: fio {} s per job on a {} MiB file, direct=1, libaio",
        s.seconds, s.file_mib
    );
    let mut rows: Vec<(&str, Vec<Figure>)> = Vec::new();
    // The frontend's own hop first (FUSE served inside storaged, no gRPC between the
    // frontend and the node), on a cluster of its own, so its cost shows in this run.
    {
        let inproc = Cluster::start_with(3, &["--in-process-frontends"]).await;
        let ctrl = Plugin::controller(&inproc).await;
        let node = Plugin::node(&inproc, 0).await;
        for (label, id, replicas) in [
            (
                "ext4, 3 replicas (fuse in storaged)",
                "bench-r3-inproc",
                "3",
            ),
            ("ext4, 1 replica (fuse in storaged)", "bench-r1-inproc", "1"),
        ] {
            eprintln!("bench-csi: {label}");
            let params = [("replicas", replicas)];
            rows.push((
                label,
                through_csi(&inproc, &ctrl, &node, id, &params, &s).await,
            ));
        }
    }
    // TLS's cost: the shipped path (frontend process) on a plaintext cluster of its own, every
    // hop (plugins, frontend, storaged, Raft) without TLS.
    {
        let plain = Cluster::start_with(3, &["--insecure"]).await;
        let ctrl = Plugin::controller(&plain).await;
        let node = Plugin::node(&plain, 0).await;
        let label = "ext4, 3 replicas (fuse, no TLS)";
        eprintln!("bench-csi: {label}");
        let params = [("replicas", "3")];
        rows.push((
            label,
            through_csi(&plain, &ctrl, &node, "bench-r3-plain", &params, &s).await,
        ));
    }
    let cluster = Cluster::start(3).await;
    // The cluster's directory (and its logs) goes away when a panic unwinds: keep the logs.
    let dir = cluster.dir.path().to_path_buf();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let keep = dir.with_extension("logs");
        let _ = std::fs::create_dir_all(&keep);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
            }
        }
        eprintln!("bench-csi: logs kept in {}", keep.display());
        default_hook(info);
    }));
    let ctrl = Plugin::controller(&cluster).await;
    let node = Plugin::node(&cluster, 0).await;
    for (label, id, params) in [
        (
            "ext4, 3 replicas (fuse)",
            "bench-r3",
            &[("replicas", "3")][..],
        ),
        ("ext4, 1 replica (fuse)", "bench-r1", &[("replicas", "1")]),
        (
            "ext4, type: local (loop)",
            "bench-local",
            &[("type", "local")],
        ),
    ] {
        eprintln!("bench-csi: {label}");
        rows.push((
            label,
            through_csi(&cluster, &ctrl, &node, id, params, &s).await,
        ));
    }
    eprintln!("bench-csi: frontend ceiling");
    let ceiling_dir: PathBuf = cluster.dir.path().join("ceiling");
    std::fs::create_dir_all(&ceiling_dir).unwrap();
    let ceiling = frontend_ceiling(&ceiling_dir, &s);
    rows.push(("ext4, fuse on memory (ceiling)", ceiling.clone()));
    eprintln!("bench-csi: limit");
    let limit_dir: PathBuf = cluster.dir.path().join("limit");
    std::fs::create_dir_all(&limit_dir).unwrap();
    let limit = loop_limit(&limit_dir, &s);
    rows.push(("ext4, loop on a file (limit)", limit.clone()));
    print_table(&rows, &ceiling, &limit);
    drop(node);
    drop(ctrl);
    drop(cluster);
}
