//! What every chaos test file shares: one cluster at a time, a bound on each run, a pinned
//! configuration per seed, and the clean verdict every run must reach.

use std::path::PathBuf;
use std::time::Duration;

use cairn_chaos::{FaultKind, RunConfig, RunOutcome, run};
use cairn_storaged::testkit::sibling_bin;

/// One cluster at a time: the runs share two cores with everything else.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A run that has not finished by then failed; dropping it kills its processes and unmounts.
pub const RUN_BOUND: Duration = Duration::from_secs(100);

/// Each test's run has a name of its own: its network's names carry it.
pub fn config(seed: u64, faults: &[FaultKind], duration: Duration) -> RunConfig {
    let storaged: PathBuf = sibling_bin("storaged");
    assert!(
        storaged.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        storaged.display()
    );
    RunConfig {
        seed,
        faults: faults.to_vec(),
        duration,
        volumes: 2,
        recovery: Duration::from_secs(40),
        name: format!("seed-{seed}"),
        ..RunConfig::new(storaged)
    }
}

/// Runs `config` and asserts a clean verdict with faults injected and operations acknowledged.
pub async fn run_clean(config: RunConfig) -> RunOutcome {
    let _serial = SERIAL.lock().await;
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(RUN_BOUND, run(&config))
        .await
        .unwrap_or_else(|_| panic!("chaos run (seed {}) took over {RUN_BOUND:?}", config.seed))
        .unwrap_or_else(|e| panic!("chaos run (seed {}) failed: {e}", config.seed));
    let report = &outcome.report;
    eprintln!(
        "report: {}\nrun {:.1} s, recovery after the final heal {:.2} s, {} ops checked\nfaults:",
        serde_json::to_string(report).unwrap(),
        started.elapsed().as_secs_f64(),
        outcome.recovery_s,
        outcome.history.len(),
    );
    for f in &outcome.faults {
        eprintln!("  {}", serde_json::to_string(f).unwrap());
    }
    if !report.clean() {
        let path = std::env::temp_dir().join(format!("cairn-chaos-seed-{}.jsonl", config.seed));
        let file = std::fs::File::create(&path).unwrap();
        cairn_chaos::history::write_jsonl(std::io::BufWriter::new(file), &outcome.history).unwrap();
        eprintln!("the history is in {}", path.display());
    }
    assert!(
        report.faults.values().sum::<u64>() > 0,
        "the schedule injected no fault"
    );
    assert!(
        report.ops.ok > 0 || report.fs.as_ref().is_some_and(|fs| fs.ok > 0),
        "no operation succeeded: {report:?}"
    );
    assert_eq!(
        (report.lost, report.violations),
        (0, 0),
        "seed {}:\n{}",
        config.seed,
        outcome.problems()
    );
    assert_eq!(
        outcome.check.gave_up().count(),
        0,
        "the checker gave up:\n{}",
        outcome.problems()
    );
    // Faults at once: the record proves the minority budget at every instant.
    if config.overlap > 1 {
        let nodes: Vec<u64> = (1..=config.nodes as u64).collect();
        if let Err(e) = cairn_chaos::audit::audit(&outcome.faults, &outcome.members, &nodes) {
            panic!(
                "seed {}: the record does not prove the budget: {e}",
                config.seed
            );
        }
    }
    outcome
}
