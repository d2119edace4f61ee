//! Throughput of the FUSE + loop path on an in-memory device against a loop device on a plain
//! file, measured in the same run. Not a pass/fail test: run it with `--ignored --nocapture`.

mod frontend_support;

use std::sync::Arc;

use cairn_proto::cairn::v1::Frontend;
use cairn_storaged::frontend::attach::AttachManager;
use frontend_support::{Cleanup, FakeOpener, MemDevice, sh};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 512 * MIB;

/// Runs fio against `dev` and returns (label, MiB/s or IOPS) rows.
async fn fio(dev: &str) -> Vec<(String, String)> {
    let jobs = [
        ("seq write 1M qd8", "write", "1M", "bw"),
        ("seq read 1M qd8", "read", "1M", "bw"),
        ("rand write 4k qd32", "randwrite", "4k", "iops"),
        ("rand read 4k qd32", "randread", "4k", "iops"),
    ];
    let mut out = Vec::new();
    for (label, rw, bs, metric) in jobs {
        let depth = if bs == "1M" { 8 } else { 32 };
        let json = sh(&format!(
            "fio --name=b --filename={dev} --rw={rw} --bs={bs} --iodepth={depth} --ioengine=libaio --direct=1 \
             --size={SIZE} --runtime=8 --time_based --output-format=json"
        ))
        .await;
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let side = if rw.contains("read") { "read" } else { "write" };
        let job = &v["jobs"][0][side];
        let value = if metric == "bw" {
            format!(
                "{:.0} MiB/s",
                job["bw_bytes"].as_f64().unwrap() / MIB as f64
            )
        } else {
            format!("{:.0} IOPS", job["iops"].as_f64().unwrap())
        };
        out.push((label.to_string(), value));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn fuse_loop_vs_plain_loop() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let opener = Arc::new(FakeOpener::default());
    opener.add_replicated("bench", MemDevice::new(SIZE));
    let mgr = AttachManager::new(opener.clone(), tmp.path().join("run"));
    let _cleanup = Cleanup::new(tmp.path());

    let a = mgr.attach("bench", Frontend::Fuse, false, 0).await.unwrap();
    let fuse = fio(&a.device_path).await;
    mgr.detach("bench").await.unwrap();

    let file = tmp.path().join("plain.img");
    sh(&format!("fallocate -l {SIZE} {}", file.display())).await;
    let dev = sh(&format!(
        "losetup --find --show --direct-io=on {}",
        file.display()
    ))
    .await;
    let plain = fio(dev.trim()).await;
    sh(&format!("losetup -d {}", dev.trim())).await;

    println!(
        "\n{:<22} {:>16} {:>16}",
        "job", "fuse+loop (mem)", "loop on file"
    );
    for ((label, f), (_, p)) in fuse.iter().zip(&plain) {
        println!("{label:<22} {f:>16} {p:>16}");
    }
}
