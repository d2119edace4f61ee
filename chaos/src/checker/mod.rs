//! The linearizability checker for a per-block register model: it splits a history by key (registers
//! compose), checks each key on a pool of threads within a budget, and gathers one verdict per key.

mod final_reads;
mod prepare;
mod search;
mod verdict;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use final_reads::{FinalReadProblem, check_final_reads};
pub use verdict::{GaveUp, KeyReport, Reason, Report, Verdict, Violation};

use crate::error::Error;
use crate::history::{Key, Op, Value, validate};
use prepare::{PrepOp, Step, prepare};
use search::{Budget, SearchResult, search};

/// The search budget per key, and how many keys are checked at once.
#[derive(Clone, Debug)]
pub struct Config {
    /// Search steps (placements and backtracks) one key may take before the checker gives up on it.
    pub max_steps_per_key: u64,
    /// Wall time one key may take before the checker gives up on it.
    pub max_time_per_key: Option<Duration>,
    pub threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_steps_per_key: 50_000_000,
            max_time_per_key: Some(Duration::from_secs(60)),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Checks that `history` is linearizable for a register per key, each starting zeroed.
pub fn check(history: &[Op], config: &Config) -> Result<Report, Error> {
    validate(history)?;
    let mut by_key: BTreeMap<&Key, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        by_key.entry(&op.key).or_default().push(index);
    }
    let keys: Vec<(&Key, Vec<usize>)> = by_key.into_iter().collect();
    let budget = Budget {
        max_steps: config.max_steps_per_key,
        max_time: config.max_time_per_key,
    };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<KeyReport>>> = Mutex::new(vec![None; keys.len()]);
    std::thread::scope(|scope| {
        for _ in 0..config.threads.clamp(1, keys.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((key, indexes)) = keys.get(i) else {
                        break;
                    };
                    let report = check_key(history, key, indexes, budget);
                    results
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())[i] = Some(report);
                }
            });
        }
    });
    let results = results
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok(Report {
        keys: results
            .into_iter()
            .map(|r| r.expect("every key is checked by some thread"))
            .collect(),
    })
}

fn check_key(history: &[Op], key: &Key, indexes: &[usize], budget: Budget) -> KeyReport {
    let key = key.clone();
    let ops = match prepare(history, indexes) {
        Ok(ops) => ops,
        Err(violation) => {
            return KeyReport {
                key,
                ops: indexes.len(),
                verdict: Verdict::Violation(violation),
            };
        }
    };
    let verdict = match search(&ops, budget) {
        SearchResult::Linearizable => Verdict::Linearizable,
        SearchResult::Stuck { stuck, prefix } => {
            Verdict::Violation(explain(history, &ops, stuck, &prefix))
        }
        SearchResult::GaveUp {
            steps,
            elapsed,
            deepest,
        } => Verdict::GaveUp(GaveUp {
            steps,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            deepest,
            total: ops.len(),
        }),
    };
    KeyReport {
        key,
        ops: indexes.len(),
        verdict,
    }
}

