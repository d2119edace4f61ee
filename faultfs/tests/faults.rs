//! Disk faults through a real FUSE mount: EIO on a chosen operation and path, ENOSPC after a
//! byte budget, a delayed fsync, and the same driven through the control socket.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::time::{Duration, Instant};

use cairn_faultfs::Op;
use cairn_faultfs::control::{ControlServer, send};
use common::Fixture;

fn open_rw(fx: &Fixture, rel: &str) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(fx.path(rel))
        .unwrap()
}

#[test]
fn eio_on_fsync_reaches_the_writer_and_keeps_the_data_unsynced() {
    let fx = Fixture::new();
    fx.mount.eio(Op::Fsync, Some("*.log"));
    let mut log = open_rw(&fx, "wal.log");
    let mut other = open_rw(&fx, "data");
    log.write_all(b"entry").unwrap();
    other.write_all(b"other").unwrap();
    let err = log.sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    other.sync_all().unwrap();
    assert_eq!(
        common::read(&fx.backing("wal.log")).as_deref(),
        Some(&b""[..])
    );
    assert_eq!(fx.mount.errors_injected(), 1, "one fsync answered EIO");
    fx.mount.clear();
    assert_eq!(fx.mount.errors_injected(), 0, "clear resets the count");
    log.sync_all().unwrap();
    assert_eq!(
        common::read(&fx.backing("wal.log")).as_deref(),
        Some(&b"entry"[..])
    );
}

#[test]
fn a_lying_fsync_succeeds_and_keeps_nothing() {
    let fx = Fixture::new();
    fx.durable("f", b"old");
    fx.durable("g", b"old");
    fx.mount.lie_fsync(Some("f"));
    let (mut f, mut g) = (open_rw(&fx, "f"), open_rw(&fx, "g"));
    f.write_all(b"new").unwrap();
    g.write_all(b"new").unwrap();
    f.sync_all().unwrap();
    g.sync_all().unwrap();
    assert_eq!(common::read(&fx.backing("f")).as_deref(), Some(&b"old"[..]));
    assert_eq!(common::read(&fx.backing("g")).as_deref(), Some(&b"new"[..]));
    fx.mount.powerloss();
    assert_eq!(common::read(&fx.path("f")).as_deref(), Some(&b"old"[..]));
    assert_eq!(common::read(&fx.path("g")).as_deref(), Some(&b"new"[..]));
}

#[test]
fn eio_on_write_and_read() {
    let fx = Fixture::new();
    fx.durable("f", b"abc");
    fx.mount.eio(Op::Write, None);
    let mut f = open_rw(&fx, "f");
    assert_eq!(
        f.write_all(b"x").unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    fx.mount.eio(Op::Read, Some("f"));
    assert_eq!(
        std::fs::read(fx.path("f")).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    fx.mount.clear();
    assert_eq!(fx.read("f").as_deref(), Some(&b"abc"[..]));
}

#[test]
fn enospc_once_the_budget_is_used() {
    let fx = Fixture::new();
    fx.mount.enospc(8192);
    let mut f = open_rw(&fx, "big");
    f.write_all(&[1; 4096]).unwrap();
    f.write_all(&[2; 4096]).unwrap();
    let err = f.write_all(&[3; 1]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(std::fs::metadata(fx.path("big")).unwrap().len(), 8192);
    fx.mount.clear();
    f.write_all(&[3; 1]).unwrap();
    f.sync_all().unwrap();
    assert_eq!(std::fs::metadata(fx.backing("big")).unwrap().len(), 8193);
}

#[test]
fn fsync_delay_delays_fsync_but_not_other_operations() {
    let fx = Fixture::new();
    let delay = Duration::from_millis(400);
    fx.durable("slow", b"");
    fx.durable("other", b"readable");
    fx.mount.fsync_delay(delay);
    let mut f = open_rw(&fx, "slow");
    f.write_all(b"x").unwrap();
    let started = Instant::now();
    let syncer = std::thread::spawn(move || {
        f.sync_all().unwrap();
        Instant::now()
    });
    // While the fsync waits, the filesystem still answers reads.
    assert_eq!(fx.read("other").as_deref(), Some(&b"readable"[..]));
    let read_done = Instant::now();
    let synced = syncer.join().unwrap();
    assert!(
        synced - started >= delay,
        "fsync took {:?}",
        synced - started
    );
    assert!(read_done < synced, "the read waited for the delayed fsync");
    assert_eq!(
        common::read(&fx.backing("slow")).as_deref(),
        Some(&b"x"[..])
    );
    fx.mount.clear();
    let started = Instant::now();
    open_rw(&fx, "slow").sync_all().unwrap();
    assert!(started.elapsed() < delay);
}

#[test]
fn the_control_socket_drives_the_same_faults() {
    let fx = Fixture::new();
    let sock = tempfile::tempdir().unwrap();
    let sock = sock.path().join("ctl.sock");
    let _server = ControlServer::serve(&sock, fx.mount.controller()).unwrap();
    assert_eq!(
        send(&sock, "status").unwrap(),
        "unsynced_bytes=0 pending_ops=0"
    );
    assert!(send(&sock, "reboot").is_err());
    send(&sock, "eio fsync").unwrap();
    let mut f = open_rw(&fx, "f");
    f.write_all(b"12345").unwrap();
    assert_eq!(f.sync_all().unwrap_err().raw_os_error(), Some(libc::EIO));
    assert_eq!(
        send(&sock, "status").unwrap(),
        "unsynced_bytes=5 pending_ops=1"
    );
    send(&sock, "clear").unwrap();
    drop(f);
    assert_eq!(
        send(&sock, "powerloss").unwrap(),
        "files=1 bytes=5 undone=1"
    );
    assert_eq!(fx.read("f"), None);
}
