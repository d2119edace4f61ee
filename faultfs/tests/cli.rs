//! The `cairn-faultfs` binary end to end: `mount` serves a mount and its control socket, `ctl`
//! drives a power loss through it, and SIGTERM unmounts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cairn-faultfs");
const DEADLINE: Duration = Duration::from_secs(10);

/// The `mount` process; killed and its mount detached on drop if the test ends early.
struct Server {
    child: Child,
    mnt: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn mounted(mnt: &Path) -> bool {
    let mnt = mnt.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*mnt))
}

/// Polls `cond` until it holds or the deadline passes.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ctl(sock: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("ctl")
        .arg("--control")
        .arg(sock)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_binary_mounts_takes_commands_and_unmounts_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt, sock) = (
        dir.path().join("backing"),
        dir.path().join("mnt"),
        dir.path().join("ctl.sock"),
    );
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let child = Command::new(BIN)
        .arg("mount")
        .arg("--backing")
        .arg(&backing)
        .arg("--mountpoint")
        .arg(&mnt)
        .arg("--control")
        .arg(&sock)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server {
        child,
        mnt: mnt.clone(),
    };
    wait_for("the mount and the control socket", || {
        mounted(&mnt) && sock.exists()
    });

    std::fs::write(mnt.join("f"), b"unsynced").unwrap();
    let status = ctl(&sock, &["status"]);
    assert!(status.status.success());
    assert_eq!(
        String::from_utf8_lossy(&status.stdout).trim(),
        "unsynced_bytes=8 pending_ops=1"
    );
    let bad = ctl(&sock, &["eio", "nonsense"]);
    assert!(!bad.status.success());
    assert!(ctl(&sock, &["powerloss"]).status.success());
    assert!(!mnt.join("f").exists());

    let pid = nix::unistd::Pid::from_raw(server.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut exit = None;
    wait_for("the mount process to exit", || {
        exit = server.child.try_wait().unwrap();
        exit.is_some()
    });
    assert!(exit.unwrap().success());
    assert!(!mounted(&mnt));
}
