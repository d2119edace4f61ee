//! Frontend processes a test cluster's nodes left: finding them by their run dir, and
//! killing them with their loop devices and FUSE mounts.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The frontend processes (`storaged frontend`) whose command line names a path under
/// `run_dir` (a node's `<data-dir>/run`).
pub fn frontend_pids(run_dir: &Path) -> Vec<u32> {
    let run_dir = std::fs::canonicalize(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
    let run = run_dir.as_os_str().as_encoded_bytes();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let frontend = crate::frontend::process::SUBCOMMAND.as_bytes();
        if args.get(1) == Some(&frontend)
            && args.iter().any(|a| a.starts_with(run))
            && crate::frontend::process::pid_alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

/// Kills the frontends of a node's `run_dir` and removes their loop devices and FUSE
/// mounts (a test's own mounts above those devices must be gone first).
pub fn remove_frontends(run_dir: &Path) {
    let pids = frontend_pids(run_dir);
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| crate::frontend::process::pid_alive(*p)) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let Ok(run_dir) = std::fs::canonicalize(run_dir) else {
        return;
    };
    let loops = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in loops.lines() {
        if let Some((dev, back)) = line.trim().split_once(' ')
            && Path::new(back.trim()).starts_with(&run_dir)
        {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
    for m in crate::frontend::fuse::mounts_under(&run_dir).unwrap_or_default() {
        let _ = crate::frontend::fuse::lazy_unmount(&m);
    }
}
