//! The check after recovery: every key with an acknowledged write is read once more, and must hold
//! that write's value or a write not older than it; anything else is an acknowledged write lost.

use std::collections::HashMap;

use serde::Serialize;

use crate::error::Error;
use crate::history::{Key, Op, Outcome, Value, validate};

/// A problem a final read shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum FinalReadProblem {
    /// `write` was acknowledged, but the key finally holds `final_value`, which is the zeroed block or
    /// the value of a write that completed before `write` was invoked.
    Lost {
        key: Key,
        write: Op,
        final_value: Value,
    },
    /// The key had acknowledged writes but no final read was given for it.
    NotRead { key: Key },
    /// The final value was never written to this key.
    NeverWritten { key: Key, value: Value },
    /// The final value was written by a write that definitely failed.
    FailedWriteObserved { key: Key, write: Op },
}

/// Checks `finals` (a value read per key after the cluster recovered, with no writes running) against
/// the acknowledged writes of `history`. An unknown write's value is accepted as final for its key.
pub fn check_final_reads(
    history: &[Op],
    finals: &[(Key, Value)],
) -> Result<Vec<FinalReadProblem>, Error> {
    validate(history)?;
    let mut writer: HashMap<(&Key, Value), &Op> = HashMap::new();
    let mut acked: HashMap<&Key, Vec<&Op>> = HashMap::new();
    for op in history {
        if let Some(value) = op.written() {
            writer.insert((&op.key, value), op);
            if op.outcome == Outcome::Ok {
                acked.entry(&op.key).or_default().push(op);
            }
        }
    }
    let mut problems = Vec::new();
    let mut keys_read: Vec<&Key> = Vec::new();
    for (key, value) in finals {
        keys_read.push(key);
        let acked_here = acked.get(key).map_or(&[][..], Vec::as_slice);
        let final_writer = match writer.get(&(key, *value)) {
            Some(w) if w.outcome == Outcome::Failed => {
                problems.push(FinalReadProblem::FailedWriteObserved {
                    key: key.clone(),
                    write: (*w).clone(),
                });
                continue;
            }
            Some(w) => Some(*w),
            None if *value == Value::INITIAL => None,
            None => {
                problems.push(FinalReadProblem::NeverWritten {
                    key: key.clone(),
                    value: *value,
                });
                continue;
            }
        };
        for write in acked_here {
            // The zeroed block is older than every write; a write that completed before `write` began is older too.
            let older = final_writer.is_none_or(|f| f.precedes(write));
            if older {
                problems.push(FinalReadProblem::Lost {
                    key: key.clone(),
                    write: (*write).clone(),
                    final_value: *value,
                });
            }
        }
    }
    let mut unread: Vec<&Key> = acked
        .keys()
        .copied()
        .filter(|key| !keys_read.contains(key))
        .collect();
    unread.sort();
    problems.extend(
        unread
            .into_iter()
            .map(|key| FinalReadProblem::NotRead { key: key.clone() }),
    );
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::tests::{key, read, write};

    fn history() -> Vec<Op> {
        vec![
            write(1, 1, 0, Some(10), Outcome::Ok),
            write(2, 2, 20, Some(30), Outcome::Ok),
            // Concurrent with write 2: either may be last.
            write(3, 3, 25, Some(35), Outcome::Ok),
            write(4, 4, 40, None, Outcome::Unknown),
            write(5, 5, 41, Some(42), Outcome::Failed),
            read(6, 3, 50, 60),
        ]
    }

    fn lost(finals: &[(Key, Value)]) -> Vec<u64> {
        let problems = check_final_reads(&history(), finals).unwrap();
        problems
            .iter()
            .map(|p| match p {
                FinalReadProblem::Lost { write, .. } => write.written().unwrap().0,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_last_write_or_a_concurrent_or_unknown_one_is_fine() {
        assert!(lost(&[(key(0), Value(3))]).is_empty());
        assert!(lost(&[(key(0), Value(2))]).is_empty());
        assert!(lost(&[(key(0), Value(4))]).is_empty());
    }

    #[test]
    fn an_older_value_loses_every_acknowledged_write_after_it() {
        assert_eq!(lost(&[(key(0), Value(1))]), vec![2, 3]);
        assert_eq!(lost(&[(key(0), Value::INITIAL)]), vec![1, 2, 3]);
    }

    #[test]
    fn unread_keys_and_impossible_values_are_reported() {
        let problems = check_final_reads(&history(), &[]).unwrap();
        assert_eq!(problems, vec![FinalReadProblem::NotRead { key: key(0) }]);
        let problems = check_final_reads(&history(), &[(key(0), Value(9))]).unwrap();
        assert_eq!(
            problems,
            vec![FinalReadProblem::NeverWritten {
                key: key(0),
                value: Value(9)
            }]
        );
        let problems = check_final_reads(&history(), &[(key(0), Value(5))]).unwrap();
        assert!(
            matches!(&problems[..], [FinalReadProblem::FailedWriteObserved { write, .. }] if write.client == 5)
        );
        // A key nobody wrote reads zeroes and needs no final read.
        assert!(
            check_final_reads(&history(), &[(key(0), Value(3)), (key(7), Value::INITIAL)])
                .unwrap()
                .is_empty()
        );
    }
}
