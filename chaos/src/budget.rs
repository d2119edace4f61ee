//! The minority budget of overlapping faults: which nodes a fault breaks, and whether it may
//! start beside what is broken already (no group loses a majority to faults run together).

use std::collections::{BTreeMap, BTreeSet};

use crate::clock;
use crate::nemesis::FaultKind;
use crate::partition::{self, Shape};

/// Kinds that run alone: `powerloss-all` breaks every node, `node-loss` moves replicas.
///
/// A clock fault is not one: its node counts as broken while it restarts and catches up (at
/// the fault's start and at its heal), and in between as up though skewed, so that partitions,
/// kills and pauses of other nodes, or of that one, run beside a skewed clock (decision 056).
pub fn exclusive(kind: FaultKind) -> bool {
    matches!(kind, FaultKind::PowerlossAll | FaultKind::NodeLoss)
}

/// Whether a clock fault at `rate` on `nodes` may start beside the clocks already skewed
/// (`skewed`: node → rate): no node is skewed twice, and every two clocks, real time included,
/// stay within `clock::MAX_APART` of each other, the most lease reads allow (decision 054):
/// two fast clocks may run together, a fast and a slow one may not.
pub fn clock_fits(rate: f64, nodes: &[u64], skewed: &BTreeMap<u64, f64>) -> bool {
    if nodes.iter().any(|id| skewed.contains_key(id)) {
        return false;
    }
    let rates = skewed.values().copied().chain([rate, 1.0]);
    let (lo, hi) = rates.fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(r), hi.max(r)));
    hi / lo <= clock::MAX_APART * (1.0 + 1e-9)
}

/// The nodes a fault of `kind` on `nodes` breaks: its targets, or for a partition the minority
/// it cuts off (isolate, split) or every node on either end of a cut pair (bridge, one-way);
/// `fellows` are the target group's other members (`nemesis::fellows`).
pub fn breaks(kind: FaultKind, nodes: &[u64], all: &[u64], fellows: &[u64]) -> BTreeSet<u64> {
    match kind.shape() {
        Some(shape) => {
            let cut = partition::cut(shape, nodes[0], all, fellows);
            match shape {
                Shape::Isolate | Shape::Split if !cut.minority.is_empty() => {
                    cut.minority.into_iter().collect()
                }
                _ => cut.pairs.iter().flat_map(|&(a, b)| [a, b]).collect(),
            }
        }
        None if kind == FaultKind::PowerlossAll => all.iter().copied().collect(),
        None => nodes.iter().copied().collect(),
    }
}

/// Whether `new` may break nodes now, with `busy` broken or catching up and `lost` gone: it
/// shares no node with `busy`, and neither the meta group (every one of `nodes` a voter) nor
/// any volume group (`members`) would have more than a minority of its replicas among them.
pub fn fits(
    new: &BTreeSet<u64>,
    busy: &BTreeSet<u64>,
    lost: &BTreeSet<u64>,
    members: &BTreeMap<String, Vec<u64>>,
    nodes: usize,
) -> bool {
    if !new.is_disjoint(busy) {
        return false;
    }
    let down: BTreeSet<u64> = new.iter().chain(busy).chain(lost).copied().collect();
    let minority = |replicas: usize| replicas.saturating_sub(1) / 2;
    down.len() <= minority(nodes)
        && members
            .values()
            .all(|m| m.iter().filter(|id| down.contains(id)).count() <= minority(m.len()))
}

/// What is broken when a step is tried: nodes that active partitions cut off (`cut`), nodes
/// that active faults of other kinds hold (`held`: killed, paused, restarting, a faulty disk)
/// and nodes catching up after a heal (`recovering`).
#[derive(Clone, Debug, Default)]
pub struct Broken {
    pub cut: BTreeSet<u64>,
    pub held: BTreeSet<u64>,
    pub recovering: BTreeSet<u64>,
}

impl Broken {
    /// Every node broken one way or another.
    pub fn all(&self) -> BTreeSet<u64> {
        let mut all = self.cut.clone();
        all.extend(&self.held);
        all.extend(&self.recovering);
        all
    }
}

