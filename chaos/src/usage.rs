//! What a run's storaged processes used, summed over every process a node had (faults restart
//! them): CPU from `/proc/<pid>/stat`, bytes from `/proc/<pid>/io`, sampled on a thread.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How often the sampler reads `/proc`: what a process used after its last sample (it was
/// killed) is not counted, so the totals are lower bounds by at most this much per kill.
pub const EVERY: Duration = Duration::from_millis(250);

/// Totals over a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Storaged processes seen.
    pub processes: u64,
    /// User plus system CPU seconds, all of them together.
    pub cpu_s: f64,
    /// Seconds the sampler ran (CPU over this is the cores used on average).
    pub over_s: f64,
    /// Bytes they passed to write(2) and the like (`wchar`).
    pub wchar: u64,
    /// Bytes they caused to be written to storage (`write_bytes`: on the fault filesystems,
    /// what they dirtied through FUSE).
    pub write_bytes: u64,
    /// Bytes this process (the fault filesystems' FUSE servers run in it) wrote to storage.
    pub faultfs_write_bytes: u64,
}

/// A running sampler of the processes whose command line holds `marker`; dropped, it stops.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Usage>>,
}

#[derive(Clone, Copy, Default)]
struct Reading {
    cpu_ticks: u64,
    wchar: u64,
    write_bytes: u64,
}

impl Sampler {
    /// Starts sampling every process whose command line contains `marker` (a run's directory:
    /// its storaged processes' `--data-dir`).
    pub fn start(marker: String) -> std::io::Result<Sampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("chaos-usage".into())
            .spawn(move || sample(&marker, &flag))?;
        Ok(Sampler {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) -> Usage {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn sample(marker: &str, stop: &AtomicBool) -> Usage {
    let started = Instant::now();
    let own_at_start = read(std::process::id()).unwrap_or_default();
    // Keyed by pid and start time, so a reused pid is another process.
    let mut last: BTreeMap<(u32, u64), Reading> = BTreeMap::new();
    loop {
        for pid in matching(marker) {
            if let (Some(start), Some(r)) = (start_time(pid), read(pid)) {
                last.insert((pid, start), r);
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(EVERY);
    }
    let own = read(std::process::id()).unwrap_or_default();
    let ticks = crate::cpu::ticks_per_second();
    Usage {
        processes: last.len() as u64,
        cpu_s: last.values().map(|r| r.cpu_ticks).sum::<u64>() as f64 / ticks,
        over_s: started.elapsed().as_secs_f64(),
        wchar: last.values().map(|r| r.wchar).sum(),
        write_bytes: last.values().map(|r| r.write_bytes).sum(),
        faultfs_write_bytes: own.write_bytes.saturating_sub(own_at_start.write_bytes),
    }
}

/// Pids whose command line contains `marker`.
fn matching(marker: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|&b| b == 0)
                    .any(|arg| String::from_utf8_lossy(arg).contains(marker))
            })
        })
        .collect()
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the command's last ')' (which starts at field 3).
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn read(pid: u32) -> Option<Reading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| -> Option<u64> {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))?
            .trim()
            .parse()
            .ok()
    };
    Some(Reading {
        cpu_ticks: crate::cpu::ticks_of(&stat)?,
        wchar: field("wchar")?,
        write_bytes: field("write_bytes")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_with_the_marker_is_counted_with_what_it_wrote() {
        let marker = format!("cairn-usage-test-{}", std::process::id());
        let sampler = Sampler::start(marker.clone()).unwrap();
        // The shell itself writes 2,000 lines of 100 bytes (echo is a builtin), then waits a
        // second, so samples see it with its counters.
        let path = std::env::temp_dir().join(&marker);
        let line = "x".repeat(99);
        let script = format!(
            "i=0; while [ $i -lt 2000 ]; do echo {line}; i=$((i+1)); done > {}; sleep 1 # {marker}",
            path.display()
        );
        let status = std::process::Command::new("sh")
            .args(["-c", &script])
            .status()
            .unwrap();
        assert!(status.success());
        let usage = sampler.stop();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 200_000);
        std::fs::remove_file(&path).unwrap();
        assert!(usage.processes >= 1, "{usage:?}");
        assert!(usage.wchar >= 200_000, "{usage:?}");
        assert!(usage.over_s >= 1.0, "{usage:?}");
    }
}
