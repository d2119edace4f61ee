//! The fast chaos subset (no network namespaces): a pinned seed and a bounded run per fault type
//! on a 3-node storaged cluster over fault filesystems, judged by the checker. Needs root, FUSE.

// Each run asserts that faults were injected, operations acknowledged, no acknowledged write
// lost and every key linearizable. The checker's own ability to fail is tested twice: on a
// hand-made history, and on a real run's history with one acknowledged write taken away.

use std::path::PathBuf;
use std::time::Duration;

use cairn_chaos::checker::{self, FinalReadProblem};
use cairn_chaos::workload::block::FINAL_READER;
use cairn_chaos::{
    FaultKind, Key, Op, OpKind, Outcome, RunConfig, RunOutcome, RunReport, Targets, Value, run,
};
use cairn_storaged::testkit::sibling_bin;

/// One cluster at a time: the runs share two cores with everything else.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A run that has not finished by then failed; dropping it kills its processes and unmounts.
const RUN_BOUND: Duration = Duration::from_secs(100);

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
        volumes: 2,
        recovery: Duration::from_secs(40),
        ..RunConfig::new(storaged)
    }
}

/// Runs `config` and asserts a clean verdict with faults injected and operations acknowledged.
async fn run_clean(config: RunConfig) -> RunOutcome {
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
async fn leader_kill_loop_loses_nothing_and_a_removed_write_is_caught() {
    let mut config = config(11, &[FaultKind::Kill], Duration::from_secs(15));
    config.targets = Targets::Leaders;
    let outcome = run_clean(config).await;
    assert!(outcome.report.faults["kill"] >= 2, "{:?}", outcome.report);
    lose_one_acknowledged_write(&outcome);
}

/// Takes a real run's history and adds an acknowledged write that its key's final read does not
/// show (as if the cluster had lost it): the final-read check and the checker must both say so.
fn lose_one_acknowledged_write(outcome: &RunOutcome) {
    let history = &outcome.history;
    let writer = |key: &Key, value: Value| {
        history
            .iter()
            .find(|op| &op.key == key && op.written() == Some(value))
    };
    let finals: Vec<(Key, Value, u64)> = history
        .iter()
        .filter(|op| op.client == FINAL_READER)
        .filter_map(|op| match op.kind {
            OpKind::Read { value: Some(v) } => Some((op.key.clone(), v, op.invoke)),
            _ => None,
        })
        .collect();
    // A key whose final value is zeroes or an acknowledged write: a later acknowledged write
    // is then certainly lost (an unknown write may take effect at any time).
    let (key, _, read_at) = finals
        .iter()
        .find(|(key, value, _)| {
            *value == Value::INITIAL
                || writer(key, *value).is_some_and(|w| w.outcome == Outcome::Ok)
        })
        .cloned()
        .expect("a final read of zeroes or of an acknowledged write");
    let unused = history
        .iter()
        .filter_map(Op::written)
        .max()
        .map_or(1, |v| v.0 + 1);
    let mut lossy = history.clone();
    lossy.push(Op {
        client: 999,
        key: key.clone(),
        kind: OpKind::Write {
            value: Value(unused),
        },
        invoke: read_at - 2,
        complete: Some(read_at - 1),
        outcome: Outcome::Ok,
    });
    let pairs: Vec<(Key, Value)> = finals.iter().map(|(k, v, _)| (k.clone(), *v)).collect();
    let problems = checker::check_final_reads(&lossy, &pairs).unwrap();
    assert!(
        problems.iter().any(|p| matches!(p,
            FinalReadProblem::Lost { write, .. } if write.written() == Some(Value(unused)))),
        "the removed write on {key} was not reported lost: {problems:?}"
    );
    let check = checker::check(&lossy, &checker::Config::default()).unwrap();
    assert!(
        check.violations().any(|(k, _)| *k == key),
        "the checker found no violation on {key}"
    );
    let report = RunReport::new(0, &lossy, &outcome.faults, &check, &problems);
    assert!(report.lost >= 1 && !report.clean(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_pause_loses_nothing() {
    on_leaders(12, FaultKind::Pause).await;
}

/// The fault really drops data: storaged's unsynced writes are in the fault filesystem's memory
/// when the power goes, so only what storaged fsynced can save the acknowledged writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_loss_of_one_node_drops_unsynced_data_and_loses_nothing() {
    let outcome = run_clean(config(13, &[FaultKind::Powerloss], Duration::from_secs(15))).await;
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
        Duration::from_secs(12),
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
    let outcome = run_clean(config(15, &[FaultKind::Eio], Duration::from_secs(12))).await;
    for f in &outcome.faults {
        eprintln!(
            "eio on node {:?}: {} EIO answers; storaged {} during the fault; {} unsynced bytes dropped at the heal",
            f.nodes,
            f.errors_injected.unwrap_or(0),
            if f.exited.is_empty() {
                "kept running"
            } else {
                "exited"
            },
            f.dropped_bytes.unwrap_or(0)
        );
    }
    assert!(
        outcome.faults.iter().any(|f| f.errors_injected > Some(0)),
        "no fsync was answered EIO: the fault never reached storaged"
    );
}

/// A 12 s clean run of `kind` on groups' leaders only.
async fn on_leaders(seed: u64, kind: FaultKind) -> RunOutcome {
    let mut config = config(seed, &[kind], Duration::from_secs(12));
    config.targets = Targets::Leaders;
    run_clean(config).await
}

/// A full disk fails writes, not acknowledgements: what a node could not write it must not
/// acknowledge, and once space is freed (and the node restarted) nothing is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_then_freed_loses_no_acknowledged_write() {
    let outcome = on_leaders(16, FaultKind::DiskFull).await;
    assert!(
        outcome.faults.iter().any(|f| f.errors_injected > Some(0)),
        "no write was answered ENOSPC: the fault never reached storaged: {:?}",
        outcome.faults
    );
}

/// A leader whose fsyncs are slow keeps the group serving, slower, and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_disk_under_the_leader_loses_nothing() {
    let outcome = on_leaders(17, FaultKind::SlowDisk).await;
    assert!(
        outcome.report.faults["slow-disk"] >= 1,
        "{:?}",
        outcome.report
    );
}

/// The whole pipeline can fail: when every disk ignores the WALs' fsyncs, a power loss of every
/// node loses acknowledged writes (Raft cannot help), and the run must report them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disks_that_ignore_fsync_lose_writes_and_the_run_reports_them() {
    let mut config = config(16, &[FaultKind::PowerlossAll], Duration::from_secs(6));
    config.lying_disks = true;
    let _serial = SERIAL.lock().await;
    let outcome = tokio::time::timeout(RUN_BOUND, run(&config))
        .await
        .expect("the run ends within its bound")
        .unwrap_or_else(|e| panic!("the run did not complete: {e}"));
    let report = &outcome.report;
    eprintln!(
        "report with lying disks: {}",
        serde_json::to_string(report).unwrap()
    );
    assert!(report.faults["powerloss-all"] >= 1, "{report:?}");
    assert!(
        !report.clean(),
        "writes acknowledged on disks that kept nothing survived every node's power loss: {report:?}"
    );
}

/// The verdict is not always clean: a hand-made history whose acknowledged write the final
/// read does not show counts as lost, and its stale read as a violation.
#[test]
fn a_history_with_a_lost_acknowledged_write_fails_the_report() {
    let key = Key {
        volume: "v".into(),
        block: 0,
    };
    let op = |client, kind, invoke, complete| Op {
        client,
        key: key.clone(),
        kind,
        invoke,
        complete: Some(complete),
        outcome: Outcome::Ok,
    };
    let write = |value| OpKind::Write {
        value: Value(value),
    };
    let history = vec![
        op(1, write(1), 0, 10),
        op(2, write(2), 20, 30),
        // After recovery the block holds the older value: write 2 was lost.
        op(
            FINAL_READER,
            OpKind::Read {
                value: Some(Value(1)),
            },
            40,
            50,
        ),
    ];
    let problems = checker::check_final_reads(&history, &[(key.clone(), Value(1))]).unwrap();
    let check = checker::check(&history, &checker::Config::default()).unwrap();
    let report = RunReport::new(7, &history, &[], &check, &problems);
    assert_eq!(report.lost, 1, "{problems:?}");
    assert_eq!(report.violations, 1, "the stale final read");
    assert!(!report.clean());
}