/// Whether a fault that breaks `new` (`partition`: it is a partition) may start beside
/// `broken`, with `lost` gone, `members` each volume's replicas and `nodes` meta voters:
/// - alone (nothing broken): always, as in a one-at-a-time run;
/// - beside: it shares no node with what is broken and the union keeps every group a
///   majority (`fits`);
/// - around: everything broken lies within what it breaks, so the cluster is broken exactly as
///   by this fault alone (a split whose minority holds the node a kill left catching up);
/// - within: not a partition, on nodes that active partitions already cut off, with the
///   faults of other kinds and the nodes catching up keeping every group a majority among
///   themselves (a kill of an isolated node).
///
/// A fault that is not a partition never shares a node with one held by another such fault or
/// catching up: one process and one disk fault per node at a time, and a node gets to catch up.
/// A partition cuts off at least one node that active partitions do not: a second isolation
/// of a node already isolated would change nothing.
pub fn admits(
    new: &BTreeSet<u64>,
    partition: bool,
    broken: &Broken,
    lost: &BTreeSet<u64>,
    members: &BTreeMap<String, Vec<u64>>,
    nodes: usize,
) -> bool {
    let busy = broken.all();
    if busy.is_empty() {
        return true;
    }
    let own: BTreeSet<u64> = broken.held.union(&broken.recovering).copied().collect();
    if !partition && !new.is_disjoint(&own) {
        return false;
    }
    if partition && new.is_subset(&broken.cut) {
        return false;
    }
    if fits(new, &busy, lost, members, nodes) || busy.is_subset(new) {
        return true;
    }
    !partition && new.is_subset(&broken.cut) && fits(new, &own, lost, members, nodes)
}

