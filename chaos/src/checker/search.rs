//! The Wing & Gong search with Lowe's memoization for one key's register history: it places ops one
//! at a time, backtracks on a stuck completion, and explores each (linearized set, value) only once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::prepare::{PrepOp, Register, Step};
use crate::history::Value;

/// How much search one key may use before the checker gives up on it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    pub max_steps: u64,
    pub max_time: Option<Duration>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SearchResult {
    Linearizable,
    /// No linearization. The deepest partial linearization found is `prefix` (indexes into the ops,
    /// in order), after which op `stuck` could not be placed.
    Stuck {
        stuck: usize,
        prefix: Vec<usize>,
    },
    GaveUp {
        steps: u64,
        elapsed: Duration,
        deepest: usize,
    },
}

const NIL: usize = usize::MAX;

/// The call and return entries of every op in time order, as a doubly linked list: entry `2i` is op
/// i's call, `2i + 1` its return. Placing an op unlinks both; backtracking relinks them (LIFO).
struct Entries {
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
}

impl Entries {
    fn new(ops: &[PrepOp]) -> Self {
        let n = ops.len();
        let mut order: Vec<usize> = (0..2 * n).collect();
        // At equal times calls come first: ops whose intervals touch are concurrent.
        order.sort_by_key(|&e| {
            let op = &ops[e / 2];
            if e.is_multiple_of(2) {
                (op.invoke, 0, e)
            } else {
                (op.complete, 1, e)
            }
        });
        let head = 2 * n;
        let mut next = vec![NIL; 2 * n + 1];
        let mut prev = vec![NIL; 2 * n + 1];
        let mut last = head;
        for e in order {
            next[last] = e;
            prev[e] = last;
            last = e;
        }
        Self { next, prev, head }
    }

    fn first(&self) -> usize {
        self.next[self.head]
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    /// The blind writes that may be placed now: calls before the first unplaced completion.
    fn callable_blind(&self, ops: &[PrepOp]) -> Vec<usize> {
        let mut blind = Vec::new();
        let mut e = self.first();
        while e != NIL && e.is_multiple_of(2) {
            if ops[e / 2].step == Step::Blind {
                blind.push(e / 2);
            }
            e = self.next[e];
        }
        blind
    }

    fn lift(&mut self, op: usize) {
        self.unlink(2 * op);
        self.unlink(2 * op + 1);
    }

    fn unlift(&mut self, op: usize) {
        self.relink(2 * op + 1);
        self.relink(2 * op);
    }
}

/// The set of placed ops as a bitset, with a canonical compact form for the memo: every op below the
/// first unplaced one is placed, so only the words from there to the last placed op are kept.
struct Placed {
    words: Vec<u64>,
}

impl Placed {
    fn new(n: usize) -> Self {
        Self {
            words: vec![0; n.div_ceil(64)],
        }
    }

    fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
    }

    fn memo_key(&self, state: Register) -> (usize, Box<[u64]>, Register) {
        let full = self.words.iter().take_while(|&&w| w == u64::MAX).count();
        let end = self
            .words
            .iter()
            .rposition(|&w| w != 0)
            .map_or(0, |last| last + 1)
            .max(full);
        let first_unplaced = full * 64
            + self
                .words
                .get(full)
                .map_or(0, |w| w.trailing_ones() as usize);
        (first_unplaced, self.words[full..end].into(), state)
    }
}

/// A placement on the search stack: `op`, the blind writes placed just before it (`consumed`), and
/// the register before them. A `forced` op is a blind write placed because its completion was reached.
struct Frame {
    op: usize,
    consumed: Vec<usize>,
    before: Register,
    forced: bool,
}

/// Searches for a linearization of `ops` (sorted by invocation) from the zeroed register.
///
/// Blind writes are never placed by the scan: no read accepts their value, so in any linearization
/// one is directly followed by a write or is last. They are placed just before the next write while
/// they may be (their predecessors placed), or alone when the scan reaches their completion.
pub(crate) fn search(ops: &[PrepOp], budget: Budget) -> SearchResult {
    let started = Instant::now();
    let mut search = Search::new(ops);
    let mut steps = 0u64;
    let mut e = search.entries.first();
    while search.entries.first() != NIL {
        steps += 1;
        let out_of_time =
            || steps.is_multiple_of(1024) && budget.max_time.is_some_and(|t| started.elapsed() > t);
        if steps > budget.max_steps || out_of_time() {
            let (elapsed, deepest) = (started.elapsed(), search.deepest);
            return SearchResult::GaveUp {
                steps,
                elapsed,
                deepest,
            };
        }
        let (op, call) = (e / 2, e.is_multiple_of(2));
        let placing = match (call, ops[op].step) {
            (true, Step::Blind) | (false, Step::Write(_) | Step::Read(_)) => None,
            (true, step) => step.apply(search.state).map(|after| (after, false)),
            (false, Step::Blind) => Some((Register::Unread, true)),
        };
        if let Some((after, forced)) = placing
            && search.place(op, after, forced)
        {
            e = search.entries.first();
        } else if call {
            // Every unplaced op's return follows its call, so a return is met before the list ends.
            e = search.entries.next[e];
        } else {
            // The completion of an op not placed: this branch is dead.
            search.note_stuck(op);
            match search.backtrack() {
                Some(next) => e = next,
                None => return search.stuck(op),
            }
        }
    }
    SearchResult::Linearizable
}

