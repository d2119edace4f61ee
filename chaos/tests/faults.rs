//! The fast chaos subset: a pinned seed and a bounded run per fault type on a storaged cluster
//! over fault filesystems and network namespaces, judged by the checker. Needs root, FUSE, nft.

// Each run asserts that faults were injected, operations acknowledged, no acknowledged write
// lost and every key linearizable. The checker's own ability to fail is tested twice: on a
// hand-made history, and on a real run's history with one acknowledged write taken away.

use std::time::Duration;

use cairn_chaos::checker::{self, FinalReadProblem};
use cairn_chaos::net::ChaosNet;
use cairn_chaos::workload::block::FINAL_READER;
use cairn_chaos::{
    FaultKind, FaultRecord, Key, Op, OpKind, Outcome, RunOutcome, RunReport, Target, Targets,
    Value, run,
};
use cairn_storaged::testkit::sibling_bin;

mod common;
use common::{RUN_BOUND, SERIAL, config, run_clean};

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
    let result = tokio::time::timeout(RUN_BOUND, run(&config))
        .await
        .expect("the run ends within its bound");
    // Disks that keep nothing may lose a node's identity stamp too: such a node then cannot
    // rejoin and the cluster never becomes whole again. That run fails as well, which is
    // what the test is after (it must never pass clean); any other failure is a bug.
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("not healthy within") || e.contains("not caught up"),
                "the run did not complete: {e}"
            );
            eprintln!("lying disks left the cluster unable to recover: {e}");
            return;
        }
    };
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

/// Asserts that a partition fault really cut its pairs: every group with most replicas on the
/// majority side had a leader there. Prints each node's CPU during the partition. (Whether the
/// rules dropped packets is asserted over the run: two followers of a third node's groups may
/// exchange no packet at all in a 1.5 s cut, e.g. while their connection waits out a TCP
/// retransmission backoff left by the previous cut.)
fn assert_partition_took_effect(f: &FaultRecord) {
    let held = (f.end - f.start) as f64 / 1e9;
    eprintln!(
        "{} on {:?}: cut {:?}, dropped packets {:?}, minority {:?}, majority's leaders {:?}, CPU s over {held:.1} s {:?}",
        f.kind.name(),
        f.nodes,
        f.cut,
        f.dropped_packets,
        f.minority,
        f.majority_leaders,
        f.cpu_s
    );
    assert!(!f.cut.is_empty(), "a partition that cut nothing: {f:?}");
    assert_eq!(f.dropped_packets.len(), f.cut.len(), "{f:?}");
    for (volume, leader) in &f.majority_leaders {
        assert!(
            *leader != 0 && !f.minority.contains(leader),
            "{volume} has most replicas outside the minority {:?} and the majority side named no leader of its own (saw {leader})",
            f.minority
        );
    }
}

/// Whether a partition cut its target, a group's leader, off from that group's majority, and
/// the majority side named another leader: the partition really moved leadership.
fn moved_a_leader(f: &FaultRecord) -> bool {
    match &f.target {
        Target::LeaderOf { volume } => {
            f.minority.contains(&f.nodes[0])
                && f.majority_leaders
                    .get(volume)
                    .is_some_and(|l| *l != 0 && *l != f.nodes[0])
        }
        _ => false,
    }
}

/// `kind` partitions on the seed's schedule; asserts a clean verdict and that each took effect.
async fn partitions(
    seed: u64,
    kind: FaultKind,
    nodes: usize,
    targets: Targets,
    duration: Duration,
) -> RunOutcome {
    let mut config = config(seed, &[kind], duration);
    config.nodes = nodes;
    config.targets = targets;
    let outcome = run_clean(config).await;
    assert!(
        outcome.report.faults[kind.name()] >= 1,
        "{:?}",
        outcome.report
    );
    outcome.faults.iter().for_each(assert_partition_took_effect);
    let dropped: u64 = outcome
        .faults
        .iter()
        .flat_map(|f| f.dropped_packets.iter())
        .sum();
    assert!(
        dropped > 0,
        "the rules dropped no packet in {} partitions: they never reached the cluster's traffic: {:?}",
        outcome.faults.len(),
        outcome.faults
    );
    outcome
}