/// Whether a clock fault's heal, a restart of `nodes` at real time, may run now: no active
/// fault breaks one of them (`held`), and their restart keeps every group a majority beside
/// the nodes broken or catching up (`recovering`; a node already catching up counts once).
pub fn restart_fits(
    nodes: &[u64],
    held: &BTreeSet<u64>,
    recovering: &BTreeSet<u64>,
    lost: &BTreeSet<u64>,
    members: &BTreeMap<String, Vec<u64>>,
    all: &[u64],
) -> bool {
    if nodes.iter().any(|id| held.contains(id)) {
        return false;
    }
    let busy: BTreeSet<u64> = held
        .iter()
        .chain(recovering)
        .copied()
        .filter(|id| !nodes.contains(id))
        .collect();
    fits(
        &nodes.iter().copied().collect(),
        &busy,
        lost,
        members,
        all.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn the_budget_keeps_every_group_with_a_majority_up() {
        let members: BTreeMap<String, Vec<u64>> = [
            ("a".to_string(), vec![1, 2, 3]),
            ("b".to_string(), vec![3, 4, 5]),
        ]
        .into();
        let none = BTreeSet::new();
        // Five nodes: two may be down, one per group of three.
        assert!(fits(&set(&[1]), &set(&[4]), &none, &members, 5));
        assert!(
            !fits(&set(&[1]), &set(&[2]), &none, &members, 5),
            "a: 1 and 2"
        );
        assert!(
            !fits(&set(&[3]), &set(&[5]), &none, &members, 5),
            "b: 3 and 5"
        );
        assert!(
            !fits(&set(&[1]), &set(&[1]), &none, &members, 5),
            "one node, two faults"
        );
        let a_only: BTreeMap<String, Vec<u64>> = [("a".to_string(), vec![1, 2, 3])].into();
        assert!(
            !fits(&set(&[1]), &set(&[4]), &set(&[5]), &a_only, 5),
            "the meta group of five with node 5 lost may lose one more, not two"
        );
        assert!(fits(&set(&[1]), &none, &set(&[5]), &a_only, 5));
        // Three nodes: nothing beside a fault.
        assert!(!fits(&set(&[2]), &set(&[1]), &none, &BTreeMap::new(), 3));
        assert!(fits(&set(&[2]), &none, &none, &BTreeMap::new(), 3));
    }

    #[test]
    fn partitions_break_their_minority_or_both_ends_of_each_cut() {
        let all = [1, 2, 3, 4, 5];
        assert_eq!(
            breaks(FaultKind::PartitionIsolate, &[2], &all, &[]),
            set(&[2])
        );
        assert_eq!(
            breaks(FaultKind::PartitionSplit, &[4], &all, &[]),
            set(&[4, 5])
        );
        assert_eq!(
            breaks(FaultKind::PartitionOneWay, &[5], &all, &[]),
            set(&[5, 1])
        );
        assert_eq!(
            breaks(FaultKind::PartitionBridge, &[1], &all, &[]),
            set(&[2, 3, 4, 5])
        );
        assert_eq!(breaks(FaultKind::Kill, &[3], &all, &[]), set(&[3]));
        assert_eq!(breaks(FaultKind::PowerlossAll, &all, &all, &[]), set(&all));
        assert!(exclusive(FaultKind::NodeLoss) && !exclusive(FaultKind::Pause));
        assert!(!exclusive(FaultKind::Clock) && !exclusive(FaultKind::ClockSlow));
    }

    #[test]
    fn clocks_stay_within_twice_each_other_and_one_skew_per_node() {
        let none = BTreeMap::new();
        assert!(clock_fits(clock::FAST, &[1], &none));
        assert!(clock_fits(clock::SLOW, &[1], &none));
        assert!(!clock_fits(4.0, &[1], &none), "4x real time");
        let fast: BTreeMap<u64, f64> = [(2, clock::FAST)].into();
        assert!(clock_fits(clock::FAST, &[1], &fast), "two fast clocks");
        assert!(
            !clock_fits(clock::SLOW, &[1], &fast),
            "fast and slow: 4x apart"
        );
        assert!(
            !clock_fits(clock::FAST, &[2], &fast),
            "one node skewed twice"
        );
        let slow: BTreeMap<u64, f64> = [(3, clock::SLOW)].into();
        assert!(clock_fits(clock::SLOW, &[1], &slow));
        assert!(!clock_fits(clock::FAST, &[1], &slow));
    }

    #[test]
    fn a_clock_heal_waits_until_its_restart_fits() {
        let members: BTreeMap<String, Vec<u64>> = [("a".to_string(), vec![1, 2, 3])].into();
        let all = [1, 2, 3, 4, 5];
        // Node 1's restart with `held` broken by active faults and `catching_up` recovering.
        let node_1 = |held: &[u64], catching_up: &[u64]| {
            restart_fits(
                &[1],
                &set(held),
                &set(catching_up),
                &BTreeSet::new(),
                &members,
                &all,
            )
        };
        assert!(node_1(&[], &[]));
        assert!(
            !node_1(&[1], &[]),
            "isolated by a partition: waits for its heal"
        );
        assert!(!node_1(&[2], &[]), "node 2 of its group down: a majority");
        assert!(!node_1(&[], &[3]), "node 3 of its group catching up");
        assert!(
            node_1(&[4], &[]),
            "node 4 is in no volume group; meta may lose two of five"
        );
        assert!(node_1(&[4], &[1]), "node 1 catching up already counts once");
    }

    #[test]
    fn a_fault_starts_beside_around_or_within_what_is_broken_never_beyond_the_budget() {
        // Nine nodes, a volume on each three.
        let members: BTreeMap<String, Vec<u64>> = [
            ("a".to_string(), vec![1, 2, 3]),
            ("b".to_string(), vec![4, 5, 6]),
            ("c".to_string(), vec![7, 8, 9]),
        ]
        .into();
        let none = BTreeSet::new();
        let admits = |new: &[u64], partition: bool, broken: &Broken| {
            admits(&set(new), partition, broken, &none, &members, 9)
        };
        let broken = |cut: &[u64], held: &[u64], recovering: &[u64]| Broken {
            cut: set(cut),
            held: set(held),
            recovering: set(recovering),
        };
        let split = [1, 4, 5, 7];
        let bridge: Vec<u64> = (1..=8).collect();
        // Alone, a split breaks what it breaks (b's majority included); beside, the budget.
        assert!(admits(&split, true, &Broken::default()));
        assert!(admits(&[1], false, &broken(&[], &[4], &[])));
        assert!(!admits(&[2], false, &broken(&[], &[1], &[])), "a: 1 and 2");
        // Around: what is broken lies within the split's minority or the bridge's halves.
        assert!(admits(&split, true, &broken(&[], &[4], &[])));
        assert!(admits(&split, true, &broken(&[], &[], &[5, 7])));
        assert!(admits(&bridge, true, &broken(&[5, 6], &[3], &[8])));
        assert!(
            !admits(&split, true, &broken(&[], &[2], &[])),
            "node 2 is outside the minority: a's majority gone"
        );
        assert!(
            !admits(&bridge, true, &broken(&[], &[9], &[])),
            "the bridge node itself is down"
        );
        // Within: a kill on a node the split cut off, kills within the budget among themselves.
        let during_split = broken(&split, &[], &[]);
        assert!(admits(&[5], false, &during_split));
        assert!(admits(&[1], false, &broken(&split, &[5], &[])));
        assert!(
            !admits(&[4], false, &broken(&split, &[5], &[])),
            "b: 4 and 5 killed"
        );
        assert!(
            !admits(&[6], false, &during_split),
            "node 6 is not cut off, and b has 4 and 5 cut"
        );
        // One fault of a node's own at a time, and a node catching up is left to it.
        assert!(
            !admits(&[5], false, &broken(&split, &[5], &[])),
            "5 paused already"
        );
        assert!(
            !admits(&[5], false, &broken(&split, &[], &[5])),
            "5 catching up"
        );
        // A partition does not stack inside another one's cut, nor repeat it.
        assert!(!admits(&[5], true, &during_split));
        assert!(
            !admits(&[5], true, &broken(&[5], &[], &[])),
            "5 isolated twice"
        );
        assert!(
            admits(&[5], true, &broken(&[], &[], &[5])),
            "around 5 catching up"
        );
    }
}
