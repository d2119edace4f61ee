//! Turns one key's recorded operations into the search's input: drops what cannot constrain the
//! register, tightens writes to their first observer, and names reads that no write can explain.

use std::collections::HashMap;

use super::verdict::{Reason, Violation};
use crate::history::{Op, OpKind, Outcome, Value};

/// What the register holds during the search: a value some read may return, or the value of a
/// blind write (one nobody read), which no read accepts; which blind write it was does not matter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Register {
    Holds(Value),
    Unread,
}

/// A register step the search places: a write of a value some read returned, a blind write (an
/// acknowledged write nobody read), or a read that returned a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Write(Value),
    Blind,
    Read(Value),
}

impl Step {
    /// The register after this step from `state`, or `None` when the step cannot happen there.
    pub(crate) fn apply(self, state: Register) -> Option<Register> {
        match self {
            Step::Write(value) => Some(Register::Holds(value)),
            Step::Blind => Some(Register::Unread),
            Step::Read(value) => (state == Register::Holds(value)).then_some(state),
        }
    }
}

/// One operation of the search: `index` points into the recorded history; it takes effect somewhere in
/// `[invoke, complete]` (closed, so ops that touch are concurrent).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PrepOp {
    pub index: usize,
    pub invoke: u64,
    pub complete: u64,
    pub step: Step,
}

/// Builds the search input for one key from `indexes` into `history` (all of one key, validated).
///
/// Exact simplifications: failed ops and reads without a value are dropped (they constrain nothing);
/// a write read by someone must take effect before the first of its readers completes, so its deadline
/// becomes that; an unknown write no read observed is dropped (a register write that nobody reads can be
/// placed last, which is the same as never); an acknowledged write nobody read becomes `Step::Blind`.
pub(crate) fn prepare(history: &[Op], indexes: &[usize]) -> Result<Vec<PrepOp>, Violation> {
    let mut writers: HashMap<Value, usize> = HashMap::new();
    for &i in indexes {
        if let Some(value) = history[i].written() {
            writers.insert(value, i);
        }
    }
    let mut first_observer: HashMap<usize, u64> = HashMap::new();
    for &i in indexes {
        let read = &history[i];
        let Some(value) = acknowledged_read(read) else {
            continue;
        };
        if value == Value::INITIAL {
            continue;
        }
        let explain = |reason, ops: Vec<Op>| Err(Violation { reason, ops });
        let Some(&w) = writers.get(&value) else {
            return explain(Reason::NeverWritten { value }, vec![read.clone()]);
        };
        let write = &history[w];
        if write.outcome == Outcome::Failed {
            return explain(
                Reason::FailedWriteObserved { value },
                vec![read.clone(), write.clone()],
            );
        }
        if read.deadline() < write.invoke {
            return explain(
                Reason::ReadBeforeWrite { value },
                vec![read.clone(), write.clone()],
            );
        }
        let deadline = first_observer.entry(w).or_insert(u64::MAX);
        *deadline = (*deadline).min(read.deadline());
    }
    let mut ops = Vec::new();
    for &i in indexes {
        let op = &history[i];
        let step = match (op.kind, op.outcome) {
            (_, Outcome::Failed) => continue,
            (OpKind::Read { .. }, _) => match acknowledged_read(op) {
                Some(value) => Step::Read(value),
                None => continue,
            },
            (OpKind::Write { value }, Outcome::Ok) if first_observer.contains_key(&i) => {
                Step::Write(value)
            }
            (OpKind::Write { .. }, Outcome::Ok) => Step::Blind,
            (OpKind::Write { value }, Outcome::Unknown) if first_observer.contains_key(&i) => {
                Step::Write(value)
            }
            (OpKind::Write { .. }, Outcome::Unknown) => continue,
        };
        let observed_by = first_observer.get(&i).copied().unwrap_or(u64::MAX);
        ops.push(PrepOp {
            index: i,
            invoke: op.invoke,
            complete: op.deadline().min(observed_by),
            step,
        });
    }
    ops.sort_by_key(|op| (op.invoke, op.index));
    Ok(ops)
}

fn acknowledged_read(op: &Op) -> Option<Value> {
    match (op.kind, op.outcome) {
        (OpKind::Read { value }, Outcome::Ok) => value,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::tests::{read, write};

    fn all(history: &[Op]) -> Vec<usize> {
        (0..history.len()).collect()
    }

    #[test]
    fn failed_ops_and_unobserved_unknown_writes_are_dropped() {
        let history = [
            write(1, 1, 0, Some(5), Outcome::Failed),
            write(2, 2, 0, None, Outcome::Unknown),
            Op {
                outcome: Outcome::Unknown,
                complete: None,
                ..read(3, 9, 1, 1)
            },
            read(4, 0, 6, 7),
        ];
        let ops = prepare(&history, &all(&history)).unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].index, 3);
        assert_eq!(ops[0].step, Step::Read(Value::INITIAL));
    }

    #[test]
    fn an_observed_write_must_land_before_its_first_reader_completes() {
        let history = [
            write(1, 1, 0, None, Outcome::Unknown),
            read(2, 1, 3, 40),
            read(3, 1, 10, 20),
            write(4, 2, 0, Some(100), Outcome::Ok),
            read(5, 2, 5, 50),
        ];
        let ops = prepare(&history, &all(&history)).unwrap();
        let deadline = |index| ops.iter().find(|op| op.index == index).unwrap().complete;
        assert_eq!(
            deadline(0),
            20,
            "unknown write bounded by its earliest-completing reader"
        );
        assert_eq!(
            deadline(3),
            50,
            "acknowledged write bounded by its reader too"
        );
        assert_eq!(deadline(1), 40);
    }

    #[test]
    fn an_acknowledged_write_nobody_read_is_blind() {
        let history = [
            write(1, 1, 0, Some(10), Outcome::Ok),
            write(2, 2, 0, Some(10), Outcome::Ok),
            read(3, 2, 20, 30),
        ];
        let ops = prepare(&history, &all(&history)).unwrap();
        let steps: Vec<Step> = ops.iter().map(|op| op.step).collect();
        assert_eq!(
            steps,
            vec![Step::Blind, Step::Write(Value(2)), Step::Read(Value(2))]
        );
        assert_eq!(
            ops[0].complete, 10,
            "a blind write keeps its own completion"
        );
        assert_eq!(
            Step::Read(Value(1)).apply(Register::Unread),
            None,
            "no read accepts a blind write's value"
        );
    }

    #[test]
    fn reads_no_write_explains_are_named() {
        let never = [write(1, 1, 0, Some(1), Outcome::Ok), read(2, 3, 2, 3)];
        assert_eq!(
            prepare(&never, &all(&never)).unwrap_err().reason,
            Reason::NeverWritten { value: Value(3) }
        );
        let failed = [write(1, 1, 0, Some(1), Outcome::Failed), read(2, 1, 2, 3)];
        let violation = prepare(&failed, &all(&failed)).unwrap_err();
        assert_eq!(
            violation.reason,
            Reason::FailedWriteObserved { value: Value(1) }
        );
        assert_eq!(violation.ops.len(), 2);
        let future = [read(2, 1, 2, 3), write(1, 1, 4, Some(5), Outcome::Ok)];
        assert_eq!(
            prepare(&future, &all(&future)).unwrap_err().reason,
            Reason::ReadBeforeWrite { value: Value(1) }
        );
    }
}