/// The ops that explain a stuck search: the op that could not be placed, the last write of the
/// deepest prefix (it set the register), and the write of the value the stuck op read.
fn explain(history: &[Op], ops: &[PrepOp], stuck: usize, prefix: &[usize]) -> Violation {
    let last_write = prefix
        .iter()
        .rev()
        .map(|&i| ops[i].index)
        .find(|&i| history[i].written().is_some());
    let register = last_write
        .and_then(|i| history[i].written())
        .unwrap_or(Value::INITIAL);
    let mut involved = vec![ops[stuck].index];
    involved.extend(last_write);
    if let Step::Read(value) = ops[stuck].step {
        let writer = ops
            .iter()
            .find(|op| op.step == Step::Write(value))
            .map(|op| op.index);
        involved.extend(writer.filter(|w| !involved.contains(w)));
    }
    Violation {
        reason: Reason::NoLinearization {
            register,
            linearized: prefix.len(),
            total: ops.len(),
        },
        ops: involved.into_iter().map(|i| history[i].clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Outcome;
    use crate::history::tests::{key, read, write};

    fn verdict(history: &[Op]) -> Verdict {
        let report = check(history, &Config::default()).unwrap();
        assert_eq!(report.keys.len(), 1, "hand-made histories use one key");
        report.keys[0].verdict.clone()
    }

    fn assert_linearizable(history: &[Op]) {
        let v = verdict(history);
        assert!(
            matches!(v, Verdict::Linearizable),
            "expected linearizable, got {v:?}"
        );
    }

    /// Asserts a violation and returns its reason and the clients of the ops it names.
    fn violation(history: &[Op]) -> (Reason, Vec<u64>) {
        match verdict(history) {
            Verdict::Violation(v) => (v.reason, v.ops.iter().map(|op| op.client).collect()),
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn sequential_writes_and_reads_are_linearizable() {
        assert_linearizable(&[
            read(1, 0, 0, 1),
            write(1, 1, 2, Some(3), Outcome::Ok),
            read(2, 1, 4, 5),
            write(2, 2, 6, Some(7), Outcome::Ok),
            read(1, 2, 8, 9),
        ]);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_a_violation() {
        let (reason, clients) = violation(&[
            write(1, 1, 0, Some(10), Outcome::Ok),
            write(1, 2, 20, Some(30), Outcome::Ok),
            read(2, 1, 40, 50),
        ]);
        assert_eq!(
            reason,
            Reason::NoLinearization {
                register: Value(2),
                linearized: 2,
                total: 3
            }
        );
        assert_eq!(
            clients,
            vec![2, 1, 1],
            "the stale read, the write it missed, the write it saw"
        );
    }

    #[test]
    fn a_read_of_zeroes_after_an_acknowledged_write_is_a_violation() {
        let (reason, _) = violation(&[write(1, 1, 0, Some(10), Outcome::Ok), read(2, 0, 11, 12)]);
        assert!(
            matches!(
                reason,
                Reason::NoLinearization {
                    register: Value(1),
                    ..
                }
            ),
            "{reason:?}"
        );
    }

    #[test]
    fn lost_update_an_acknowledged_write_that_vanishes_is_a_violation() {
        // Write 2 was acknowledged and seen, then the register went back to write 1's value.
        let (reason, clients) = violation(&[
            write(1, 1, 0, Some(10), Outcome::Ok),
            write(2, 2, 20, Some(30), Outcome::Ok),
            read(3, 2, 40, 50),
            read(4, 1, 60, 70),
        ]);
        assert!(
            matches!(
                reason,
                Reason::NoLinearization {
                    register: Value(2),
                    ..
                }
            ),
            "{reason:?}"
        );
        assert_eq!(clients[0], 4);
        // Two concurrent writes, then sequential reads that see both orders: one of them was lost.
        violation(&[
            write(1, 1, 0, Some(10), Outcome::Ok),
            write(2, 2, 0, Some(10), Outcome::Ok),
            read(3, 1, 20, 30),
            read(3, 2, 40, 50),
        ]);
    }

    #[test]
    fn concurrent_writes_may_be_observed_in_either_order() {
        let writes = [
            write(1, 1, 0, Some(10), Outcome::Ok),
            write(2, 2, 5, Some(15), Outcome::Ok),
        ];
        for last in [1, 2] {
            let mut history = writes.to_vec();
            history.push(read(3, last, 20, 30));
            history.push(read(4, last, 31, 40));
            assert_linearizable(&history);
        }
        // Readers during the writes may see 1 then 2, or 2 then 1, as long as the end agrees.
        let mut history = writes.to_vec();
        history.extend([read(3, 2, 2, 12), read(4, 1, 3, 13), read(5, 1, 20, 30)]);
        assert_linearizable(&history);
        let mut history = writes.to_vec();
        history.extend([read(3, 1, 2, 12), read(4, 2, 3, 13), read(5, 2, 20, 30)]);
        assert_linearizable(&history);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_a_violation() {
        let (reason, clients) =
            violation(&[write(1, 1, 0, Some(10), Outcome::Ok), read(2, 9, 20, 30)]);
        assert_eq!(reason, Reason::NeverWritten { value: Value(9) });
        assert_eq!(clients, vec![2]);
    }

    #[test]
    fn a_violation_reads_as_a_sentence_naming_its_ops() {
        let history = [
            write(1, 1, 0, Some(10), Outcome::Ok),
            write(1, 2, 20, Some(30), Outcome::Ok),
            read(7, 1, 40, 50),
        ];
        let Verdict::Violation(v) = verdict(&history) else {
            panic!("expected a violation")
        };
        let text = v.to_string();
        assert!(
            text.starts_with(
                "no linearization: the longest consistent prefix placed 2 of 3 ops, leaving 2"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("; client 7 read 1 [40, 50] ok; client 1 write 2 [20, 30] ok; client 1 write 1 [0, 10] ok"),
            "{text}"
        );
    }

    #[test]
    fn unknown_writes_may_appear_later_or_never() {
        let unknown = write(1, 5, 0, None, Outcome::Unknown);
        assert_linearizable(&[
            unknown.clone(),
            read(2, 0, 10, 20),
            read(2, 5, 100, 110),
            read(3, 5, 120, 130),
        ]);
        assert_linearizable(&[unknown.clone(), read(2, 0, 10, 20), read(2, 0, 100, 110)]);
        // Appearing after a later acknowledged write is fine too: the unknown write landed last.
        assert_linearizable(&[
            unknown.clone(),
            write(2, 6, 50, Some(60), Outcome::Ok),
            read(3, 6, 70, 80),
            read(3, 5, 90, 100),
        ]);
        // But once seen it cannot vanish.
        let (reason, _) = violation(&[unknown, read(2, 5, 10, 20), read(2, 0, 30, 40)]);
        assert!(
            matches!(reason, Reason::NoLinearization { .. }),
            "{reason:?}"
        );
    }

    #[test]
    fn failed_writes_are_dropped_and_must_never_be_observed() {
        let failed = write(1, 5, 0, Some(10), Outcome::Failed);
        assert_linearizable(&[failed.clone(), read(2, 0, 20, 30)]);
        let (reason, clients) = violation(&[failed, read(2, 5, 20, 30)]);
        assert_eq!(reason, Reason::FailedWriteObserved { value: Value(5) });
        assert_eq!(clients, vec![2, 1]);
    }

    #[test]
    fn a_read_cannot_return_a_write_invoked_after_it_completed() {
        let (reason, _) = violation(&[read(2, 5, 0, 10), write(1, 5, 20, Some(30), Outcome::Ok)]);
        assert_eq!(reason, Reason::ReadBeforeWrite { value: Value(5) });
        // Touching intervals are concurrent: the read may see the write.
        assert_linearizable(&[read(2, 5, 0, 20), write(1, 5, 20, Some(30), Outcome::Ok)]);
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut other = vec![write(1, 1, 0, Some(10), Outcome::Ok), read(2, 0, 20, 30)];
        for op in &mut other {
            op.key = key(1);
        }
        let mut history = vec![write(1, 1, 0, Some(10), Outcome::Ok), read(2, 1, 20, 30)];
        history.extend(other);
        let report = check(
            &history,
            &Config {
                threads: 2,
                ..Config::default()
            },
        )
        .unwrap();
        assert!(matches!(
            report.verdict(&key(0)),
            Some(Verdict::Linearizable)
        ));
        assert!(matches!(
            report.verdict(&key(1)),
            Some(Verdict::Violation(_))
        ));
        assert_eq!(report.violations().count(), 1);
        assert!(!report.is_linearizable());
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains(r#""verdict":"violation""#), "{json}");
    }

    #[test]
    fn an_exhausted_budget_is_reported_not_waited_out() {
        // Eight concurrent writes, each read by a concurrent reader, then a read of zeroes.
        let mut history: Vec<Op> = (1..=8)
            .flat_map(|v| {
                [
                    write(v, v, 0, Some(100), Outcome::Ok),
                    read(v + 20, v, 0, 100),
                ]
            })
            .collect();
        history.push(read(40, 0, 200, 300));
        let config = Config {
            max_steps_per_key: 100,
            ..Config::default()
        };
        let report = check(&history, &config).unwrap();
        let gave_up: Vec<_> = report.gave_up().collect();
        assert_eq!(gave_up.len(), 1);
        assert_eq!(gave_up[0].1.total, 17);
        assert!(!report.is_linearizable());
        assert!(
            matches!(verdict(&history), Verdict::Violation(_)),
            "with the default budget it decides"
        );
    }

    #[test]
    fn an_invalid_history_is_refused() {
        let history = [
            write(1, 1, 0, Some(10), Outcome::Ok),
            write(2, 1, 20, Some(30), Outcome::Ok),
        ];
        assert!(matches!(
            check(&history, &Config::default()),
            Err(Error::InvalidOp { index: 1, .. })
        ));
    }
}
