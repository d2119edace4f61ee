//! A chaos run's verdict: operations by outcome, faults by type, acknowledged writes lost,
//! violations, the longest unavailability per fault type and the seed, as JSON with those keys.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::checker::{self, FinalReadProblem};
use crate::history::{Op, Outcome};
use crate::nemesis::FaultRecord;
use crate::workload::block::FINAL_READER;
use crate::workload::fs::FsCounts;

/// The verdict of a run; serialises to exactly the keys `cairn-harness chaos --report` promises.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub ops: OpCounts,
    /// Faults injected, by type (`kill`, `pause`, ...).
    pub faults: BTreeMap<String, u64>,
    /// Acknowledged writes that the final reads did not find.
    pub lost: u64,
    /// Keys whose history has no linearization, plus final reads of impossible values or not
    /// done at all.
    pub violations: u64,
    /// Per fault type, the longest time (seconds) some volume completed no operation while a
    /// fault of that type was on.
    pub unavailable_max_s: BTreeMap<String, f64>,
    pub seed: u64,
    /// The fs workload's acknowledged writes read back intact, missing, different, the write
    /// errors it saw and the fsck verdict (only in runs with `--workload fs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsCounts>,
}

/// The workload's operations by outcome (the final reads are not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
}

impl RunReport {
    pub fn new(
        seed: u64,
        history: &[Op],
        faults: &[FaultRecord],
        check: &checker::Report,
        finals: &[FinalReadProblem],
    ) -> RunReport {
        let mut ops = OpCounts::default();
        for op in history.iter().filter(|op| op.client != FINAL_READER) {
            match op.outcome {
                Outcome::Ok => ops.ok += 1,
                Outcome::Failed => ops.failed += 1,
                Outcome::Unknown => ops.unknown += 1,
            }
        }
        let mut by_type = BTreeMap::new();
        for f in faults {
            *by_type.entry(f.kind.name().to_string()).or_insert(0) += 1;
        }
        let lost = finals
            .iter()
            .filter(|p| matches!(p, FinalReadProblem::Lost { .. }))
            .count() as u64;
        let violations = check.violations().count() as u64 + finals.len() as u64 - lost;
        RunReport {
            ops,
            faults: by_type,
            lost,
            violations,
            unavailable_max_s: unavailable_max_s(history, faults),
            seed,
            fs: None,
        }
    }

    /// Adds the fs workload's findings: its lost writes count as lost, its corrupt ones and
    /// an unclean fsck as violations.
    pub fn add_fs(&mut self, counts: FsCounts) {
        self.lost += counts.lost;
        self.violations += counts.corrupt + u64::from(!counts.fsck_clean);
        self.fs = Some(counts);
    }

    /// Whether the run found nothing wrong.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.violations == 0
    }
}

/// Per fault type, the longest gap between two acknowledged operations of one volume (or from
/// the first invocation to the first acknowledgement) that overlaps a fault of that type.
pub fn unavailable_max_s(history: &[Op], faults: &[FaultRecord]) -> BTreeMap<String, f64> {
    let workload = || history.iter().filter(|op| op.client != FINAL_READER);
    let Some(begin) = workload().map(|op| op.invoke).min() else {
        return BTreeMap::new();
    };
    let end = workload()
        .filter_map(|op| op.complete)
        .max()
        .unwrap_or(begin);
    let mut acks: HashMap<&str, Vec<u64>> = HashMap::new();
    for op in workload().filter(|op| op.outcome == Outcome::Ok) {
        acks.entry(op.key.volume.as_str())
            .or_default()
            .extend(op.complete);
    }
    let gaps: Vec<(u64, u64)> = acks
        .into_values()
        .flat_map(|mut times| {
            times.sort_unstable();
            times.insert(0, begin);
            times.push(end);
            times.windows(2).map(|w| (w[0], w[1])).collect::<Vec<_>>()
        })
        .collect();
    longest_gaps(
        &gaps,
        faults.iter().map(|f| (f.kind.name(), f.start, f.end)),
    )
}

/// Per fault type, the longest of `gaps` (start, end in ns) that overlaps a fault window
/// `(type, start, end)` of that type, in seconds to the millisecond (0 when none does).
pub fn longest_gaps<'a>(
    gaps: &[(u64, u64)],
    windows: impl IntoIterator<Item = (&'a str, u64, u64)>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (kind, start, end) in windows {
        let longest = gaps
            .iter()
            .filter(|&&(a, b)| a < end && b > start)
            .map(|&(a, b)| b - a)
            .max()
            .unwrap_or(0);
        let seconds = (longest as f64 / 1e6).round() / 1e3;
        let entry = out.entry(kind.to_string()).or_insert(0.0);
        if seconds > *entry {
            *entry = seconds;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Key, OpKind, Value};
    use crate::nemesis::{FaultKind, Target};

    const S: u64 = 1_000_000_000;

    fn ok_write(volume: &str, value: u64, invoke: u64, complete: u64) -> Op {
        Op {
            client: 1,
            key: Key {
                volume: volume.into(),
                block: 0,
            },
            kind: OpKind::Write {
                value: Value(value),
            },
            invoke,
            complete: Some(complete),
            outcome: Outcome::Ok,
        }
    }

    fn fault(kind: FaultKind, start: u64, end: u64) -> FaultRecord {
        FaultRecord {
            end,
            ..FaultRecord::new(kind, Target::Node { id: 1 }, vec![1], start)
        }
    }

    #[test]
    fn the_longest_gap_overlapping_a_fault_is_its_types_unavailability() {
        let history = vec![
            ok_write("a", 1, 0, S),
            ok_write("a", 2, S, 2 * S),
            // Volume a completes nothing from 2 s to 6.5 s; volume b stays available.
            ok_write("a", 3, 2 * S, 6 * S + S / 2),
            ok_write("b", 4, 0, 3 * S),
            ok_write("b", 5, 3 * S, 4 * S),
            ok_write("b", 6, 4 * S, 7 * S),
        ];
        let faults = [
            fault(FaultKind::Kill, 3 * S, 4 * S),
            fault(FaultKind::Pause, 6 * S + S * 3 / 4, 7 * S),
            fault(FaultKind::Kill, S / 10, S / 5),
        ];
        let got = unavailable_max_s(&history, &faults);
        assert_eq!(got["kill"], 4.5);
        assert_eq!(got["pause"], 3.0, "volume b's last gap, 4 s to 7 s");
    }

    #[test]
    fn the_report_serialises_to_exactly_the_promised_keys() {
        let history = vec![ok_write("a", 1, 0, S)];
        let report = RunReport::new(
            42,
            &history,
            &[fault(FaultKind::Kill, 0, S)],
            &checker::check(&history, &checker::Config::default()).unwrap(),
            &[],
        );
        let json = serde_json::to_value(&report).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "faults",
                "lost",
                "ops",
                "seed",
                "unavailable_max_s",
                "violations"
            ]
        );
        assert_eq!(
            json["ops"],
            serde_json::json!({"ok": 1, "failed": 0, "unknown": 0})
        );
        assert_eq!(json["faults"], serde_json::json!({"kill": 1}));
        assert!(report.clean());
    }
}
