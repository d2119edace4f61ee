//! The FUSE frontend end to end: a real FUSE mount, a real loop device, real mkfs.ext4 and
//! mount, data surviving detach and re-attach, raw direct I/O, and online growth.

mod frontend_support;

use std::sync::Arc;

use cairn_proto::cairn::v1::Frontend;
use cairn_storaged::frontend::attach::AttachManager;
use frontend_support::{Cleanup, FakeOpener, MemDevice, random_bytes, sh};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ext4_on_fuse_loop_survives_detach_and_reattach() {
    let tmp = tempfile::tempdir().unwrap();
    let opener = Arc::new(FakeOpener::default());
    let dev = MemDevice::new(64 * MIB);
    opener.add_replicated("vol-ext4", dev.clone());
    let mgr = AttachManager::new(opener.clone(), tmp.path().join("run"));
    let _cleanup = Cleanup::new(tmp.path());
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let content = random_bytes(3 * MIB as usize + 123);
    std::fs::write(tmp.path().join("expected"), &content).unwrap();

    let a = mgr
        .attach("vol-ext4", Frontend::Fuse, false, 0)
        .await
        .unwrap();
    assert_eq!(a.frontend(), Frontend::Fuse);
    assert!(a.device_path.starts_with("/dev/loop"), "{a:?}");
    assert_eq!(a.size_bytes, 64 * MIB);
    let dio = sh(&format!("losetup -n -O DIO {}", a.device_path)).await;
    assert_eq!(dio.trim(), "1", "the loop device should use direct I/O");

    sh(&format!("mkfs.ext4 -q -F {}", a.device_path)).await;
    sh(&format!("mount {} {}", a.device_path, mnt.display())).await;
    sh(&format!(
        "cp {}/expected {}/data.bin && sync",
        tmp.path().display(),
        mnt.display()
    ))
    .await;
    sh(&format!("umount {}", mnt.display())).await;
    mgr.detach("vol-ext4").await.unwrap();
    let disk = tmp.path().join("run/fuse/vol-ext4/disk");
    assert_eq!(
        sh(&format!("losetup -j {}", disk.display())).await,
        "",
        "loop device left behind"
    );
    assert!(mgr.get("vol-ext4").is_none());
    assert!(
        dev.allocated_blocks() > 0,
        "data must have reached the device"
    );
    assert!(
        dev.flushes.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "sync must reach flush"
    );

    let b = mgr
        .attach("vol-ext4", Frontend::Unspecified, false, 0)
        .await
        .unwrap();
    sh(&format!("mount {} {}", b.device_path, mnt.display())).await;
    let got = std::fs::read(mnt.join("data.bin")).unwrap();
    assert!(got == content, "file content differs after re-attach");
    sh(&format!(
        "cmp {}/expected {}/data.bin",
        tmp.path().display(),
        mnt.display()
    ))
    .await;
    sh(&format!("umount {}", mnt.display())).await;
    mgr.detach("vol-ext4").await.unwrap();
    assert!(mgr.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raw_direct_io_through_loop_reaches_the_device() {
    let tmp = tempfile::tempdir().unwrap();
    let opener = Arc::new(FakeOpener::default());
    let dev = MemDevice::new(32 * MIB);
    opener.add_replicated("vol-raw", dev.clone());
    let mgr = AttachManager::new(opener.clone(), tmp.path().join("run"));
    let _cleanup = Cleanup::new(tmp.path());
    let src = tmp.path().join("src.bin");
    let content = random_bytes(8 * MIB as usize);
    std::fs::write(&src, &content).unwrap();

    let a = mgr
        .attach("vol-raw", Frontend::Fuse, false, 0)
        .await
        .unwrap();
    // 1 MiB into the device, direct, 256 KiB requests.
    sh(&format!(
        "dd if={} of={} bs=256k seek=4 oflag=direct conv=fsync status=none",
        src.display(),
        a.device_path
    ))
    .await;
    assert!(
        dev.bytes(MIB, 8 * MIB) == content,
        "device bytes differ from what dd wrote"
    );
    let back = tmp.path().join("back.bin");
    sh(&format!(
        "dd if={} of={} bs=1M skip=1 count=8 iflag=direct status=none",
        a.device_path,
        back.display()
    ))
    .await;
    let sums = sh(&format!(
        "sha256sum {} {} | cut -d' ' -f1",
        src.display(),
        back.display()
    ))
    .await;
    let sums: Vec<&str> = sums.lines().collect();
    assert_eq!(sums[0], sums[1], "checksums differ");
    // Unaligned-to-4k but sector-aligned direct writes (512 bytes) work too.
    sh(&format!(
        "printf 'A%.0s' $(seq 512) | dd of={} bs=512 seek=3 oflag=direct status=none",
        a.device_path
    ))
    .await;
    assert_eq!(dev.bytes(3 * 512, 512), vec![b'A'; 512]);
    // Discard through the loop device punches the range out of the device.
    sh(&format!(
        "blkdiscard -o {} -l {} {}",
        MIB,
        4 * MIB,
        a.device_path
    ))
    .await;
    assert!(
        dev.bytes(MIB, 4 * MIB).iter().all(|&b| b == 0),
        "discarded range must read as zeros"
    );
    mgr.detach("vol-raw").await.unwrap();
    mgr.detach("vol-raw").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_size_grows_the_loop_device() {
    let tmp = tempfile::tempdir().unwrap();
    let opener = Arc::new(FakeOpener::default());
    let dev = MemDevice::new(16 * MIB);
    opener.add_replicated("vol-grow", dev.clone());
    let mgr = AttachManager::new(opener.clone(), tmp.path().join("run"));
    let _cleanup = Cleanup::new(tmp.path());
    let a = mgr
        .attach("vol-grow", Frontend::Fuse, false, 0)
        .await
        .unwrap();
    assert_eq!(
        sh(&format!("blockdev --getsize64 {}", a.device_path))
            .await
            .trim(),
        (16 * MIB).to_string()
    );
    dev.grow(48 * MIB);
    let b = mgr.refresh_size("vol-grow").await.unwrap();
    assert_eq!(b.size_bytes, 48 * MIB);
    assert_eq!(b.device_path, a.device_path);
    assert_eq!(
        sh(&format!("blockdev --getsize64 {}", a.device_path))
            .await
            .trim(),
        (48 * MIB).to_string()
    );
    // The new tail is writable.
    sh(&format!(
        "dd if=/dev/zero bs=1M count=1 seek=47 of={} oflag=direct status=none",
        a.device_path
    ))
    .await;
    mgr.detach("vol-grow").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readonly_attach_refuses_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let opener = Arc::new(FakeOpener::default());
    let dev = MemDevice::new(8 * MIB);
    opener.add_replicated("vol-ro", dev.clone());
    let mgr = AttachManager::new(opener.clone(), tmp.path().join("run"));
    let _cleanup = Cleanup::new(tmp.path());
    let a = mgr.attach("vol-ro", Frontend::Fuse, true, 0).await.unwrap();
    assert!(a.readonly);
    assert_eq!(
        sh(&format!("blockdev --getro {}", a.device_path))
            .await
            .trim(),
        "1"
    );
    let out = tokio::process::Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", a.device_path),
            "bs=4k",
            "count=1",
            "oflag=direct",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "a write to a readonly device must fail"
    );
    sh(&format!(
        "dd if={} of=/dev/null bs=1M iflag=direct status=none",
        a.device_path
    ))
    .await;
    mgr.detach("vol-ro").await.unwrap();
    assert_eq!(dev.allocated_blocks(), 0);
}
