//! The pods run's verdict: the report with `cairn-chaos`'s keys, its table, and the plot of the
//! writers' ack latency with every fault window shaded (`cairn_chaos::plot`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use cairn_chaos::report::{OpCounts, RunReport};
use cairn_chaos::workload::fs::{Ack, Written};

use super::nemesis::NodeFault;
use super::writer::{AckLog, FileCheck};

/// One fault as it happened, in unix seconds: injected at `start`, healed at `end`, the node
/// and every writer back at `recovered`.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultWindow {
    pub kind: NodeFault,
    pub node: String,
    pub start: f64,
    pub end: f64,
    pub recovered: f64,
}

/// One writer pod's log and what the checker found in its file.
#[derive(Clone, Debug, PartialEq)]
pub struct WriterResult {
    pub pod: String,
    pub node: String,
    pub log: AckLog,
    pub check: FileCheck,
}

impl WriterResult {
    /// A writer failed when a write or fsync returned an error, or its acks skipped or
    /// repeated a sequence.
    pub fn failed(&self) -> bool {
        !self.log.errors.is_empty() || self.check.disordered > 0
    }
}

/// The report: every ack an ok operation, every write error a failed one (no outcome is
/// unknown: the writer prints either), faults by kind, lost records, no violations (there is
/// no register model: the checker compares records), the longest stall per fault kind.
pub fn report(seed: u64, writers: &[WriterResult], faults: &[FaultWindow]) -> RunReport {
    let mut by_kind = BTreeMap::new();
    for f in faults {
        *by_kind.entry(f.kind.name().to_string()).or_insert(0) += 1;
    }
    RunReport {
        ops: OpCounts {
            ok: writers.iter().map(|w| w.log.acks.len() as u64).sum(),
            failed: writers.iter().map(|w| w.log.errors.len() as u64).sum(),
            unknown: 0,
        },
        faults: by_kind,
        lost: writers.iter().map(|w| w.check.lost.len() as u64).sum(),
        violations: 0,
        unavailable_max_s: unavailable_max_s(writers, faults),
        seed,
        fs: None,
    }
}

/// Per fault kind, the longest time some writer went without an ack (between two of its
/// acks or starts) overlapping a fault of that kind, to the millisecond.
pub fn unavailable_max_s(
    writers: &[WriterResult],
    faults: &[FaultWindow],
) -> BTreeMap<String, f64> {
    let ns = |t: f64| (t * 1e9) as u64;
    let gaps: Vec<(u64, u64)> = writers
        .iter()
        .flat_map(|w| {
            let mut times: Vec<u64> = w.log.acks.iter().map(|a| ns(a.1)).collect();
            times.extend(w.log.starts.iter().skip(1).map(|s| ns(s.1)));
            times.sort_unstable();
            times.windows(2).map(|p| (p[0], p[1])).collect::<Vec<_>>()
        })
        .collect();
    cairn_chaos::report::longest_gaps(
        &gaps,
        faults
            .iter()
            .map(|f| (f.kind.name(), ns(f.start), ns(f.end))),
    )
}

