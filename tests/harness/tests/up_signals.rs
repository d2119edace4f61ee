//! `cairn-harness up` interrupted while it is still starting: the real binary, a signal once
//! its nodes exist, then its exit code and that nothing of its data directory is left.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Proc, leftovers};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Polls `f` every 100 ms until it returns Some, failing after `limit`.
fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes what an `up` that did not clean up left (a failed test), after the assertions.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        cairn_harness::node::cleanup_leftovers(&self.0);
    }
}

/// Whether a storaged of the cluster on `data` runs (Cairn's start-up is under way).
fn storaged_runs(data: &Path) -> bool {
    common::processes_with(&data.display().to_string())
        .iter()
        .any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "storaged")
        })
}

/// Whether node-`k`'s holder process (its pid file's) runs.
fn holder_runs(data: &Path, k: usize) -> bool {
    std::fs::read_to_string(data.join(format!("nodes/node-{k}/holder.pid")))
        .is_ok_and(|p| Path::new(&format!("/proc/{}", p.trim())).exists())
}

/// `up --with-cairn` (Cairn as processes, which takes seconds to start after the nodes) on
/// 2 nodes in a fresh directory, until its bridge and both nodes' holders exist and `also`
/// holds; returns the process, its cleanup, its log, the data dir and the bridge index.
fn up_until(dir: &Path, also: fn(&Path) -> bool) -> (Proc, Cleanup, PathBuf, PathBuf, u8) {
    for bin in ["storaged", "cairn-csi", "cairn-provisioner"] {
        assert!(
            cairn_harness::components::find_binary(bin).is_some(),
            "{bin} not built: run `cargo build --workspace` first"
        );
    }
    let data = dir.join("data");
    let log = dir.join("up.log");
    let proc = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_cairn-harness"))
            .args(["up", "--nodes", "2", "--with-cairn", "--cairn-install"])
            .arg("processes")
            .arg("--data-dir")
            .arg(&data),
        &log,
    );
    let cleanup = Cleanup(data.clone());
    let index = poll(
        "the nodes' holders and bridge",
        Duration::from_secs(60),
        || {
            assert!(proc.exited().is_none(), "up exited: {}", read(&log));
            let i: u8 = std::fs::read_to_string(data.join("network"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let left = leftovers(&data, i);
            let holders = (1..=2).filter(|k| holder_runs(&data, *k)).count();
            let bridge = left.iter().any(|l| *l == format!("link cairnbr{i}"));
            (bridge && holders >= 2 && also(&data)).then_some(i)
        },
    );
    (proc, cleanup, log, data, index)
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

fn signal(proc: &Proc, pid: u32, sig: Signal) {
    assert!(proc.exited().is_none(), "up still runs before {sig}");
    kill(Pid::from_raw(pid as i32), sig).unwrap();
}

fn exit_code(proc: &Proc, log: &Path) -> i32 {
    let status = poll("up to exit", Duration::from_secs(90), || proc.exited());
    status
        .code()
        .unwrap_or_else(|| panic!("up killed by a signal ({status:?}): {}", read(log)))
}

#[test]
fn sigterm_while_starting_tears_down_and_exits_143() {
    let dir = tempfile::Builder::new()
        .prefix("cairn-up-signals")
        .tempdir()
        .unwrap();
    let (proc, _cleanup, log, data, index) = up_until(dir.path(), |_| true);
    let pid = proc.id();
    signal(&proc, pid, Signal::SIGTERM);
    let code = exit_code(&proc, &log);
    let out = read(&log);
    assert!(
        !out.contains("\nready"),
        "the start-up finished first: {out}"
    );
    assert_eq!(code, 143, "{out}");
    assert!(out.contains("removed: link cairnbr"), "{out}");
    let left = leftovers(&data, index);
    assert!(left.is_empty(), "left after SIGTERM: {left:#?}\n{out}");
}

#[test]
fn second_sigint_does_not_cut_the_teardown_short() {
    let dir = tempfile::Builder::new()
        .prefix("cairn-up-signals")
        .tempdir()
        .unwrap();
    // Signalled in the middle of Cairn's start-up: its storaged processes are stopped too.
    let (proc, _cleanup, log, data, index) = up_until(dir.path(), storaged_runs);
    let pid = proc.id();
    signal(&proc, pid, Signal::SIGINT);
    poll("up to say it stops", Duration::from_secs(30), || {
        read(&log).contains("stopping").then_some(())
    });
    // Teardown takes a while (storaged, nodes): a second Ctrl-C arrives during it, or the
    // process has already exited (then there is nothing to cut short).
    if proc.exited().is_none() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
    }
    let code = exit_code(&proc, &log);
    let out = read(&log);
    assert_eq!(code, 130, "{out}");
    let left = leftovers(&data, index);
    assert!(left.is_empty(), "left after SIGINT twice: {left:#?}\n{out}");
}
