//! `cairn-bench`: measures storaged write/read throughput and latency (replicas 1
//! and 3, queue depth 1, 32 and 64) beside a 3-member etcd and an fsync baseline, same run,
//! with each case's disk writes per stored byte and CPU per operation of the servers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use cairn_proto::etcd::PutRequest;
use cairn_proto::etcd::kv_client::KvClient;
use cairn_storaged::testkit::{ProcCluster, free_port, sibling_bin};
use clap::Parser;
use rand::{Rng, RngCore, SeedableRng};

#[derive(Parser)]
#[command(
    name = "cairn-bench",
    about = "storaged vs etcd vs the disk, measured in one run"
)]
struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Skip the etcd comparison.
    #[arg(long)]
    skip_etcd: bool,
    /// Skip the fio fsync baseline.
    #[arg(long)]
    skip_fio: bool,
    /// Directory for the data of fio, etcd and the storaged nodes (default: a temp dir
    /// under /var/tmp, on the same disk as CI builds).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Run only the storaged cases whose label contains this text (e.g. "r3 write 64KiB").
    #[arg(long)]
    only: Option<String>,
    /// Also measure this other storaged build (a before/after in one run): its cases run
    /// first, labelled `base`, on a cluster of their own. Repeat it for several builds
    /// (`base`, `base2`, …, e.g. the points of a bisection), each compared with this build
    /// and with the one before it.
    #[arg(long)]
    baseline: Vec<PathBuf>,
    /// Run the baselines in plaintext (`--insecure`): for a build from before mutual TLS, give
    /// a wrapper that drops that flag.
    #[arg(long, requires = "baseline")]
    baseline_insecure: bool,
    /// Also measure this build in plaintext (`--insecure`, labelled `plain`), beside its TLS
    /// cases: what TLS and authorization cost, in one run.
    #[arg(long)]
    plaintext_too: bool,
}

#[derive(Clone, Debug)]
struct Stats {
    label: String,
    ops: u64,
    bytes: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
    /// What the servers' processes spent on the case, and how many copies of each user
    /// byte they are meant to store (replicas, or etcd members).
    cost: Option<(Usage, u64)>,
}

/// Bytes a set of processes caused to be written to storage (`/proc/<pid>/io`
/// `write_bytes`, counted when a page is dirtied, so deferred flushes and compactions of
/// RocksDB's threads count too) and CPU seconds they used (`/proc/<pid>/stat`).
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    write_bytes: u64,
    cpu_secs: f64,
}

impl Usage {
    fn of(pids: &[u32]) -> Usage {
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        let mut u = Usage::default();
        for pid in pids {
            let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
            u.write_bytes += io
                .lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command name (which may hold spaces): utime, stime are 14, 15.
            if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                u.cpu_secs += (ticks(11) + ticks(12)) as f64 / hz;
            }
        }
        u
    }

    fn since(self, before: Usage) -> Usage {
        Usage {
            write_bytes: self.write_bytes.saturating_sub(before.write_bytes),
            cpu_secs: (self.cpu_secs - before.cpu_secs).max(0.0),
        }
    }
}

/// Runs `case` and charges `pids`' disk writes and CPU during it to its result.
async fn costed<Fut>(pids: &[u32], copies: u64, case: Fut) -> Stats
where
    Fut: std::future::Future<Output = Stats>,
{
    let before = Usage::of(pids);
    let mut s = case.await;
    s.cost = Some((Usage::of(pids).since(before), copies));
    s
}

