//! The steps drawn from the schedule and not started yet (`--overlap`): which of them to try
//! now, so that a step that does not fit the budget yet holds up those behind it only briefly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::schedule::{Schedule, Step};

/// How long the oldest waiting step lets the later ones start before it: after that only it
/// is tried, so the faults before it drain and a step that needs the cluster to itself (a
/// split or a bridge of nine nodes) gets it, as when steps were tried one by one.
pub const PATIENCE: Duration = Duration::from_secs(1);

struct Pending {
    seq: u64,
    step: Step,
    /// When it was first tried (none yet: its gap has not passed).
    since: Option<Instant>,
}

/// Up to `depth` steps in the order the seed drew them; a step may start once its gap has
/// passed since the last start. The draws are the schedule's, whatever the order they start in.
pub struct Lookahead {
    schedule: Schedule,
    steps: VecDeque<Pending>,
    depth: usize,
    drawn: u64,
    last_start: Instant,
}

impl Lookahead {
    pub fn new(schedule: Schedule, depth: usize, started: Instant) -> Lookahead {
        let mut l = Lookahead {
            schedule,
            steps: VecDeque::new(),
            depth: depth.max(1),
            drawn: 0,
            last_start: started,
        };
        l.refill();
        l
    }

    fn refill(&mut self) {
        while self.steps.len() < self.depth {
            let Some(step) = self.schedule.next() else {
                return;
            };
            self.steps.push_back(Pending {
                seq: self.drawn,
                step,
                since: None,
            });
            self.drawn += 1;
        }
    }

    /// The steps to try at `now`, oldest first, each with its number in the draw order:
    /// those whose gap since the last start has passed, or only the oldest once it has
    /// waited `PATIENCE`.
    pub fn candidates(&self, now: Instant) -> Vec<(u64, Step)> {
        let ready = |p: &&Pending| now >= self.last_start + p.step.gap;
        let head_waited = self
            .steps
            .front()
            .and_then(|p| p.since)
            .is_some_and(|t| now.saturating_duration_since(t) >= PATIENCE);
        let take = if head_waited { 1 } else { self.steps.len() };
        self.steps
            .iter()
            .take(take)
            .filter(ready)
            .map(|p| (p.seq, p.step.clone()))
            .collect()
    }

    /// Whether `seq` is the oldest step waiting.
    pub fn is_head(&self, seq: u64) -> bool {
        self.steps.front().is_some_and(|p| p.seq == seq)
    }

    /// Notes that step `seq` is being tried at `now`; returns when it was first tried.
    pub fn tried(&mut self, seq: u64, now: Instant) -> Instant {
        match self.steps.iter_mut().find(|p| p.seq == seq) {
            Some(p) => *p.since.get_or_insert(now),
            None => now,
        }
    }

    /// Removes step `seq` (started, skipped or dropped) and draws the next.
    pub fn remove(&mut self, seq: u64) {
        self.steps.retain(|p| p.seq != seq);
        self.refill();
    }

    /// A step started at `now`: the next gaps count from here.
    pub fn started(&mut self, now: Instant) {
        self.last_start = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::FaultKind;
    use crate::schedule::{Pacing, Targets};

    fn schedule(seed: u64) -> Schedule {
        let pacing = Pacing {
            gap_ms: 10..100,
            hold_ms: 100..500,
        };
        Schedule::new(seed, &FaultKind::ALL, 9, &[], Targets::Any, pacing)
    }

    #[test]
    fn steps_come_in_draw_order_and_a_waiting_one_does_not_block_the_rest() {
        let t0 = Instant::now();
        let drawn: Vec<Step> = schedule(5).take(6).collect();
        let mut l = Lookahead::new(schedule(5), 4, t0);
        let late = t0 + Duration::from_millis(100);
        let seqs = |c: Vec<(u64, Step)>| c.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        let first = l.candidates(late);
        assert_eq!(seqs(first.clone()), [0, 1, 2, 3], "every gap passed");
        assert_eq!(first[1].1, drawn[1], "the schedule's own draws");
        // Step 0 does not fit; step 1 starts; the next drawn (4) joins behind.
        l.tried(0, late);
        l.remove(1);
        l.started(late);
        let next = late + Duration::from_millis(100);
        assert_eq!(seqs(l.candidates(next)), [0, 2, 3, 4]);
        assert!(l.is_head(0) && !l.is_head(2));
        // Before any gap has passed since a start, nothing is ready.
        assert!(l.candidates(late).is_empty());
    }

    #[test]
    fn the_oldest_step_alone_is_tried_once_it_has_waited_its_patience() {
        let t0 = Instant::now();
        let mut l = Lookahead::new(schedule(9), 4, t0);
        let late = t0 + Duration::from_millis(100);
        assert_eq!(l.tried(0, late), late);
        assert_eq!(l.tried(0, late + PATIENCE), late, "first tried stays");
        let before = l.candidates(late + PATIENCE - Duration::from_millis(1));
        assert_eq!(before.len(), 4);
        let after = l.candidates(late + PATIENCE);
        assert_eq!(after.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [0]);
        l.remove(0);
        assert_eq!(
            l.candidates(late + PATIENCE).len(),
            4,
            "the next head is new"
        );
    }
}
