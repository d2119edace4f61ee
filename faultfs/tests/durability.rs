//! Power loss through a real FUSE mount: what was fsynced (file data, and names through their
//! directory's fsync) survives; unsynced writes and namespace changes are taken back.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use common::Fixture;

#[test]
fn a_file_written_and_fsynced_survives_powerloss() {
    let fx = Fixture::new();
    fx.durable("a", b"hello");
    assert_eq!(fx.mount.unsynced_bytes(), 0);
    assert_eq!(fx.mount.pending_ops(), 0);
    fx.mount.powerloss();
    assert_eq!(fx.read("a").as_deref(), Some(&b"hello"[..]));
    assert_eq!(
        common::read(&fx.backing("a")).as_deref(),
        Some(&b"hello"[..])
    );
}

#[test]
fn an_unsynced_write_is_read_back_but_gone_after_powerloss() {
    let fx = Fixture::new();
    fx.durable("a", b"v1v1v1");
    {
        let f = OpenOptions::new().write(true).open(fx.path("a")).unwrap();
        f.write_all_at(b"V2", 0).unwrap();
        f.write_all_at(b"tail", 6).unwrap();
    }
    // Read-your-writes through the mount; nothing of it in the backing file yet.
    assert_eq!(fx.read("a").as_deref(), Some(&b"V2v1v1tail"[..]));
    assert_eq!(std::fs::metadata(fx.path("a")).unwrap().len(), 10);
    assert_eq!(
        common::read(&fx.backing("a")).as_deref(),
        Some(&b"v1v1v1"[..])
    );
    assert_eq!(fx.mount.unsynced_bytes(), 6);
    let report = fx.mount.powerloss();
    assert_eq!((report.files, report.bytes), (1, 6));
    assert_eq!(fx.read("a").as_deref(), Some(&b"v1v1v1"[..]));
}

#[test]
fn an_unsynced_truncate_and_append_are_undone() {
    let fx = Fixture::new();
    fx.durable("log", b"record1\n");
    let mut f = OpenOptions::new()
        .append(true)
        .open(fx.path("log"))
        .unwrap();
    f.write_all(b"record2\n").unwrap();
    assert_eq!(fx.read("log").as_deref(), Some(&b"record1\nrecord2\n"[..]));
    f.sync_data().unwrap();
    f.write_all(b"record3\n").unwrap();
    f.set_len(4).unwrap();
    assert_eq!(fx.read("log").as_deref(), Some(&b"reco"[..]));
    drop(f);
    fx.mount.powerloss();
    assert_eq!(fx.read("log").as_deref(), Some(&b"record1\nrecord2\n"[..]));
}

#[test]
fn a_file_fsynced_in_a_directory_never_fsynced_vanishes() {
    let fx = Fixture::new();
    fx.write("new", b"data", true);
    assert_eq!(fx.mount.pending_ops(), 1);
    fx.mount.powerloss();
    assert_eq!(fx.read("new"), None);
    assert!(!fx.backing("new").exists());
}

#[test]
fn a_rename_without_a_directory_fsync_is_undone() {
    let fx = Fixture::new();
    fx.durable("tmp", b"new");
    fx.durable("final", b"old");
    std::fs::rename(fx.path("tmp"), fx.path("final")).unwrap();
    assert_eq!(fx.read("final").as_deref(), Some(&b"new"[..]));
    assert_eq!(fx.read("tmp"), None);
    fx.mount.powerloss();
    assert_eq!(fx.read("final").as_deref(), Some(&b"old"[..]));
    assert_eq!(fx.read("tmp").as_deref(), Some(&b"new"[..]));
}

#[test]
fn a_rename_with_a_directory_fsync_is_kept() {
    let fx = Fixture::new();
    fx.durable("tmp", b"new");
    fx.durable("final", b"old");
    std::fs::rename(fx.path("tmp"), fx.path("final")).unwrap();
    fx.fsync_dir("");
    assert_eq!(fx.mount.pending_ops(), 0);
    fx.mount.powerloss();
    assert_eq!(fx.read("final").as_deref(), Some(&b"new"[..]));
    assert_eq!(fx.read("tmp"), None);
    // The replaced file is gone from the graveyard too.
    let grave = std::fs::read_dir(fx.backing(".faultfs-undo"))
        .unwrap()
        .count();
    assert_eq!(grave, 0);
}

#[test]
fn a_rename_across_directories_needs_both_fsynced() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.path("a")).unwrap();
    std::fs::create_dir(fx.path("b")).unwrap();
    fx.fsync_dir("");
    fx.durable("a/f", b"x");
    std::fs::rename(fx.path("a/f"), fx.path("b/f")).unwrap();
    fx.fsync_dir("b");
    assert_eq!(fx.mount.pending_ops(), 1);
    fx.mount.powerloss();
    assert_eq!(fx.read("a/f").as_deref(), Some(&b"x"[..]));
    assert_eq!(fx.read("b/f"), None);
}

#[test]
fn an_unlink_and_a_mkdir_are_undone_without_directory_fsync() {
    let fx = Fixture::new();
    fx.durable("keep", b"k");
    std::fs::remove_file(fx.path("keep")).unwrap();
    assert_eq!(fx.read("keep"), None);
    std::fs::create_dir(fx.path("d")).unwrap();
    fx.durable("d/inner", b"i");
    // The names directly listed in the mount's root are what a reader sees.
    let names = |fx: &Fixture| {
        let mut v: Vec<String> = std::fs::read_dir(fx.path(""))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&fx), ["d"]);
    fx.mount.powerloss();
    assert_eq!(names(&fx), ["keep"]);
    assert_eq!(fx.read("keep").as_deref(), Some(&b"k"[..]));
}

#[test]
fn an_o_sync_write_is_durable_when_it_returns() {
    let fx = Fixture::new();
    fx.durable("s", b"");
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(fx.path("s"))
        .unwrap();
    f.write_all(b"synced").unwrap();
    drop(f);
    fx.mount.powerloss();
    assert_eq!(fx.read("s").as_deref(), Some(&b"synced"[..]));
}
