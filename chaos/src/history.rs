//! The operation history a workload records and the checker replays: per operation its client, key,
//! kind, invocation and completion times and outcome, stored as JSON lines, plus the rules it must keep.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A register value: the unique version a write stored in a block. `Value::INITIAL` is the zeroed
/// block every key holds before its first write, so no write may store it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Value(pub u64);

impl Value {
    pub const INITIAL: Value = Value(0);
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One register of the model: a block of a volume.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    pub volume: String,
    pub block: u64,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.volume, self.block)
    }
}

/// What an operation did: a write of a unique value, or a read and the value it returned
/// (`None` when the read did not complete with `Ok`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OpKind {
    Write { value: Value },
    Read { value: Option<Value> },
}

/// How an operation ended, as its client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged: it took effect between its invocation and its completion.
    Ok,
    /// Definitely not applied (for example refused before it was proposed).
    Failed,
    /// Timed out or lost its connection: it may take effect at any time after its invocation, or never.
    Unknown,
}

/// One recorded operation. Times are monotonic (nanoseconds or logical ticks) and comparable across
/// clients; `complete` is required for `Ok` and `Failed` and ignored for `Unknown` (whose end is infinite).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub client: u64,
    pub key: Key,
    pub kind: OpKind,
    pub invoke: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<u64>,
    pub outcome: Outcome,
}

impl Op {
    /// When the operation's effect must have happened by: its completion, or never for `Unknown`.
    pub fn deadline(&self) -> u64 {
        match self.outcome {
            Outcome::Unknown => u64::MAX,
            Outcome::Ok | Outcome::Failed => self.complete.unwrap_or(u64::MAX),
        }
    }

    /// The value written, if this is a write.
    pub fn written(&self) -> Option<Value> {
        match self.kind {
            OpKind::Write { value } => Some(value),
            OpKind::Read { .. } => None,
        }
    }

    /// Whether this operation completed before `other` was invoked (real-time order).
    pub fn precedes(&self, other: &Op) -> bool {
        self.deadline() < other.invoke
    }
}

