//! When a healed node has caught up: in every group it is a member of, an answer asked after
//! the heal sets the bar and one asked no earlier shows it there; the proof goes in the record.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::views::View;

/// Why a node counts as caught up in one group: the bar is the leader's last log index (at
/// least the group's commit index) in the first answer asked at or after the heal; the answer
/// asked at `asked` (no earlier than the bar's) shows the node leading, or answering its own
/// status with the leader's matched index for it at the bar or beyond. Times are the
/// recorder's nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// A volume's name, or `views::META`.
    pub group: String,
    pub bar: u64,
    pub bar_asked: u64,
    pub asked: u64,
    pub leader: u64,
    pub matched: u64,
}

impl Proof {
    /// Whether it proves a catch-up after a heal done at `healed`.
    pub fn holds(&self, node: u64, healed: u64) -> bool {
        self.bar_asked >= healed
            && self.asked >= self.bar_asked
            && self.leader != 0
            && (self.leader == node || self.matched >= self.bar)
    }
}

/// One node's catch-up after a fault left it broken: from when (`from`: its fault's heal or
/// a clock fault's restart began), after which heal (`healed`: the heal or restart was done;
/// a later heal of the same node before it caught up moves it), until when (`caught_up`:
/// when the injector took it as caught up; none if the run ended first), with a proof for
/// each group it is a member of. Times are the recorder's nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUp {
    pub node: u64,
    pub from: u64,
    pub healed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caught_up: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proofs: Vec<Proof>,
}

/// A node catching up: the `CatchUp` it will record, the faults it will be recorded for
/// (their ids in the injector), and in each group the bar set so far and the proof found.
#[derive(Debug)]
pub struct Tracker {
    pub record: CatchUp,
    pub healed_at: Instant,
    pub faults: Vec<u64>,
    bars: BTreeMap<String, (u64, u64)>,
    proofs: BTreeMap<String, Proof>,
}

impl Tracker {
    /// `node`, broken since `from`, healed at `healed_at` (`healed` in the recorder's ns).
    pub fn new(node: u64, from: u64, healed: u64, healed_at: Instant) -> Tracker {
        Tracker {
            record: CatchUp {
                node,
                from,
                healed,
                caught_up: None,
                proofs: Vec::new(),
            },
            healed_at,
            faults: Vec::new(),
            bars: BTreeMap::new(),
            proofs: BTreeMap::new(),
        }
    }

    /// Healed again before it caught up: answers asked before this heal no longer count.
    pub fn healed_again(&mut self, healed: u64, healed_at: Instant) {
        self.record.healed = healed;
        self.healed_at = healed_at;
        self.bars.clear();
        self.proofs.clear();
    }

    /// Reads the latest answers (`views`; `ns` turns their times into the recorder's) about
    /// `groups`, the ones the node is a member of; true once every one has a proof.
    pub fn look(
        &mut self,
        groups: &[&str],
        views: &BTreeMap<String, View>,
        ns: impl Fn(Instant) -> u64,
    ) -> bool {
        let node = self.record.node;
        for &group in groups {
            if self.proofs.contains_key(group) {
                continue;
            }
            let Some(v) = views.get(group) else { continue };
            if v.asked < self.healed_at || v.leader == 0 {
                continue;
            }
            let asked = ns(v.asked);
            let (bar, bar_asked) = *self
                .bars
                .entry(group.to_string())
                .or_insert((v.last, asked));
            let Some(&matched) = v.answered.get(&node) else {
                continue;
            };
            let proof = Proof {
                group: group.to_string(),
                bar,
                bar_asked,
                asked,
                leader: v.leader,
                matched,
            };
            if proof.holds(node, self.record.healed) {
                self.proofs.insert(group.to_string(), proof);
            }
        }
        groups.iter().all(|g| self.proofs.contains_key(*g))
    }

    /// The record, caught up at `at`.
    pub fn done(mut self, at: u64) -> (CatchUp, Vec<u64>) {
        self.record.caught_up = Some(at);
        self.record.proofs = self.proofs.into_values().collect();
        (self.record, self.faults)
    }

