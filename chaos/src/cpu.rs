//! The CPU time of a process from `/proc/<pid>/stat` (user plus system), so a run can show what
//! each node's storaged spent during a fault, e.g. that a partitioned node does not spin.

use std::time::Duration;

/// User plus system CPU time process `pid` has used, `None` if it is gone.
pub fn used(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    ticks_of(&stat).map(|t| Duration::from_secs_f64(t as f64 / ticks_per_second()))
}

/// utime + stime, fields 14 and 15 of a stat line (the command, field 2, may hold spaces and
/// parentheses: fields are counted after its last `)`).
pub(crate) fn ticks_of(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, index 11 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub(crate) fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_follow_a_command_with_spaces_and_parentheses() {
        let stat = "4242 (stor (a) d) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 9 0";
        assert_eq!(ticks_of(stat), Some(287));
        assert_eq!(ticks_of("1 (x) S 1"), None);
        assert_eq!(used(u32::MAX), None);
        // This thread's work shows up in this process's count (within a bound).
        let pid = std::process::id();
        let before = used(pid).expect("this process's stat");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while used(pid).expect("stat") <= before {
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no CPU counted ({x})"
            );
        }
    }
}