impl Stats {
    fn iops(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    fn mbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
    /// Disk bytes written by the servers per user byte per copy (1.0: each copy written
    /// once), for cases that write.
    fn amplification(&self) -> Option<f64> {
        let (u, copies) = self.cost?;
        (self.bytes > 0 && !self.label.contains(" read "))
            .then(|| u.write_bytes as f64 / (self.bytes * copies) as f64)
    }
    /// Server CPU time per operation, all processes together.
    fn cpu_us_per_op(&self) -> Option<f64> {
        let (u, _) = self.cost?;
        (self.ops > 0).then(|| u.cpu_secs * 1e6 / self.ops as f64)
    }
    fn row(&self) -> String {
        let opt = |v: Option<f64>, prec: usize| {
            v.map_or_else(|| "-".to_string(), |v| format!("{v:.prec$}"))
        };
        format!(
            "{:<34} {:>10.0} {:>9.1} {:>9.2} {:>9.2} {:>6} {:>6} {:>8}",
            self.label,
            self.iops(),
            self.mbps(),
            self.p50_us as f64 / 1000.0,
            self.p99_us as f64 / 1000.0,
            self.errors,
            opt(self.amplification(), 2),
            opt(self.cpu_us_per_op(), 0),
        )
    }
}

/// Runs `qd` concurrent loops of `op` for `secs`, collecting per-op latency.
async fn drive<F, Fut>(label: String, qd: usize, secs: u64, bytes_per_op: u64, op: F) -> Stats
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..qd)
        .map(|w| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut first_error = None;
                let mut i = w as u64 * 1_000_003;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match op(i).await {
                        Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                    i += 1;
                }
                (lat, errors, first_error)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let (l, e, first) = t.await.expect("bench worker");
        all.extend(l);
        errors += e;
        first_error = first_error.or(first);
    }
    if let Some(e) = first_error {
        eprintln!("{label}: {errors} failed operations; the first: {e}");
    }
    let secs_taken = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Stats {
        label,
        ops: all.len() as u64,
        bytes: all.len() as u64 * bytes_per_op,
        secs: secs_taken,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
        cost: None,
    }
}