    /// The record of a node that had not caught up when the run ended.
    pub fn unfinished(self) -> (CatchUp, Vec<u64>) {
        (self.record, self.faults)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn view(asked: Instant, leader: u64, last: u64, answered: &[(u64, u64)]) -> View {
        View {
            asked,
            leader,
            last,
            answered: answered.iter().copied().collect(),
        }
    }

    #[test]
    fn a_node_catches_up_only_from_answers_asked_after_its_heal_in_every_group() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let ns = |t: Instant| t.duration_since(t0).as_nanos() as u64;
        let healed = at(100);
        let mut t = Tracker::new(3, ns(at(50)), ns(healed), healed);
        let groups = ["a", "meta"];
        // Asked before the heal: node 3 at the leader's index, yet it says nothing.
        let stale: BTreeMap<String, View> = [
            ("a".to_string(), view(at(90), 1, 500, &[(1, 500), (3, 500)])),
            ("meta".to_string(), view(at(90), 2, 70, &[(2, 70), (3, 70)])),
        ]
        .into();
        assert!(!t.look(&groups, &stale, ns));
        // Asked after: the bars are 600 and 70; node 3 behind in `a`, caught up in meta.
        let first: BTreeMap<String, View> = [
            (
                "a".to_string(),
                view(at(150), 1, 600, &[(1, 600), (3, 520)]),
            ),
            (
                "meta".to_string(),
                view(at(150), 2, 70, &[(2, 70), (3, 70)]),
            ),
        ]
        .into();
        assert!(!t.look(&groups, &first, ns), "behind in a");
        // Later: past the bar though behind the head; no leader named says nothing.
        let leaderless: BTreeMap<String, View> =
            [("a".to_string(), view(at(180), 0, 0, &[(3, 0)]))].into();
        assert!(!t.look(&groups, &leaderless, ns));
        let later: BTreeMap<String, View> = [(
            "a".to_string(),
            view(at(200), 1, 650, &[(1, 650), (3, 610)]),
        )]
        .into();
        assert!(t.look(&groups, &later, ns));
        let (record, _) = t.done(ns(at(210)));
        assert_eq!(record.caught_up, Some(ns(at(210))));
        assert_eq!(record.proofs.len(), 2);
        let a = record.proofs.iter().find(|p| p.group == "a").unwrap();
        assert_eq!((a.bar, a.matched, a.asked), (600, 610, ns(at(200))));
        assert!(record.proofs.iter().all(|p| p.holds(3, record.healed)));
    }

    #[test]
    fn a_second_heal_discards_what_was_seen_before_it_and_a_proof_is_checked_whole() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let ns = |t: Instant| t.duration_since(t0).as_nanos() as u64;
        let mut t = Tracker::new(3, 0, ns(at(100)), at(100));
        let groups = ["meta"];
        let first: BTreeMap<String, View> =
            [("meta".to_string(), view(at(150), 2, 70, &[(2, 70)]))].into();
        assert!(!t.look(&groups, &first, ns), "node 3 did not answer");
        t.healed_again(ns(at(300)), at(300));
        let before: BTreeMap<String, View> = [(
            "meta".to_string(),
            view(at(250), 2, 70, &[(2, 70), (3, 70)]),
        )]
        .into();
        assert!(
            !t.look(&groups, &before, ns),
            "asked before the second heal"
        );
        let proof = |bar_asked: u64, asked: u64, leader: u64, matched: u64| Proof {
            group: "meta".into(),
            bar: 70,
            bar_asked,
            asked,
            leader,
            matched,
        };
        assert!(proof(300, 300, 2, 70).holds(3, 300));
        assert!(proof(300, 310, 3, 0).holds(3, 300), "it leads");
        assert!(
            !proof(290, 310, 2, 70).holds(3, 300),
            "bar from before the heal"
        );
        assert!(
            !proof(300, 290, 2, 70).holds(3, 300),
            "answer older than the bar"
        );
        assert!(!proof(300, 310, 2, 69).holds(3, 300), "below the bar");
        assert!(!proof(300, 310, 0, 70).holds(3, 300), "no leader named");
    }
}
