//! The Wing & Gong search with Lowe's memoization for one key's register history: it places ops one
//! at a time, backtracks on a stuck completion, and explores each (linearized set, value) only once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::prepare::PrepOp;
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
    /// in order), after which the register held `register` and op `stuck` could not be placed.
    Stuck {
        stuck: usize,
        register: Value,
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

    fn memo_key(&self, state: Value) -> (usize, Box<[u64]>, Value) {
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

/// Searches for a linearization of `ops` (sorted by invocation) from the zeroed register.
pub(crate) fn search(ops: &[PrepOp], budget: Budget) -> SearchResult {
    let started = Instant::now();
    let mut entries = Entries::new(ops);
    let mut placed = Placed::new(ops.len());
    let mut seen: HashSet<(usize, Box<[u64]>, Value)> = HashSet::new();
    // Each placed op with the register value before it, so backtracking restores it.
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut state = Value::INITIAL;
    let mut steps = 0u64;
    let mut deepest_stuck: Option<(usize, Value, Vec<usize>)> = None;
    let mut deepest = 0;
    let mut e = entries.first();
    while entries.first() != NIL {
        steps += 1;
        let out_of_time =
            || steps.is_multiple_of(1024) && budget.max_time.is_some_and(|t| started.elapsed() > t);
        if steps > budget.max_steps || out_of_time() {
            return SearchResult::GaveUp {
                steps,
                elapsed: started.elapsed(),
                deepest,
            };
        }
        let op = e / 2;
        if e.is_multiple_of(2) {
            if let Some(after) = ops[op].step.apply(state) {
                placed.set(op);
                if seen.insert(placed.memo_key(after)) {
                    stack.push((op, state));
                    deepest = deepest.max(stack.len());
                    state = after;
                    entries.lift(op);
                    e = entries.first();
                    continue;
                }
                placed.clear(op);
            }
            // Every unplaced op's return follows its call, so a return is met before the list ends.
            e = entries.next[e];
        } else {
            if deepest_stuck
                .as_ref()
                .is_none_or(|(_, _, prefix)| stack.len() > prefix.len())
            {
                deepest_stuck = Some((op, state, stack.iter().map(|&(o, _)| o).collect()));
            }
            let Some((last, before)) = stack.pop() else {
                let (stuck, register, prefix) = deepest_stuck.unwrap_or((op, state, Vec::new()));
                return SearchResult::Stuck {
                    stuck,
                    register,
                    prefix,
                };
            };
            placed.clear(last);
            state = before;
            entries.unlift(last);
            e = entries.next[2 * last];
        }
    }
    SearchResult::Linearizable
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
        assert_eq!(a.memo_key(Value(1)), b.memo_key(Value(1)));
        assert_eq!(a.memo_key(Value(1)).0, 70);
        assert_ne!(a.memo_key(Value(1)), b.memo_key(Value(2)));
        a.set(131);
        assert_ne!(a.memo_key(Value(1)), b.memo_key(Value(1)));
        let mut all = Placed::new(128);
        (0..128).for_each(|i| all.set(i));
        assert_eq!(all.memo_key(Value(0)).0, 128);
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
                register: Value(1),
                prefix: vec![0]
            }
        );
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