/// The search's state: the entries not yet placed, the placed set and register, the placements
/// to undo, the configurations already explored, and the deepest dead end for the explanation.
struct Search<'a> {
    ops: &'a [PrepOp],
    entries: Entries,
    placed: Placed,
    seen: HashSet<(usize, Box<[u64]>, Register)>,
    stack: Vec<Frame>,
    state: Register,
    depth: usize,
    deepest: usize,
    deepest_stuck: Option<(usize, usize, Vec<usize>)>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [PrepOp]) -> Self {
        Self {
            ops,
            entries: Entries::new(ops),
            placed: Placed::new(ops.len()),
            seen: HashSet::new(),
            stack: Vec::new(),
            state: Register::Holds(Value::INITIAL),
            depth: 0,
            deepest: 0,
            deepest_stuck: None,
        }
    }

    /// Places `op` (after the blind writes a write takes along), leaving the register `after`, unless
    /// that configuration was explored before. Returns whether it placed.
    fn place(&mut self, op: usize, after: Register, forced: bool) -> bool {
        let consumed = match self.ops[op].step {
            Step::Write(_) => self.entries.callable_blind(self.ops),
            Step::Blind | Step::Read(_) => Vec::new(),
        };
        consumed
            .iter()
            .chain([&op])
            .for_each(|&o| self.placed.set(o));
        if !self.seen.insert(self.placed.memo_key(after)) {
            consumed
                .iter()
                .chain([&op])
                .for_each(|&o| self.placed.clear(o));
            return false;
        }
        consumed
            .iter()
            .chain([&op])
            .for_each(|&o| self.entries.lift(o));
        self.depth += consumed.len() + 1;
        self.deepest = self.deepest.max(self.depth);
        let before = self.state;
        self.stack.push(Frame {
            op,
            consumed,
            before,
            forced,
        });
        self.state = after;
        true
    }

    /// Undoes placements up to the last one that had an alternative (skipping that op), and returns
    /// the entry to resume the scan at; `None` when nothing is left to undo.
    fn backtrack(&mut self) -> Option<usize> {
        loop {
            let frame = self.stack.pop()?;
            self.entries.unlift(frame.op);
            for &o in frame.consumed.iter().rev() {
                self.entries.unlift(o);
            }
            frame
                .consumed
                .iter()
                .chain([&frame.op])
                .for_each(|&o| self.placed.clear(o));
            self.depth -= frame.consumed.len() + 1;
            self.state = frame.before;
            // A forced placement had no alternative: keep undoing.
            if !frame.forced {
                return Some(self.entries.next[2 * frame.op]);
            }
        }
    }

    /// Remembers the deepest dead end: the op that could not be placed and the prefix before it.
    fn note_stuck(&mut self, op: usize) {
        if self
            .deepest_stuck
            .as_ref()
            .is_none_or(|&(_, d, _)| self.depth > d)
        {
            let prefix = self
                .stack
                .iter()
                .flat_map(|f| f.consumed.iter().copied().chain([f.op]));
            self.deepest_stuck = Some((op, self.depth, prefix.collect()));
        }
    }

    fn stuck(self, op: usize) -> SearchResult {
        let (stuck, _, prefix) = self.deepest_stuck.unwrap_or((op, 0, Vec::new()));
        SearchResult::Stuck { stuck, prefix }
    }
}

#[cfg(test)]
mod tests {
    use super::super::prepare::Step;
    use super::*;

    const UNLIMITED: Budget = Budget {
        max_steps: u64::MAX,
        max_time: None,
    };

    fn op(invoke: u64, complete: u64, step: Step) -> PrepOp {
        PrepOp {
            index: 0,
            invoke,
            complete,
            step,
        }
    }