/// `kind` partitions on groups' leaders (15 s on `nodes` nodes): at least one must have moved
/// a group's leadership to the majority side.
async fn partitions_moving_leaders(seed: u64, kind: FaultKind, nodes: usize) -> RunOutcome {
    let duration = Duration::from_secs(15);
    let outcome = partitions(seed, kind, nodes, Targets::Leaders, duration).await;
    assert!(
        outcome.faults.iter().any(moved_a_leader),
        "no {} moved a group's leadership: {:?}",
        kind.name(),
        outcome.faults
    );
    outcome
}

/// The leader of a group cut off alone: the other two elect a leader, the old one must not
/// acknowledge or serve anything stale (clients on the host still reach it), nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_isolated_in_a_minority_loses_nothing() {
    let outcome = partitions_moving_leaders(21, FaultKind::PartitionIsolate, 3).await;
    // Alone, the isolated node leads nothing and must idle, not spin: under half a core.
    for f in &outcome.faults {
        let held = (f.end - f.start) as f64 / 1e9;
        let cpu = f.cpu_s.get(&f.nodes[0]).copied().unwrap_or(0.0);
        assert!(
            cpu / held < 0.5,
            "node {:?} used {cpu:.2} s CPU in {held:.1} s isolated",
            f.nodes
        );
    }
}

/// Five nodes split two (a leader among them) from three: the three elect a leader of their
/// own, the two cannot commit, and after the heal nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_majority_minority_split_loses_nothing() {
    let outcome = partitions_moving_leaders(22, FaultKind::PartitionSplit, 5).await;
    assert!(
        outcome.faults.iter().all(|f| f.minority.len() == 2),
        "a split of five is two against three: {:?}",
        outcome.faults
    );
}

/// One node sees both halves, the halves do not see each other: nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bridge_partition_loses_nothing() {
    partitions(
        23,
        FaultKind::PartitionBridge,
        3,
        Targets::Any,
        Duration::from_secs(15),
    )
    .await;
}

/// What a run killed by SIGKILL leaves (namespaces with processes in them, the bridge, a
/// partition table) is removed by the next run of the same name, and that run's own drop
/// leaves nothing; a live run's name is refused.
#[test]
fn a_crashed_runs_network_is_removed_by_the_next_run_of_its_name() {
    let name = "t-leftovers";
    let table = format!("cairn-chaos-{name}");
    let ours = || -> (Vec<String>, Vec<String>) {
        let mut netns: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("{table}-")))
                    .collect()
            })
            .unwrap_or_default();
        let bridges: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("ifalias"))
                    .is_ok_and(|a| a.starts_with(&format!("cairn-chaos:{name}:")))
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        netns.sort();
        (netns, bridges)
    };
    let table_exists = || {
        std::process::Command::new("nft")
            .args(["list", "table", "bridge", &table])
            .output()
            .expect("nft is installed (apt-get install nftables)")
            .status
            .success()
    };
    let crashed = ChaosNet::create(name, 2).unwrap();
    let ns = &crashed.nodes[0].netns;
    let mut inside = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "sleep", "600"])
        .spawn()
        .unwrap();
    let script = cairn_chaos::partition::rules(&table, &[(1, 2)], |id| {
        crashed.host_link(id).unwrap().to_string()
    });
    cairn_chaos::partition::apply(&script).unwrap();
    let bridge = crashed.bridge.name.clone();
    assert_eq!(
        ChaosNet::create(name, 2).unwrap_err().to_string(),
        format!(
            "run configuration: name \"{name}\": process {} runs a chaos run of this name (bridge {bridge})",
            std::process::id()
        )
    );
    crashed.crash();
    assert_eq!(
        ours(),
        (
            vec![format!("{table}-1"), format!("{table}-2")],
            vec![bridge]
        )
    );
    assert!(table_exists());

    let mut next = ChaosNet::create(name, 2).unwrap();
    let status = inside.try_wait().unwrap();
    assert!(
        status.is_some(),
        "the crashed run's process in its namespace still runs"
    );
    assert!(
        !table_exists(),
        "the crashed run's partition table is still there"
    );
    assert_eq!(ours().0.len(), 2);
    assert_eq!(ours().1.len(), 1, "one bridge: the new run's");
    next.destroy();
    assert_eq!(
        ours(),
        (vec![], vec![]),
        "the run's own teardown left something"
    );
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(format!("{}n1", next.bridge.name))
            .exists()
    );
}

