//! The fast chaos subset (no network namespaces): a pinned seed and a bounded run per fault type
//! on a 3-node storaged cluster over fault filesystems; no acknowledged write may be lost and
//! every key's history must be linearizable. Needs root and /dev/fuse.

use std::path::PathBuf;
use std::time::Duration;

use cairn_chaos::{FaultKind, RunConfig, RunOutcome, Targets, run};
use cairn_storaged::testkit::sibling_bin;

/// One cluster at a time: the runs share two cores with everything else.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(seed: u64, faults: &[FaultKind], duration: Duration) -> RunConfig {
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
        ..RunConfig::new(storaged)
    }
}

/// Runs `config` and asserts a clean verdict with faults injected and operations acknowledged.
async fn run_clean(config: RunConfig) -> RunOutcome {
    let _serial = SERIAL.lock().await;
    let outcome = run(&config)
        .await
        .unwrap_or_else(|e| panic!("chaos run (seed {}) failed: {e}", config.seed));
    let report = &outcome.report;
    eprintln!(
        "report: {}\nrecovery after the final heal: {:.2} s\nfaults:",
        serde_json::to_string(report).unwrap(),
        outcome.recovery_s
    );
    for f in &outcome.faults {
        eprintln!("  {}", serde_json::to_string(f).unwrap());
    }
    assert!(
        report.faults.values().sum::<u64>() > 0,
        "the schedule injected no fault"
    );
    assert!(report.ops.ok > 0, "no operation succeeded: {report:?}");
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
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_loop_loses_nothing() {
    let mut config = config(11, &[FaultKind::Kill], Duration::from_secs(30));
    config.targets = Targets::Leaders;
    let outcome = run_clean(config).await;
    assert!(outcome.report.faults["kill"] >= 3, "{:?}", outcome.report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_pause_loses_nothing() {
    let mut config = config(12, &[FaultKind::Pause], Duration::from_secs(25));
    config.targets = Targets::Leaders;
    run_clean(config).await;
}

/// The fault really drops data: storaged's unsynced writes are in the fault filesystem's memory
/// when the power goes, so only what storaged fsynced can save the acknowledged writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_loss_of_one_node_drops_unsynced_data_and_loses_nothing() {
    let outcome = run_clean(config(13, &[FaultKind::Powerloss], Duration::from_secs(25))).await;
    let dropped: u64 = outcome.faults.iter().filter_map(|f| f.dropped_bytes).sum();
    assert!(
        dropped > 0,
        "no power loss dropped a byte: {:?}",
        outcome.faults
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_loss_of_every_node_drops_unsynced_data_and_loses_nothing() {
    let outcome = run_clean(config(
        14,
        &[FaultKind::PowerlossAll],
        Duration::from_secs(20),
    ))
    .await;
    assert!(
        outcome
            .faults
            .iter()
            .any(|f| f.nodes.len() == 3 && f.dropped_bytes > Some(0)),
        "no power loss of every node dropped a byte: {:?}",
        outcome.faults
    );
}

/// A node whose fsyncs fail must not acknowledge what it could not make durable: the fault is
/// healed by a power loss of that node, so anything it acknowledged without a sync is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eio_on_fsync_loses_no_acknowledged_write() {
    let outcome = run_clean(config(15, &[FaultKind::Eio], Duration::from_secs(25))).await;
    for f in &outcome.faults {
        eprintln!(
            "eio on node {:?}: storaged {} during the fault; {} unsynced bytes dropped at the heal",
            f.nodes,
            if f.exited.is_empty() {
                "kept running"
            } else {
                "exited"
            },
            f.dropped_bytes.unwrap_or(0)
        );
    }
}
