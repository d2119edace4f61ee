//! The NBD frontend against real NBD clients: `qemu-io`, `qemu-img` and `qemu-nbd --list`;
//! and the frontend processes' data socket, from qemu-io and from their own client.

mod frontend_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_proto::cairn::v1::Frontend;
use cairn_storaged::frontend::BlockDevice;
use cairn_storaged::frontend::attach::AttachManager;
use cairn_storaged::frontend::nbd_client::NbdDevice;
use cairn_storaged::frontend::nbd_local::{LocalNbd, export_name};
use frontend_support::{Cleanup, FakeOpener, MemDevice, random_bytes, sh};

const MIB: u64 = 1 << 20;

async fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    qemu_io_with("", uri, cmds).await
}

async fn qemu_io_with(flags: &str, uri: &str, cmds: &[&str]) -> String {
    let mut script = format!("qemu-io {flags} -f raw '{uri}'");
    for c in cmds {
        script.push_str(&format!(" -c '{c}'"));
    }
    let out = sh(&script).await;
    assert!(
        !out.contains("fail") && !out.contains("error"),
        "qemu-io reported a failure:\n{out}"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_reads_and_writes_the_export() {
    let tmp = tempfile::tempdir().unwrap();
    let opener = Arc::new(FakeOpener::default());
    let dev = MemDevice::new(32 * MIB);
    opener.add_replicated("vol-nbd", dev.clone());
    let mgr = AttachManager::new(opener.clone(), tmp.path().join("run"));
    let _cleanup = Cleanup::new(tmp.path());

    let a = mgr
        .attach("vol-nbd", Frontend::Nbd, false, 0)
        .await
        .unwrap();
    assert_eq!(a.frontend(), Frontend::Nbd);
    assert_eq!(a.device_path, "", "no kernel NBD client here");
    assert!(
        a.nbd_uri.starts_with("nbd://127.0.0.1:") && a.nbd_uri.ends_with("/vol-nbd"),
        "{a:?}"
    );
    assert_eq!(
        mgr.attach("vol-nbd", Frontend::Nbd, false, 0)
            .await
            .unwrap(),
        a
    );

    qemu_io(&a.nbd_uri, &["write -P 0xab 0 64k", "read -P 0xab 0 64k"]).await;
    assert_eq!(dev.bytes(0, 64 << 10), vec![0xab; 64 << 10]);
    // Unaligned, FUA, write-zeroes, discard and flush.
    qemu_io(
        &a.nbd_uri,
        &[
            "write -P 0xcd 1000 3000",
            "write -f -P 0xee 1M 4k",
            "write -z 8k 8k",
            "discard 32k 32k",
            "flush",
        ],
    )
    .await;
    assert_eq!(dev.bytes(1000, 3000), vec![0xcd; 3000]);
    assert_eq!(dev.bytes(999, 1), vec![0xab]);
    assert_eq!(dev.bytes(MIB, 4096), vec![0xee; 4096]);
    assert!(dev.bytes(8 << 10, 8 << 10).iter().all(|&b| b == 0));
    assert!(dev.bytes(32 << 10, 32 << 10).iter().all(|&b| b == 0));
    assert!(
        dev.flushes.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "FUA and flush must flush"
    );
    qemu_io(
        &a.nbd_uri,
        &[
            "read -P 0xcd 1000 3000",
            "read -P 0 8k 8k",
            "read -P 0xee 1M 4k",
        ],
    )
    .await;

    let info = sh(&format!("qemu-img info --output=json '{}'", a.nbd_uri)).await;
    assert!(
        info.contains(&format!("\"virtual-size\": {}", 32 * MIB)),
        "{info}"
    );
    let list = sh(&format!(
        "qemu-nbd --list --bind=127.0.0.1 --port={}",
        a.nbd_uri
            .split(':')
            .nth(2)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
    ))
    .await;
    assert!(list.contains("vol-nbd"), "{list}");

    // A whole image in and out with qemu-img's parallel, out-of-order writes.
    let src = tmp.path().join("src.img");
    let content = random_bytes(32 * MIB as usize);
    std::fs::write(&src, &content).unwrap();
    sh(&format!(
        "qemu-img convert -n -W -m 16 -f raw -O raw {} '{}'",
        src.display(),
        a.nbd_uri
    ))
    .await;
    assert!(
        dev.bytes(0, 32 * MIB) == content,
        "device differs from the converted image"
    );
    let out = tmp.path().join("out.img");
    sh(&format!(
        "qemu-img convert -f raw -O raw '{}' {}",
        a.nbd_uri,
        out.display()
    ))
    .await;
    sh(&format!("cmp {} {}", src.display(), out.display())).await;

    // An unknown export name is refused.
    let bad = a.nbd_uri.replace("/vol-nbd", "/nope");
    let res = tokio::process::Command::new("qemu-io")
        .args(["-f", "raw", &bad, "-c", "read 0 512"])
        .output()
        .await
        .unwrap();
    assert!(!res.status.success(), "unknown export must be refused");

    mgr.detach("vol-nbd").await.unwrap();
    let res = tokio::process::Command::new("qemu-io")
        .args(["-f", "raw", &a.nbd_uri, "-c", "read 0 512"])
        .output()
        .await
        .unwrap();
    assert!(
        !res.status.success(),
        "the export must be gone after detach"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_export_refuses_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let opener = Arc::new(FakeOpener::default());
    let dev = MemDevice::new(4 * MIB);
    opener.add_replicated("vol-nbd-ro", dev.clone());
    let mgr = AttachManager::new(opener.clone(), tmp.path().join("run"));
    let a = mgr
        .attach("vol-nbd-ro", Frontend::Nbd, true, 0)
        .await
        .unwrap();
    qemu_io_with("-r", &a.nbd_uri, &["read -P 0 0 64k"]).await;
    let res = tokio::process::Command::new("qemu-io")
        .args(["-f", "raw", &a.nbd_uri, "-c", "write -P 1 0 4k"])
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&res.stdout).to_string() + &String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success()
            || text.contains("ermission")
            || text.contains("read-only")
            || text.contains("failed"),
        "{text}"
    );
    assert_eq!(dev.allocated_blocks(), 0);
    mgr.detach("vol-nbd-ro").await.unwrap();
}

/// The frontend processes' data socket (`nbd_local.rs`) speaks NBD to a real client: qemu-io
/// writes and reads a volume through it by the export name `<volume>@<generation>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_uses_the_local_data_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let opener = Arc::new(FakeOpener::default());
    let dev = MemDevice::new(8 * MIB);
    opener.add_replicated("vol-sock", dev.clone());
    let server = LocalNbd::start(tmp.path(), opener).unwrap();
    let uri = format!(
        "nbd+unix:///{}?socket={}",
        export_name("vol-sock", 3, false),
        server.path().display()
    );
    qemu_io(&uri, &["write -P 0x5a 4096 8192", "read -P 0x5a 4096 8192"]).await;
    assert_eq!(dev.bytes(4096, 8192), vec![0x5a; 8192]);
    // A read-only export refuses writes; an unknown volume is no export at all.
    let ro = format!(
        "nbd+unix:///{}?socket={}",
        export_name("vol-sock", 3, true),
        server.path().display()
    );
    let out = sh(&format!(
        "qemu-io -f raw '{ro}' -c 'write 0 4096' 2>&1 || true"
    ))
    .await;
    assert!(
        out.contains("Permission denied") || out.contains("failed"),
        "a writable open of a read-only export: {out}"
    );
    qemu_io_with("-r", &ro, &["read -P 0x5a 4096 8192"]).await;
    let out = sh(&format!(
        "qemu-io -f raw 'nbd+unix:///nope@0?socket={}' -c 'read 0 512' 2>&1 || true",
        server.path().display()
    ))
    .await;
    assert!(
        !out.contains("read 512/512"),
        "an unknown volume was served: {out}"
    );
}