/// libfaketime's environment really speeds up a process's monotonic clock (the one tokio and
/// openraft time elections and leases with): `cairn-chaos clock-probe` spins 2 s by its own
/// clock, which must take about 1 s of real time under the fault's rate, 2 s without.
#[test]
fn the_clock_faults_environment_runs_the_monotonic_clock_fast() {
    let probe = sibling_bin("cairn-chaos");
    let timed = |env: &[(String, String)]| {
        let started = std::time::Instant::now();
        let out = std::process::Command::new(&probe)
            .args(["clock-probe", "--for", "2s"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run cairn-chaos clock-probe (cargo build --workspace)");
        assert!(out.status.success(), "{out:?}");
        let own: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        (own, started.elapsed().as_secs_f64())
    };
    let env = cairn_chaos::clock::env(cairn_chaos::clock::FAST).expect("apt-get install faketime");
    let (own, real) = timed(&env);
    eprintln!("under the clock fault: {own:.3} s by its clock in {real:.3} s real");
    assert!(
        own >= 2.0 && (0.8..1.6).contains(&real),
        "{own} s in {real} s"
    );
    let env = cairn_chaos::clock::env(cairn_chaos::clock::SLOW).unwrap();
    let (own, real) = timed(&env);
    eprintln!("under the slow clock fault: {own:.3} s by its clock in {real:.3} s real");
    assert!(
        own >= 2.0 && (3.6..6.0).contains(&real),
        "{own} s in {real} s"
    );
    let (own, real) = timed(&[]);
    eprintln!("without: {own:.3} s by its clock in {real:.3} s real");
    assert!(
        own >= 2.0 && (1.9..3.0).contains(&real),
        "{own} s in {real} s"
    );
}

/// A clock running twice as fast on a volume's leader (storaged restarted under libfaketime,
/// then made the leader by pausing the old one): its timers, leases included, run fast, and
/// nothing is lost or read stale. Prints each node's CPU during the fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clock_running_fast_on_the_leader_loses_nothing() {
    let mut config = config(31, &[FaultKind::Clock], Duration::from_secs(30));
    config.targets = Targets::Leaders;
    let outcome = run_clean(config).await;
    assert!(outcome.report.faults["clock"] >= 1, "{:?}", outcome.report);
    for f in &outcome.faults {
        let rates: Vec<String> = f
            .cpu_s
            .iter()
            .map(|(id, s)| format!("node {id}: {:.3} cores", s / f.cpu_over_s))
            .collect();
        eprintln!(
            "clock x{:?} on {:?}: faked {:?}, leaders paused {:?}, led {:?}, CPU over {:.1} s: {}",
            f.clock_rate,
            f.nodes,
            f.clock_faked,
            f.nudged,
            f.led,
            f.cpu_over_s,
            rates.join(", ")
        );
        assert_eq!(f.clock_faked, Some(true), "{f:?}");
    }
    assert!(
        outcome.faults.iter().any(|f| !f.led.is_empty()),
        "the skewed node never led a volume: {:?}",
        outcome.faults
    );
}

/// A clock running at half speed on the node that led a volume (storaged restarted under
/// libfaketime, so it comes back a follower and, slow, loses elections): nothing is lost or
/// read stale while it runs late among the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clock_running_slow_on_a_node_loses_nothing() {
    let mut config = config(33, &[FaultKind::ClockSlow], Duration::from_secs(20));
    config.targets = Targets::Leaders;
    let outcome = run_clean(config).await;
    assert!(
        outcome.report.faults["clock-slow"] >= 1,
        "{:?}",
        outcome.report
    );
    for f in &outcome.faults {
        eprintln!(
            "clock x{:?} on {:?}: faked {:?}, led {:?}",
            f.clock_rate, f.nodes, f.clock_faked, f.led
        );
        assert_eq!(f.clock_rate, Some(cairn_chaos::clock::SLOW), "{f:?}");
        assert_eq!(f.clock_faked, Some(true), "{f:?}");
    }
}