/// The verdict table.
pub fn table(
    r: &RunReport,
    writers: &[WriterResult],
    faults: &[FaultWindow],
    took_s: f64,
) -> String {
    let mut t = String::new();
    let pairs = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let faults_by: BTreeMap<String, String> = r
        .faults
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    let stalls: BTreeMap<String, String> = r
        .unavailable_max_s
        .iter()
        .map(|(k, v)| (k.clone(), format!("{v:.3} s")))
        .collect();
    let recovery = faults.last().map_or(0.0, |f| f.recovered - f.end);
    let _ = writeln!(t, "seed                      {}", r.seed);
    let _ = writeln!(t, "took                      {took_s:.1} s");
    let _ = writeln!(
        t,
        "operations                ok {}  failed {}  unknown {}",
        r.ops.ok, r.ops.failed, r.ops.unknown
    );
    let _ = writeln!(t, "faults                    {}", pairs(&faults_by));
    let _ = writeln!(t, "acknowledged lost         {}", r.lost);
    let _ = writeln!(
        t,
        "violations                {} (no register model: records are checked)",
        r.violations
    );
    let _ = writeln!(t, "longest unavailability    {}", pairs(&stalls));
    let _ = writeln!(t, "recovery after final heal {recovery:.1} s");
    for w in writers {
        let _ = writeln!(
            t,
            "writer {:<18} on {}: {} acks, {} records intact, {} lost, {} starts, {} errors",
            w.pod,
            w.node,
            w.log.acks.len(),
            w.check.intact,
            w.check.lost.len(),
            w.log.starts.len(),
            w.log.errors.len()
        );
    }
    let failed = writers.iter().filter(|w| w.failed()).count();
    let _ = writeln!(
        t,
        "verdict                   {}",
        match (r.lost, failed) {
            (0, 0) => "PASS".to_string(),
            (lost, failed) => format!("FAIL ({lost} lost, {failed} writers failed)"),
        }
    );
    t
}

/// The SVG: each ack at its time into the run (`t0`, unix seconds) with its latency, one
/// shaded window per fault.
pub fn plot(writers: &[WriterResult], faults: &[FaultWindow], t0: f64, title: &str) -> String {
    let ns = |t: f64| ((t - t0).max(0.0) * 1e9) as u64;
    let acks: Vec<Ack> = writers
        .iter()
        .flat_map(|w| {
            w.log
                .acks
                .iter()
                .zip(w.log.latencies())
                .map(|(a, (at, latency))| Ack {
                    what: Written::Record(a.0),
                    at: ns(at),
                    latency_ns: (latency * 1e9) as u64,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let windows: Vec<cairn_chaos::plot::Window> = faults
        .iter()
        .map(|f| cairn_chaos::plot::Window {
            label: format!("{} {}", f.kind.name(), f.node),
            start: ns(f.start),
            end: ns(f.end),
        })
        .collect();
    cairn_chaos::plot::svg_windows(&[], &acks, &windows, title)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos_pods::writer::{check, record};

    fn writer(text: &str, records: u64) -> WriterResult {
        let log = AckLog::parse(text);
        let file: Vec<u8> = (0..records).flat_map(record).collect();
        WriterResult {
            pod: "w".into(),
            node: "node-1".into(),
            check: check(&file, &log),
            log,
        }
    }

    fn window(kind: NodeFault, start: f64, end: f64) -> FaultWindow {
        FaultWindow {
            kind,
            node: "node-2".into(),
            start,
            end,
            recovered: end + 1.0,
        }
    }

    #[test]
    fn the_report_counts_acks_faults_losses_and_the_longest_stall_per_kind() {
        let text =
            "start 0 0.0\nack 0 1.0\nack 1 2.0\nack 2 7.5\nerror 3 EIO\nstart 3 8.0\nack 3 9.0\n";
        let whole = writer(text, 4);
        let short = writer(text, 2);
        let faults = [
            window(NodeFault::NodeKill, 3.0, 4.0),
            window(NodeFault::Partition, 8.2, 8.5),
        ];
        let r = report(5, &[whole.clone(), short], &faults);
        assert_eq!((r.ops.ok, r.ops.failed, r.lost), (8, 2, 2));
        assert_eq!(r.faults["node-kill"], 1);
        assert_eq!(r.unavailable_max_s["node-kill"], 5.5);
        assert_eq!(r.unavailable_max_s["partition"], 1.0);
        assert!(whole.failed(), "a write error fails the writer");
        let t = table(&r, &[whole], &faults, 12.0);
        assert!(t.contains("FAIL (2 lost, 1 writers failed)"), "{t}");
        let svg = plot(&[writer(text, 4)], &faults, 0.0, "t");
        assert_eq!(svg.matches("class=\"fault\"").count(), 2);
    }
}
