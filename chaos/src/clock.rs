//! Clock faults: the environment that runs a process under libfaketime (Debian's `faketime`)
//! with its clocks at a rate, and the evidence that a running process got it.

use std::path::{Path, PathBuf};

use crate::error::Error;

/// The rate a `clock` fault runs the target's clocks at: twice as fast as real time.
pub const FAST: f64 = 2.0;
/// The rate a `clock-slow` fault runs them at: half as fast. Either keeps every two nodes'
/// clocks within the 2x of each other that storaged's lease reads allow (decision 054).
pub const SLOW: f64 = 0.5;
/// How far apart any two nodes' clock rates may be (decision 054): a fast and a slow clock at
/// once would be 4x apart, so overlapping runs never start them together.
pub const MAX_APART: f64 = 2.0;

/// Where Debian's `faketime` package puts the multithreaded preload library.
fn library() -> PathBuf {
    let triplet = match std::env::consts::ARCH {
        "aarch64" => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    Path::new("/usr/lib")
        .join(triplet)
        .join("faketime/libfaketimeMT.so.1")
}

/// The variables that run a process's clocks at `rate` times real time, counted from its start
/// (libfaketime's `+0 xRATE`: no jump, then the rate). CLOCK_MONOTONIC, which tokio's and
/// openraft's timers read, is faked too (no `DONT_FAKE_MONOTONIC`), and so are the sleeps.
pub fn env(rate: f64) -> Result<Vec<(String, String)>, Error> {
    if !(rate > 0.0 && rate.is_finite()) {
        return Err(Error::Config(format!(
            "clock rate {rate}: must be a positive number"
        )));
    }
    let lib = library();
    if !lib.exists() {
        return Err(Error::Config(format!(
            "clock fault: {} is missing: install Debian's faketime package (scripts/deps.sh)",
            lib.display()
        )));
    }
    Ok(vec![
        ("LD_PRELOAD".into(), lib.display().to_string()),
        ("FAKETIME".into(), format!("+0 x{rate}")),
    ])
}

/// Whether process `pid` runs with every variable of `want` set as given (from
/// `/proc/<pid>/environ`); `false` if it is gone.
pub fn has_env(pid: u32, want: &[(String, String)]) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let vars: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    want.iter().all(|(k, v)| {
        let line = format!("{k}={v}");
        vars.contains(&line.as_bytes())
    })
}

/// Whether libfaketime is mapped into process `pid` (`/proc/<pid>/maps`): the preload took.
pub fn preloaded(pid: u32) -> bool {
    let lib = library();
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .is_ok_and(|maps| maps.lines().any(|l| l.ends_with(&*lib.to_string_lossy())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_rate_is_refused_and_our_own_environment_is_read() {
        assert!(env(0.0).unwrap_err().to_string().contains("clock rate 0"));
        assert!(env(f64::NAN).is_err());
        let pid = std::process::id();
        let path = std::env::var("PATH").expect("PATH is set");
        assert!(has_env(pid, &[("PATH".into(), path.clone())]));
        assert!(!has_env(
            pid,
            &[("PATH".into(), format!("{path}:/nowhere"))]
        ));
        assert!(!has_env(u32::MAX, &[]));
        assert!(!preloaded(pid), "this test runs without libfaketime");
    }
}
