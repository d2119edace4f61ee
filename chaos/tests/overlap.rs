//! Overlapping faults in a chaos run (`--overlap`): several at once on five nodes within the
//! minority budget, and skewed clocks beside partitions, kills and pauses. Needs root, FUSE, nft.

use std::time::Duration;

use cairn_chaos::schedule::Pacing;
use cairn_chaos::{FaultKind, FaultRecord, RunConfig};

mod common;
use common::{config, run_clean};

/// A 30 s run of `faults` on five nodes, up to two at once.
fn overlapping(seed: u64, faults: &[FaultKind]) -> RunConfig {
    RunConfig {
        nodes: 5,
        overlap: 2,
        ..config(seed, faults, Duration::from_secs(30))
    }
}

/// Up to two faults at once on five nodes (kills, pauses, isolations): some start while
/// another is active, yet no group (a volume's, or the meta group of every node) ever has a
/// majority of its replicas broken or catching up, and nothing is lost. The run's plot is
/// well-formed SVG with one shaded rect per fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_faults_keep_every_group_a_majority_and_lose_nothing() {
    let mut config = overlapping(
        42,
        &[
            FaultKind::Kill,
            FaultKind::Pause,
            FaultKind::PartitionIsolate,
        ],
    );
    let plot = std::env::temp_dir().join(format!("cairn-chaos-plot-{}.svg", std::process::id()));
    config.plot = Some(plot.clone());
    let outcome = run_clean(config).await;
    let faults = &outcome.faults;
    assert!(
        faults.iter().any(|f| f.overlapping >= 1),
        "no fault started while another was active: {faults:?}"
    );
    let all: Vec<u64> = (1..=5).collect();
    // What each fault recorded as broken is what the scheduler says its kind breaks.
    for f in faults {
        if f.kind.shape().is_none() || f.minority.is_empty() {
            assert_eq!(
                cairn_chaos::audit::broken_by(f),
                cairn_chaos::budget::breaks(f.kind, &f.nodes, &all, &[]),
                "{f:?}"
            );
        }
    }
    // Every node a fault left broken has a catch-up with its heal time, and one proven from
    // answers asked after that heal, unless the run's end healed it.
    for f in faults.iter().filter(|f| f.healed_at_end.is_none()) {
        for n in cairn_chaos::audit::broken_by(f) {
            let c = f.catch_up.iter().find(|c| c.node == n);
            let c = c.unwrap_or_else(|| panic!("node {n}: no catch-up recorded: {f:?}"));
            assert!(c.healed >= f.end && c.from <= f.end, "{c:?} {f:?}");
        }
    }
    // At no instant more nodes broken (a fault on, or healed and not yet proven caught up)
    // than the budget allows: two of five, one of each volume's three.
    let audit = cairn_chaos::audit::audit(faults, &outcome.members, &all)
        .unwrap_or_else(|e| panic!("the record does not prove the budget: {e}"));
    eprintln!("budget: {audit:?}");
    assert!(audit.proven > 0 && audit.most_broken <= 2, "{audit:?}");
    let text = std::fs::read_to_string(&plot).expect("the plot was written");
    std::fs::remove_file(&plot).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the plot is well-formed XML");
    let shaded = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("class") == Some("fault"))
        .count();
    assert_eq!(shaded, faults.len(), "one shaded rect per fault");
}

/// Skewed clocks beside other faults (five nodes, up to two faults at once): a clock fault's
/// node counts as broken only while it restarts and catches up, so isolations, kills and
/// pauses run while a clock is skewed; a fast and a slow clock never run together; every clock
/// fault took effect; nothing is lost and no read is stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skewed_clocks_run_beside_partitions_kills_and_pauses_and_lose_nothing() {
    // Seed 47's schedule: a slow clock, an isolation, a fast clock (which waits for the slow
    // one's heal), another isolation, a slow clock, a kill, pauses.
    let mut config = overlapping(
        47,
        &[
            FaultKind::Clock,
            FaultKind::ClockSlow,
            FaultKind::PartitionIsolate,
            FaultKind::Kill,
            FaultKind::Pause,
        ],
    );
    config.pacing = Pacing {
        gap_ms: 200..1_000,
        hold_ms: 2_000..5_000,
    };
    let outcome = run_clean(config).await;
    let clocks: Vec<&FaultRecord> = outcome
        .faults
        .iter()
        .filter(|f| f.clock_rate.is_some())
        .collect();
    assert!(!clocks.is_empty(), "no clock fault: {:?}", outcome.faults);
    let during = |f: &FaultRecord, c: &FaultRecord| f.start < c.end && c.start < f.end;
    for c in &clocks {
        assert_eq!(c.clock_faked, Some(true), "{c:?}");
        for d in &clocks {
            assert!(
                c.clock_rate == d.clock_rate || !during(c, d),
                "a fast and a slow clock at once: {c:?} {d:?}"
            );
        }
    }
    let beside: Vec<String> = outcome
        .faults
        .iter()
        .filter(|f| f.clock_rate.is_none())
        .filter_map(|f| {
            let c = clocks.iter().find(|c| during(f, c))?;
            Some(format!(
                "{} on {:?} beside x{:?} on {:?}",
                f.kind.name(),
                f.nodes,
                c.clock_rate.unwrap_or_default(),
                c.nodes
            ))
        })
        .collect();
    eprintln!("beside a skewed clock: {beside:#?}");
    assert!(
        !beside.is_empty(),
        "no fault ran beside a skewed clock: {:?}",
        outcome.faults
    );
}

/// Partitions overlap: each has its own nftables table, so an isolation starts while another
/// holds (seven nodes, so that two isolations fit the minority budget beside two volumes of
/// three; up to two at once), each drops its own node's packets and heals alone, nothing is
/// lost, and the run leaves no table behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_overlap_each_in_a_table_of_its_own() {
    let mut config = RunConfig {
        nodes: 7,
        ..overlapping(51, &[FaultKind::PartitionIsolate])
    };
    config.pacing = Pacing {
        gap_ms: 100..500,
        hold_ms: 1_000..3_000,
    };
    let table = format!("cairn-chaos-{}", config.name);
    let outcome = run_clean(config).await;
    let isolations = &outcome.faults;
    let during = |f: &FaultRecord, g: &FaultRecord| f.start < g.end && g.start < f.end;
    let overlapped: Vec<(u64, u64)> = isolations
        .iter()
        .enumerate()
        .flat_map(|(i, f)| {
            isolations[i + 1..]
                .iter()
                .filter(|g| during(f, g))
                .map(|g| (f.nodes[0], g.nodes[0]))
        })
        .collect();
    eprintln!("isolations at once: {overlapped:?}");
    assert!(
        !overlapped.is_empty(),
        "no isolation started while another held: {isolations:?}"
    );
    assert!(
        overlapped.iter().all(|(a, b)| a != b),
        "one node isolated twice at once: {overlapped:?}"
    );
    for f in isolations {
        assert!(
            f.dropped_packets.iter().sum::<u64>() > 0,
            "an isolation that dropped nothing: {f:?}"
        );
    }
    let out = std::process::Command::new("nft")
        .args(["list", "tables", "bridge"])
        .output()
        .expect("nft runs");
    let tables = String::from_utf8_lossy(&out.stdout);
    assert!(
        !tables.contains(&table),
        "the run left nftables tables: {tables}"
    );
}
