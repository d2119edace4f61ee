//! What the checker concludes: per key linearizable, a violation with the operations that explain it,
//! or a search that gave up on its budget; and the report that gathers them.

use serde::Serialize;

use crate::history::{Key, Op, OpKind, Outcome, Value};

/// The checker's conclusion for every key of a history, sorted by key.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub keys: Vec<KeyReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyReport {
    pub key: Key,
    /// Operations recorded on this key (the search places fewer: failed ops, unanswered reads and
    /// unobserved unknown writes are dropped; see `total` in a violation or give-up).
    pub ops: usize,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Linearizable,
    Violation(Violation),
    GaveUp(GaveUp),
}

/// Why a key's history has no linearization. `ops` starts with the operation that could not be
/// placed, followed by the writes that explain it (see `Reason`).
#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub reason: Reason,
    pub ops: Vec<Op>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// A read returned a value no write of this key ever stored. `ops`: the read.
    NeverWritten { value: Value },
    /// A read returned the value of a write that definitely failed. `ops`: the read, the write.
    FailedWriteObserved { value: Value },
    /// A read completed before the write of the value it returned was invoked. `ops`: the read, the write.
    ReadBeforeWrite { value: Value },
    /// No order of the operations explains them all. The longest linearizable prefix found placed
    /// `linearized` of `total` ops and left the register holding `register`; `ops`: the op that then
    /// could not be placed, the write that stored `register` (if any), the write of the value read (if any).
    NoLinearization {
        register: Value,
        linearized: usize,
        total: usize,
    },
}

/// The search exceeded its budget on this key: no verdict either way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GaveUp {
    pub steps: u64,
    pub elapsed_ms: u64,
    /// The most operations one partial linearization placed.
    pub deepest: usize,
    pub total: usize,
}

impl Report {
    pub fn violations(&self) -> impl Iterator<Item = (&Key, &Violation)> {
        self.keys.iter().filter_map(|k| match &k.verdict {
            Verdict::Violation(v) => Some((&k.key, v)),
            _ => None,
        })
    }

    pub fn gave_up(&self) -> impl Iterator<Item = (&Key, &GaveUp)> {
        self.keys.iter().filter_map(|k| match &k.verdict {
            Verdict::GaveUp(g) => Some((&k.key, g)),
            _ => None,
        })
    }

    /// True when every key was proven linearizable (none violated, none gave up).
    pub fn is_linearizable(&self) -> bool {
        self.keys
            .iter()
            .all(|k| matches!(k.verdict, Verdict::Linearizable))
    }

    pub fn verdict(&self, key: &Key) -> Option<&Verdict> {
        self.keys.iter().find(|k| &k.key == key).map(|k| &k.verdict)
    }
}

/// One op as `client 7 read 1 [40, 50] ok`; an unknown op ends at ∞.
fn describe(op: &Op) -> String {
    let what = match op.kind {
        OpKind::Write { value } => format!("write {value}"),
        OpKind::Read { value: Some(value) } => format!("read {value}"),
        OpKind::Read { value: None } => "read".into(),
    };
    let end = match (op.outcome, op.complete) {
        (Outcome::Ok | Outcome::Failed, Some(t)) => t.to_string(),
        _ => "∞".into(),
    };
    let outcome = match op.outcome {
        Outcome::Ok => "ok",
        Outcome::Failed => "failed",
        Outcome::Unknown => "unknown",
    };
    format!(
        "client {} {what} [{}, {end}] {outcome}",
        op.client, op.invoke
    )
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            Reason::NeverWritten { value } => {
                write!(f, "a read returned {value}, which no write stored")?
            }
            Reason::FailedWriteObserved { value } => {
                write!(f, "a read returned {value}, written by a write that failed")?
            }
            Reason::ReadBeforeWrite { value } => write!(
                f,
                "a read returned {value} but completed before the write of {value} was invoked"
            )?,
            Reason::NoLinearization {
                register,
                linearized,
                total,
            } => write!(
                f,
                "no linearization: the longest consistent prefix placed {linearized} of {total} ops, leaving {register}, \
                 and the next op cannot follow it (a stale read, or an acknowledged write lost)"
            )?,
        }
        for op in &self.ops {
            write!(f, "; {}", describe(op))?;
        }
        Ok(())
    }
}