/// The frontend's client of that socket: I/O round trips, survives the server going away and
/// coming back (a storaged restart), and without a server fails at its deadline, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frontend_client_reconnects_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let opener = Arc::new(FakeOpener::default());
    let dev = MemDevice::new(8 * MIB);
    opener.add_replicated("vol-re", dev.clone());
    let server = LocalNbd::start(tmp.path(), opener.clone()).unwrap();
    let socket = server.path().to_path_buf();
    let client = Arc::new(NbdDevice::new(
        socket.clone(),
        "vol-re",
        8 * MIB,
        0,
        false,
        Duration::from_secs(20),
        None,
    ));
    client
        .write(8192, Bytes::from(vec![0x11; 4096]))
        .await
        .unwrap();
    assert_eq!(client.read(8192, 4096).await.unwrap(), vec![0x11; 4096]);

    // The server goes (its connections close); a write waits for the next one.
    drop(server);
    let c = client.clone();
    let pending = tokio::spawn(async move { c.write(0, Bytes::from(vec![0x22; 4096])).await });
    let server = LocalNbd::start(tmp.path(), opener.clone()).unwrap();
    pending.await.unwrap().expect("the write after the restart");
    assert_eq!(dev.bytes(0, 4096), vec![0x22; 4096]);
    assert_eq!(client.read(8192, 4096).await.unwrap(), vec![0x11; 4096]);

    // No server and no fallback: the request fails once its deadline has passed.
    drop(server);
    let short = NbdDevice::new(
        socket,
        "vol-re",
        8 * MIB,
        0,
        false,
        Duration::from_millis(600),
        None,
    );
    let started = Instant::now();
    let err = short.read(0, 4096).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(600), "{err}");
    assert!(err.to_string().contains("no answer"), "{err}");
}