/// Four nodes; a replica holder (a volume's leader) is killed and its data dir wiped while the
/// workload runs: the cluster rebuilds every replica it held on the other three (within the
/// run's recovery bound), and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_loss_of_a_replica_holder_is_rebuilt_elsewhere_and_loses_nothing() {
    let mut config = config(32, &[FaultKind::NodeLoss], Duration::from_secs(15));
    config.nodes = 4;
    config.targets = Targets::Leaders;
    let outcome = run_clean(config).await;
    let losses: Vec<&FaultRecord> = outcome
        .faults
        .iter()
        .filter(|f| f.kind == FaultKind::NodeLoss)
        .collect();
    assert_eq!(
        losses.len(),
        1,
        "one node loss on four nodes (a second would leave too few): {:?}",
        outcome.faults
    );
    let f = losses[0];
    eprintln!(
        "node {:?} lost (target {:?}): whole again {:.2} s after, members {:?}",
        f.nodes, f.target, f.whole_after_s, f.members_after
    );
    assert!(matches!(f.target, Target::LeaderOf { .. }), "{f:?}");
    assert_eq!(f.members_after.len(), 2, "{f:?}");
    for (volume, members) in &f.members_after {
        assert_eq!(members.len(), 3, "{volume}: {members:?}");
        assert!(!members.contains(&f.nodes[0]), "{volume}: {members:?}");
    }
}

/// A node loss needs a node to rebuild on: with three nodes the run is refused before it
/// starts anything, naming the field.
#[tokio::test]
async fn a_node_loss_on_three_nodes_is_refused() {
    let config = config(33, &[FaultKind::NodeLoss], Duration::from_secs(5));
    let err = run(&config).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "run configuration: faults: node-loss needs more than 3 nodes (one to rebuild on), not 3"
    );
}

/// ext4 on a 3-replica volume attached on node 1 through storaged's FUSE frontend: records
/// fsynced at their offsets and files renamed with a directory fsync while node 1's storaged is
/// killed, paused or cut off under the mount (its frontend carries on through the other
/// members); after an unmount, `fsck.ext4 -n` and a remount, every acknowledged write reads
/// back intact. A power loss, which would take a real node's mount with it, is skipped there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ext4_on_a_volume_keeps_every_acknowledged_write_under_faults() {
    use cairn_chaos::run::FS_NODE;
    use cairn_chaos::workload::Workload;
    let mut config = config(
        41,
        &[
            FaultKind::Kill,
            FaultKind::Pause,
            FaultKind::PartitionIsolate,
            FaultKind::Powerloss,
        ],
        Duration::from_secs(30),
    );
    config.workloads = vec![Workload::Fs];
    config.targets = Targets::Node(FS_NODE);
    let outcome = run_clean(config).await;
    let fs = outcome.report.fs.clone().expect("the fs workload's counts");
    eprintln!("fs: {fs:?}, {} acknowledged writes", outcome.fs_acks.len());
    assert!(fs.fsck_clean, "{fs:?}");
    assert!(fs.ok >= 20, "too few acknowledged writes: {fs:?}");
    assert_eq!(fs.ok as usize, outcome.fs_acks.len(), "{fs:?}");
    for f in &outcome.faults {
        assert!(
            !f.kind.takes_node_down() || !f.nodes.contains(&FS_NODE),
            "a power loss hit the node where the fs workload is mounted: {f:?}"
        );
    }
    assert!(
        outcome
            .faults
            .iter()
            .any(|f| f.kind.stops_storaged() && f.nodes.contains(&FS_NODE)),
        "no kill or pause of node {FS_NODE}'s storaged ran under the mount: {:?}",
        outcome.faults
    );
}

/// Bad input is refused before anything starts, naming the field: no overlap at all, the fs
/// workload with a fault that would stop its node, and `--allow-majority-loss` (exit 2).
#[tokio::test]
async fn overlap_zero_fs_with_powerloss_all_and_majority_loss_are_refused() {
    use cairn_chaos::workload::Workload;
    let mut none = config(34, &[FaultKind::Kill], Duration::from_secs(5));
    none.overlap = 0;
    assert_eq!(
        run(&none).await.unwrap_err().to_string(),
        "run configuration: overlap: must be at least 1 (1 runs one fault at a time)"
    );
    let mut fs = config(35, &[FaultKind::PowerlossAll], Duration::from_secs(5));
    fs.workloads = vec![Workload::Fs];
    let err = run(&fs).await.unwrap_err().to_string();
    assert!(
        err.starts_with("run configuration: faults: powerloss-all stops node 1's storaged"),
        "{err}"
    );
    let out = std::process::Command::new(sibling_bin("cairn-chaos"))
        .args(["run", "--overlap", "2", "--allow-majority-loss"])
        .output()
        .expect("run cairn-chaos (cargo build --workspace)");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--allow-majority-loss: not supported"),
        "{out:?}"
    );
}
