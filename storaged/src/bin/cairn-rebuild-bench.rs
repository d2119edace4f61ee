//! `cairn-rebuild-bench`: how fast a lost replica of a 3-replica volume is rebuilt, at the
//! default `--rebuild-rate` and unlimited, and what 4 KiB random writes to another volume keep.
//!
//! Per rate, on a cluster of 4 nodes of its own: 4 KiB random-write IOPS on volume `fg`
//! alone, then a member of volume `rb` (with `--written` bytes) is killed and the rebuild
//! timed from its first progress to a whole volume, with `fg`'s IOPS measured meanwhile.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use cairn_storaged::testkit::{ProcCluster, sibling_bin};
use clap::Parser;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(
    name = "cairn-rebuild-bench",
    about = "rebuild speed and foreground IOPS during a rebuild"
)]
struct Args {
    /// Bytes written to the volume that is rebuilt.
    #[arg(long, default_value = "1GiB")]
    written: String,
    /// Seconds of each foreground IOPS measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Foreground writes in flight.
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// `--rebuild-rate` values to measure (`unlimited` is 1 TiB/s).
    #[arg(long, value_delimiter = ',', default_value = "100MiB,unlimited")]
    rates: Vec<String>,
    /// Directory for fio's file and the nodes' data (default: a temp dir under /var/tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const FG_SIZE: u64 = 256 << 20;
const PIECE: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(900);

/// The disk's sequential write speed in bytes a second (fio, 1 GiB, direct, 4 MiB blocks).
fn disk_seq_write(dir: &Path) -> Option<f64> {
    let out = std::process::Command::new("fio")
        .args([
            "--name=seq",
            "--rw=write",
            "--bs=4M",
            "--size=1G",
            "--direct=1",
        ])
        .args(["--end_fsync=1", "--output-format=json"])
        .arg(format!("--filename={}", dir.join("fio.seq").display()))
        .output()
        .ok()?;
    let _ = std::fs::remove_file(dir.join("fio.seq"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["jobs"][0]["write"]["bw_bytes"].as_f64()
}

/// Writes `bytes` of random data to `vol` in 1 MiB pieces, 8 at a time.
async fn fill(client: &VolumeClient, vol: &str, bytes: u64) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..8u64)
        .map(|w| {
            let (client, vol, next) = (client.clone(), vol.to_string(), next.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(w);
                let mut data = vec![0u8; PIECE];
                loop {
                    let off = next.fetch_add(PIECE as u64, Ordering::Relaxed);
                    if off >= bytes {
                        return Ok::<_, String>(());
                    }
                    rng.fill(&mut data[..]);
                    client
                        .write(&vol, off, bytes::Bytes::from(data.clone()))
                        .await
                        .map_err(|e| format!("write {vol}@{off}: {e}"))?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// 4 KiB random writes to `vol`, `qd` in flight, for `secs` (or until `stop`): ops a second.
async fn iops(client: &VolumeClient, vol: &str, qd: usize, secs: u64, stop: &AtomicBool) -> f64 {
    let ops = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let block = bytes::Bytes::from(vec![0x5au8; 4096]);
    let workers = (0..qd).map(|w| {
        let (client, ops, block) = (client.clone(), ops.clone(), block.clone());
        async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                let off = rng.random_range(0..FG_SIZE / 4096) * 4096;
                if client.write(vol, off, block.clone()).await.is_ok() {
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    futures::future::join_all(workers).await;
    ops.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

struct Measured {
    rate: String,
    /// Until the snapshot stream ended (its progress no longer reported).
    streamed: Duration,
    rebuild: Duration,
    fg_alone: f64,
    fg_during: f64,
    /// Whether the rebuild outlasted the foreground measurement.
    covered: bool,
}

async fn measure(args: &Args, dir: &Path, rate: &str, written: u64) -> Result<Measured, String> {
    let flag = if rate == "unlimited" { "1TiB" } else { rate };
    let bin = sibling_bin("storaged");
    let extra = [
        "--replica-down-timeout",
        "3s",
        "--rebuild-rate",
        flag,
        "--snapshot-logs",
        "64",
    ];
    let mut c = ProcCluster::start_in(dir, &bin, 4, &extra).map_err(|e| e.to_string())?;
    c.wait_ready(Duration::from_secs(60)).await?;
    let client = c.client();
    let create = |name: &str, size: u64| {
        let client = client.clone();
        let name = name.to_string();
        async move {
            client
                .create_volume(pb::CreateVolumeRequest {
                    name,
                    size_bytes: size,
                    replicas: 3,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())
        }
    };
    let rb = create("rb", written.next_multiple_of(1 << 20)).await?;
    let fg = create("fg", FG_SIZE).await?;
    eprintln!("[{rate}] writing {written} bytes to rb");
    fill(&client, "rb", written).await?;
    fill(&client, "fg", 16 << 20).await?;
    let never = AtomicBool::new(false);
    let fg_alone = iops(&client, "fg", args.qd, args.seconds, &never).await;

    // A member of rb that is not the meta leader, outside fg if there is one.
    let meta = client
        .cluster_status()
        .await
        .map_err(|e| e.to_string())?
        .meta_leader_id;
    let in_fg = |id: u64| fg.members.iter().any(|m| m.node_id == id);
    let candidates: Vec<u64> = rb
        .members
        .iter()
        .map(|m| m.node_id)
        .filter(|id| *id != meta)
        .collect();
    let victim = *candidates
        .iter()
        .find(|id| !in_fg(**id))
        .or(candidates.first())
        .ok_or("no member of rb to kill")?;
    c.kill9(victim);
    let deadline = Instant::now() + LIMIT;
    while !client.get_volume("rb").await.is_ok_and(|v| {
        v.members
            .iter()
            .any(|m| m.rebuild.is_some_and(|p| p.copied_bytes > 0))
    }) {
        if Instant::now() > deadline {
            return Err("rb's rebuild never started".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let done = AtomicBool::new(false);
    let whole = async {
        let mut streamed = None;
        loop {
            let v = client.get_volume("rb").await;
            if streamed.is_none()
                && v.as_ref()
                    .is_ok_and(|v| v.members.iter().all(|m| m.rebuild.is_none()))
            {
                streamed = Some(started.elapsed());
            }
            if let Ok(v) = v
                && v.health() == pb::VolumeHealth::Healthy
                && v.members.len() == 3
                && v.members.iter().all(|m| m.node_id != victim)
            {
                let took = started.elapsed();
                done.store(true, Ordering::Relaxed);
                return Ok((streamed.unwrap_or(took), took));
            }
            if Instant::now() > deadline {
                return Err("rb not whole again".to_string());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (rebuild, fg_during) =
        tokio::join!(whole, iops(&client, "fg", args.qd, args.seconds, &done));
    let (streamed, rebuild) = rebuild?;
    Ok(Measured {
        rate: rate.to_string(),
        streamed,
        rebuild,
        fg_alone,
        fg_during,
        covered: rebuild >= Duration::from_secs(args.seconds),
    })
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let written = parse_size::parse_size(&args.written).expect("--written: a size such as 1GiB");
    let tmp = tempfile::Builder::new()
        .prefix("cairn-rebuild-bench")
        .tempdir_in(args.dir.clone().unwrap_or_else(|| "/var/tmp".into()))
        .expect("a temp dir");
    let disk = disk_seq_write(tmp.path());
    let mib = |b: f64| b / (1 << 20) as f64;
    match disk {
        Some(d) => println!(
            "disk sequential write (fio, 4 MiB direct): {:.0} MiB/s",
            mib(d)
        ),
        None => println!("disk sequential write: fio did not run"),
    }
    println!(
        "| --rebuild-rate | {} written: streamed in | rebuilt in | MiB/s | of disk | fg 4k IOPS alone | during rebuild | ratio |",
        args.written
    );
    println!("|---|---|---|---|---|---|---|---|");
    for rate in &args.rates {
        match measure(&args, tmp.path(), rate, written).await {
            Ok(m) => {
                let speed = written as f64 / m.rebuild.as_secs_f64();
                println!(
                    "| {} | {:.1} s | {:.1} s | {:.0} | {} | {:.0} | {:.0}{} | {:.0} % |",
                    m.rate,
                    m.streamed.as_secs_f64(),
                    m.rebuild.as_secs_f64(),
                    mib(speed),
                    disk.map_or("-".into(), |d| format!("{:.0} %", 100.0 * speed / d)),
                    m.fg_alone,
                    m.fg_during,
                    if m.covered {
                        ""
                    } else {
                        " (rebuild shorter than the window)"
                    },
                    100.0 * m.fg_during / m.fg_alone.max(1.0),
                );
            }
            Err(e) => println!("| {rate} | failed: {e} | | | | | | |"),
        }
    }
}