struct Etcd {
    children: Vec<Child>,
    client_addrs: Vec<String>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_etcd(dir: &Path) -> std::io::Result<Etcd> {
    let members: Vec<(String, u16, u16)> = (1..=3)
        .map(|i| (format!("e{i}"), free_port(), free_port()))
        .collect();
    let initial = members
        .iter()
        .map(|(n, _, p)| format!("{n}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for (name, cport, pport) in &members {
        let data = dir.join(name);
        std::fs::create_dir_all(&data)?;
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        children.push(
            Command::new("etcd")
                .args(["--name", name, "--data-dir"])
                .arg(&data)
                .args(["--listen-client-urls", &format!("http://127.0.0.1:{cport}")])
                .args([
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{cport}"),
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{pport}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{pport}"),
                ])
                .args([
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                ])
                .args([
                    "--quota-backend-bytes",
                    "8589934592",
                    "--log-level",
                    "error",
                ])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
    }
    Ok(Etcd {
        children,
        client_addrs: members
            .iter()
            .map(|(_, c, _)| format!("http://127.0.0.1:{c}"))
            .collect(),
    })
}

async fn bench_etcd(dir: &Path, secs: u64) -> Result<Vec<Stats>, String> {
    let etcd = start_etcd(dir).map_err(|e| format!("starting etcd: {e}"))?;
    let channel = tonic::transport::Endpoint::from_shared(etcd.client_addrs[0].clone())
        .map_err(|e| e.to_string())?
        .connect_lazy();
    let client = KvClient::new(channel).max_encoding_message_size(8 << 20);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let req = PutRequest {
            key: b"warmup".to_vec(),
            value: b"x".to_vec(),
            ..Default::default()
        };
        if client.clone().put(req).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            return Err("etcd did not become ready within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pids: Vec<u32> = etcd.children.iter().map(|c| c.id()).collect();
    let mut out = Vec::new();
    for (size, qd) in [(4096usize, 1usize), (4096, 64), (65536, 1), (65536, 64)] {
        let c = client.clone();
        let value = Arc::new(random_bytes(size));
        let label = format!("etcd put {}KiB @{qd}", size / 1024);
        let case = drive(label, qd, secs, size as u64, move |i| {
            let mut c = c.clone();
            let v = value.clone();
            async move {
                let req = PutRequest {
                    key: format!("k{}", i % 10_000).into_bytes(),
                    value: v.to_vec(),
                    ..Default::default()
                };
                c.put(req).await.map(|_| ()).map_err(|e| e.to_string())
            }
        });
        out.push(costed(&pids, 3, case).await);
    }
    drop(etcd);
    Ok(out)
}

fn fio_baseline(dir: &Path, secs: u64) -> Option<Stats> {
    let out = Command::new("fio")
        .args([
            "--name=fsync4k",
            "--rw=randwrite",
            "--bs=4k",
            "--fsync=1",
            "--size=64m",
            "--ioengine=psync",
        ])
        .arg(format!("--directory={}", dir.display()))
        .args([
            &format!("--runtime={secs}"),
            "--time_based",
            "--output-format=json",
        ])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let w = &v["jobs"][0]["write"];
    let iops = w["iops"].as_f64()?;
    // fio times the write and its fsync apart (`write.clat_ns`, `sync.lat_ns`); a
    // durable write takes both, so the percentiles shown are their sum.
    let sync = &v["jobs"][0]["sync"]["lat_ns"]["percentile"];
    let pct = |k: &str| {
        (w["clat_ns"]["percentile"][k].as_u64().unwrap_or(0) + sync[k].as_u64().unwrap_or(0)) / 1000
    };
    Some(Stats {
        label: "disk: fio 4KiB write+fsync @1".into(),
        ops: (iops * secs as f64) as u64,
        bytes: (iops * secs as f64) as u64 * 4096,
        secs: secs as f64,
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        errors: 0,
        cost: None,
    })
}

async fn bench_storaged(
    dir: &Path,
    bin: &Path,
    prefix: &str,
    secs: u64,
    only: Option<&str>,
    insecure: bool,
) -> Result<Vec<Stats>, String> {
    let wanted = |label: &str| only.is_none_or(|o| label.contains(o));
    let extra: &[&str] = if insecure { &["--insecure"] } else { &[] };
    let cluster =
        ProcCluster::start_in(dir, bin, 3, extra).map_err(|e| format!("starting storaged: {e}"))?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let client: VolumeClient = cluster.client();
    let pids: Vec<u32> = (1..=3).filter_map(|id| cluster.pid(id)).collect();
    let size: u64 = 1 << 30;
    let mut out = Vec::new();
    for replicas in [1u32, 3] {
        let name = format!("bench-r{replicas}");
        client
            .create_volume(pb::CreateVolumeRequest {
                name: name.clone(),
                size_bytes: size,
                replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        cluster
            .volume_leader(&name, Duration::from_secs(20))
            .await?;
        for (bs, qd) in [
            (4096u64, 1usize),
            (4096, 32),
            (4096, 64),
            (65536, 1),
            (65536, 32),
            (65536, 64),
        ] {
            let c = client.clone();
            let n = name.clone();
            let data = bytes::Bytes::from(random_bytes(bs as usize));
            let label = format!("{prefix}storaged r{replicas} write {}KiB @{qd}", bs / 1024);
            if !wanted(&label) {
                continue;
            }
            let case = drive(label, qd, secs, bs, move |i| {
                let c = c.clone();
                let n = n.clone();
                let d = data.clone();
                let mut rng = rand::rngs::StdRng::seed_from_u64(i);
                let off = rng.random_range(0..size / bs) * bs;
                async move { c.write(&n, off, d).await.map_err(|e| e.to_string()) }
            });
            out.push(costed(&pids, u64::from(replicas), case).await);
        }
        // Reads at 1 in flight: one client round trip to the leader, the floor under
        // every write's latency.
        for qd in [1usize, 32] {
            let c = client.clone();
            let n = name.clone();
            let label = format!("{prefix}storaged r{replicas} read 4KiB @{qd}");
            if !wanted(&label) {
                continue;
            }
            let case = drive(label, qd, secs, 4096, move |i| {
                let c = c.clone();
                let n = n.clone();
                let mut rng = rand::rngs::StdRng::seed_from_u64(i);
                let off = rng.random_range(0..(64 << 20) / 4096) * 4096;
                async move {
                    c.read(&n, off, 4096)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            });
            out.push(costed(&pids, u64::from(replicas), case).await);
        }
    }
    Ok(out)
}

/// Incompressible payloads, so neither store gains from compression.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

fn find<'a>(all: &'a [Stats], label: &str) -> Option<&'a Stats> {
    all.iter().find(|s| s.label == label)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let args = Args::parse();
    let root = match &args.dir {
        Some(d) => tempfile::Builder::new()
            .prefix("cairn-bench-")
            .tempdir_in(d),
        None => tempfile::Builder::new()
            .prefix("cairn-bench-")
            .tempdir_in("/var/tmp"),
    }
    .expect("bench temp dir");
    let mut all = Vec::new();
    if !args.skip_fio {
        eprintln!("== fio fsync baseline ({} s)", args.seconds);
        match fio_baseline(root.path(), args.seconds) {
            Some(s) => all.push(s),
            None => eprintln!("fio not available: baseline skipped"),
        }
    }
    if !args.skip_etcd {
        eprintln!(
            "== etcd, 3 members on loopback ({} s per case)",
            args.seconds
        );
        match bench_etcd(root.path(), args.seconds).await {
            Ok(s) => all.extend(s),
            Err(e) => eprintln!("etcd skipped: {e}"),
        }
    }
    eprintln!(
        "== storaged, 3 nodes on loopback ({} s per case)",
        args.seconds
    );
    let mut builds = Vec::new();
    let base_prefixes: Vec<String> = (1..=args.baseline.len())
        .map(|i| match i {
            1 => "base ".to_string(),
            i => format!("base{i} "),
        })
        .collect();
    for (base, prefix) in args.baseline.iter().zip(&base_prefixes) {
        builds.push((base.clone(), prefix.as_str(), args.baseline_insecure));
    }
    if args.plaintext_too {
        builds.push((sibling_bin("storaged"), "plain ", true));
    }
    builds.push((sibling_bin("storaged"), "", false));
    for (bin, prefix, insecure) in builds {
        let only = args.only.as_deref();
        match bench_storaged(root.path(), &bin, prefix, args.seconds, only, insecure).await {
            Ok(s) => all.extend(s),
            Err(e) => {
                eprintln!("storaged benchmark ({}) failed: {e}", bin.display());
                std::process::exit(1);
            }
        }
    }
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>9} {:>6} {:>6} {:>8}",
        "case", "ops/s", "MB/s", "p50 ms", "p99 ms", "errors", "amp", "cpu µs"
    );
    for s in &all {
        println!("{}", s.row());
    }
    let pairs = [
        ("storaged r3 write 4KiB @1", "etcd put 4KiB @1"),
        ("storaged r3 write 4KiB @64", "etcd put 4KiB @64"),
        ("storaged r3 write 64KiB @1", "etcd put 64KiB @1"),
        ("storaged r3 write 64KiB @64", "etcd put 64KiB @64"),
    ];
    println!(
        "\namp: disk bytes the servers wrote ÷ (user bytes × copies); cpu µs: server CPU per op"
    );
    println!("\nratio of bytes/s, storaged (3 replicas) ÷ etcd (3 members), same run:");
    let prefixes = base_prefixes.iter().map(String::as_str);
    for prefix in prefixes.chain(["plain ", ""]) {
        for (a, b) in pairs {
            let a = format!("{prefix}{a}");
            if let (Some(x), Some(y)) = (find(&all, &a), find(&all, b)) {
                println!(
                    "  {a:<35} ÷ {b:<20} = {:.2}x",
                    x.mbps() / y.mbps().max(1e-9)
                );
            }
        }
    }
    // A plaintext baseline is compared with this build in plaintext when both ran.
    let (now, both) = if args.baseline_insecure && args.plaintext_too {
        ("plain ", ", both plaintext")
    } else {
        ("", "")
    };
    let mut comparisons: Vec<(&str, &str, String)> = Vec::new();
    for (i, base) in base_prefixes.iter().enumerate() {
        let which = base.trim();
        comparisons.push((
            now,
            base,
            format!(
                "this build ÷ {which} ({}){both}",
                args.baseline[i].display()
            ),
        ));
        if i > 0 {
            let before = base_prefixes[i - 1].as_str();
            comparisons.push((base, before, format!("{which} ÷ {}", before.trim())));
        }
    }
    comparisons.push(("", "plain ", "TLS ÷ plaintext".into()));
    for (now_prefix, prefix, what) in &comparisons {
        let rows: Vec<_> = all
            .iter()
            .filter(|s| s.label.starts_with(&format!("{now_prefix}storaged ")))
            .filter_map(|s| {
                let case = s.label.strip_prefix(now_prefix)?;
                Some((s, find(&all, &format!("{prefix}{case}"))?))
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        println!("\n{what}, same run (ops/s ratio; server CPU per op ratio):");
        for (now, other) in rows {
            let cpu = match (now.cpu_us_per_op(), other.cpu_us_per_op()) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            };
            println!(
                "  {:<34} {:.2}x  cpu {cpu}",
                now.label,
                now.iops() / other.iops().max(1e-9)
            );
        }
    }
}