    #[test]
    fn memo_key_is_canonical_for_the_same_set() {
        let mut a = Placed::new(200);
        let mut b = Placed::new(200);
        for i in (0..70).chain([130]) {
            a.set(i);
        }
        for i in [130].into_iter().chain((0..70).rev()) {
            b.set(i);
        }
        b.set(150);
        b.clear(150);
        assert_eq!(
            a.memo_key(Register::Holds(Value(1))),
            b.memo_key(Register::Holds(Value(1)))
        );
        assert_eq!(a.memo_key(Register::Holds(Value(1))).0, 70);
        assert_ne!(
            a.memo_key(Register::Holds(Value(1))),
            b.memo_key(Register::Holds(Value(2)))
        );
        a.set(131);
        assert_ne!(
            a.memo_key(Register::Holds(Value(1))),
            b.memo_key(Register::Holds(Value(1)))
        );
        let mut all = Placed::new(128);
        (0..128).for_each(|i| all.set(i));
        assert_eq!(all.memo_key(Register::Holds(Value(0))).0, 128);
    }

    #[test]
    fn backtracking_finds_the_one_order_that_works() {
        // Three concurrent writes; later sequential reads see 3, so write 3 must be placed last.
        let ops = [
            op(0, 10, Step::Write(Value(1))),
            op(0, 10, Step::Write(Value(2))),
            op(0, 10, Step::Write(Value(3))),
            op(0, 10, Step::Read(Value(2))),
            op(20, 30, Step::Read(Value(3))),
        ];
        assert_eq!(search(&ops, UNLIMITED), SearchResult::Linearizable);
    }

    #[test]
    fn a_stuck_search_names_the_op_and_the_register() {
        // Write 1 completes, then a read returns the zeroed block: stale.
        let ops = [
            op(0, 10, Step::Write(Value(1))),
            op(20, 30, Step::Read(Value(0))),
        ];
        assert_eq!(
            search(&ops, UNLIMITED),
            SearchResult::Stuck {
                stuck: 1,
                prefix: vec![0]
            }
        );
    }

    #[test]
    fn blind_writes_ride_along_with_the_next_write_instead_of_multiplying_the_search() {
        // Forty concurrent writes nobody read around one that was read: without placing blind writes
        // only just before a write, the memo would hold up to 2^40 subsets of them.
        let blind = (0..40).map(|_| op(0, 100, Step::Blind));
        let budget = Budget {
            max_steps: 10_000,
            max_time: None,
        };
        let mut ops: Vec<_> = blind
            .clone()
            .chain([op(0, 100, Step::Write(Value(1)))])
            .collect();
        ops.push(op(200, 300, Step::Read(Value(1))));
        assert_eq!(search(&ops, budget), SearchResult::Linearizable);
        *ops.last_mut().unwrap() = op(200, 300, Step::Read(Value(0)));
        assert!(matches!(
            search(&ops, budget),
            SearchResult::Stuck { stuck: 41, .. }
        ));
        // A blind write may also be last, or placed alone when its completion is reached.
        let ops = [
            op(0, 10, Step::Read(Value(0))),
            op(5, 20, Step::Blind),
            op(30, 40, Step::Write(Value(2))),
            op(50, 60, Step::Read(Value(2))),
        ];
        assert_eq!(search(&ops, budget), SearchResult::Linearizable);
        let ops = [
            op(0, 10, Step::Write(Value(2))),
            op(20, 30, Step::Blind),
            op(40, 50, Step::Read(Value(2))),
        ];
        assert!(matches!(
            search(&ops, budget),
            SearchResult::Stuck { stuck: 2, .. }
        ));
    }

    #[test]
    fn a_time_budget_is_checked_every_1024_steps() {
        let ops: Vec<_> = (1..=12)
            .map(|v| op(0, 100, Step::Write(Value(v))))
            .chain([op(200, 300, Step::Read(Value(0)))])
            .collect();
        let budget = Budget {
            max_steps: u64::MAX,
            max_time: Some(Duration::ZERO),
        };
        assert!(matches!(
            search(&ops, budget),
            SearchResult::GaveUp { steps: 1024, .. }
        ));
    }

    #[test]
    fn a_tiny_budget_gives_up_instead_of_answering() {
        let ops: Vec<_> = (1..=12)
            .map(|v| op(0, 100, Step::Write(Value(v))))
            .chain([op(200, 300, Step::Read(Value(0)))])
            .collect();
        match search(
            &ops,
            Budget {
                max_steps: 50,
                max_time: None,
            },
        ) {
            SearchResult::GaveUp { steps, deepest, .. } => {
                assert_eq!(steps, 51);
                assert!(deepest > 0);
            }
            other => panic!("expected to give up, got {other:?}"),
        }
        assert!(matches!(
            search(&ops, UNLIMITED),
            SearchResult::Stuck { stuck: 12, .. }
        ));
    }
}
