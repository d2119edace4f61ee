//! The processes inside a network namespace, found through `/proc/<pid>/ns/net`: listing,
//! signalling and killing them all (bounded), as a node's or a crashed run's teardown does.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The namespace `ns` (`net`, `mnt`, ...) of process `pid`, as `net:[inode]`.
pub fn ns_id(pid: &str, ns: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

/// Every process whose network namespace is `net` (`net:[inode]`), but never this one.
pub fn processes_in(net: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| *p != me && ns_id(&p.to_string(), "net").as_deref() == Some(net))
        .collect()
}

/// Signals every process in network namespace `net`; how many there were.
pub fn signal_all(net: &str, sig: Signal) -> usize {
    let procs = processes_in(net);
    for p in &procs {
        let _ = kill(Pid::from_raw(*p), sig);
    }
    procs.len()
}

/// Waits (bounded) until nothing runs in network namespace `net` any more.
pub fn wait_gone(net: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if processes_in(net).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// SIGKILLs everything in `net` until nothing is left (bounded): a process started while
/// the others were being killed goes too.
pub fn kill_until_gone(net: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while signal_all(net, Signal::SIGKILL) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}