/// Checks the rules the checker relies on: completed ops carry a completion not before their
/// invocation, acknowledged reads carry their value, and each key's writes store distinct non-zero values.
pub fn validate(ops: &[Op]) -> Result<(), Error> {
    let invalid = |index: usize, reason: String| Error::InvalidOp { index, reason };
    let mut writers: HashMap<(&Key, Value), usize> = HashMap::new();
    for (index, op) in ops.iter().enumerate() {
        if op.outcome != Outcome::Unknown {
            match op.complete {
                None => {
                    return Err(invalid(
                        index,
                        format!("{:?} without a completion time", op.outcome),
                    ));
                }
                Some(complete) if complete < op.invoke => {
                    return Err(invalid(
                        index,
                        format!(
                            "completes at {complete} before its invocation at {}",
                            op.invoke
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        match op.kind {
            OpKind::Read { value: None } if op.outcome == Outcome::Ok => {
                return Err(invalid(index, "acknowledged read without a value".into()));
            }
            OpKind::Read { .. } => {}
            OpKind::Write { value } if value == Value::INITIAL => {
                return Err(invalid(
                    index,
                    "a write of the initial value 0 cannot be told apart from the zeroed block"
                        .into(),
                ));
            }
            OpKind::Write { value } => {
                if let Some(first) = writers.insert((&op.key, value), index) {
                    return Err(invalid(
                        index,
                        format!(
                            "writes value {value} on {} again (first written by operation {first})",
                            op.key
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Writes a history as JSON lines, one operation a line.
pub fn write_jsonl<W: Write>(mut out: W, ops: &[Op]) -> Result<(), Error> {
    for op in ops {
        serde_json::to_writer(&mut out, op).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Reads a history written by `write_jsonl` (blank lines are skipped; errors name the 1-based line).
pub fn read_jsonl<R: BufRead>(input: R) -> Result<Vec<Op>, Error> {
    let mut ops = Vec::new();
    for (number, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|source| Error::Parse {
            line: number + 1,
            source,
        })?;
        ops.push(op);
    }
    Ok(ops)
}

/// A thread-safe history for workloads: `now()` reads one monotonic clock shared by all clients,
/// and `record` appends a finished operation.
#[derive(Debug)]
pub struct Recorder {
    origin: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the recorder was made: take it before invoking and after completing an operation.
    pub fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// `at` in the same nanoseconds as `now` (0 before the recorder was made).
    pub fn at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn record(&self, op: Op) {
        self.ops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(op);
    }

    /// The operations recorded so far, in recording order.
    pub fn ops(&self) -> Vec<Op> {
        self.ops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn key(block: u64) -> Key {
        Key {
            volume: "vol-a".into(),
            block,
        }
    }

    pub(crate) fn write(
        client: u64,
        value: u64,
        invoke: u64,
        complete: Option<u64>,
        outcome: Outcome,
    ) -> Op {
        Op {
            client,
            key: key(0),
            kind: OpKind::Write {
                value: Value(value),
            },
            invoke,
            complete,
            outcome,
        }
    }

    pub(crate) fn read(client: u64, value: u64, invoke: u64, complete: u64) -> Op {
        Op {
            client,
            key: key(0),
            kind: OpKind::Read {
                value: Some(Value(value)),
            },
            invoke,
            complete: Some(complete),
            outcome: Outcome::Ok,
        }
    }

    #[test]
    fn json_lines_round_trip_keeps_every_field() {
        let ops = vec![
            write(1, 7, 10, Some(20), Outcome::Ok),
            write(2, 8, 11, None, Outcome::Unknown),
            read(3, 7, 21, 30),
            Op {
                kind: OpKind::Read { value: None },
                outcome: Outcome::Failed,
                ..read(4, 0, 5, 6)
            },
        ];
        let mut buf = Vec::new();
        write_jsonl(&mut buf, &ops).unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(
            text.lines()
                .next()
                .unwrap()
                .contains(r#""kind":{"type":"write","value":7}"#),
            "{text}"
        );
        assert!(
            !text.lines().nth(1).unwrap().contains("complete"),
            "an unknown op's completion is left out: {text}"
        );
        assert_eq!(read_jsonl(&buf[..]).unwrap(), ops);
    }

    #[test]
    fn a_bad_line_is_reported_with_its_number() {
        let mut buf = Vec::new();
        write_jsonl(&mut buf, &[read(1, 0, 1, 2)]).unwrap();
        buf.extend_from_slice(b"\n{\"client\": 1}\n");
        match read_jsonl(&buf[..]) {
            Err(Error::Parse { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn validation_refuses_what_the_checker_cannot_interpret() {
        let bad = [
            vec![write(1, 7, 10, None, Outcome::Ok)],
            vec![write(1, 7, 10, Some(9), Outcome::Failed)],
            vec![write(1, 0, 10, Some(11), Outcome::Ok)],
            vec![
                write(1, 7, 10, Some(11), Outcome::Ok),
                write(2, 7, 12, None, Outcome::Unknown),
            ],
            vec![Op {
                kind: OpKind::Read { value: None },
                ..read(1, 0, 1, 2)
            }],
        ];
        for ops in bad {
            assert!(
                matches!(validate(&ops), Err(Error::InvalidOp { .. })),
                "{ops:?} should be refused"
            );
        }
        let mut other_key = write(2, 7, 12, Some(13), Outcome::Ok);
        other_key.key = key(1);
        validate(&[
            write(1, 7, 10, Some(11), Outcome::Ok),
            other_key,
            write(3, 9, 1, None, Outcome::Unknown),
        ])
        .unwrap();
    }

    #[test]
    fn recorder_times_are_monotonic_and_ops_kept_in_order() {
        let recorder = Recorder::new();
        let t0 = recorder.now();
        let t1 = recorder.now();
        assert!(t1 >= t0);
        recorder.record(write(1, 5, t0, Some(t1), Outcome::Ok));
        recorder.record(read(2, 5, t1, t1));
        let ops = recorder.ops();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].written(), Some(Value(5)));
    }
}
