//! The minority budget checked from a run's record alone: which nodes were broken at every
//! instant (a fault on, or healed and not yet proven caught up), and whether that was allowed.

use std::collections::{BTreeMap, BTreeSet};

use crate::budget;
use crate::nemesis::FaultRecord;

/// What an audit saw: how many instants it checked (each time a node became broken), the
/// most nodes broken at once, the catch-ups it took as proven and those it did not (each
/// counts as broken until the record's end).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    pub instants: usize,
    pub most_broken: usize,
    pub proven: usize,
    pub unproven: usize,
}

/// The nodes `f` broke while it was on, as it recorded them: a partition's minority, else
/// both ends of its cut pairs; the nodes of any other kind but a clock (whose node is up,
/// though skewed, once it caught up after its restart).
pub fn broken_by(f: &FaultRecord) -> BTreeSet<u64> {
    if f.clock_rate.is_some() {
        BTreeSet::new()
    } else if !f.minority.is_empty() {
        f.minority.iter().copied().collect()
    } else if f.kind.shape().is_some() {
        f.cut.iter().flatten().copied().collect()
    } else {
        f.nodes.iter().copied().collect()
    }
}

/// Checks `faults` against the budget with `members` each volume's replicas and `nodes` the
/// meta group's voters. A node is broken from its fault's start to its end and, after it,
/// from its catch-up's `from` until its `caught_up` if every group it is a member of (its
/// volumes and the meta group) has a proof that holds (`Proof::holds`), else until the end.
/// At each instant a node became broken, before the run's end healed what was left
/// (`healed_at_end`), the broken nodes must keep every group a majority (`budget::fits`),
/// or lie within what a single fault broke whose own nodes are not yet all caught up (it
/// ran alone, or later faults started around or within it). Errs naming the instant.
pub fn audit(
    faults: &[FaultRecord],
    members: &BTreeMap<String, Vec<u64>>,
    nodes: &[u64],
) -> Result<Audit, String> {
    let cutoff = faults
        .iter()
        .filter_map(|f| f.healed_at_end)
        .min()
        .unwrap_or(u64::MAX);
    let mut audit = Audit::default();
    // Node -> [from, to] broken; and each fault's span with the nodes it broke.
    let mut spans: Vec<(u64, u64, u64)> = Vec::new();
    let mut faults_on: Vec<(u64, u64, BTreeSet<u64>)> = Vec::new();
    for f in faults {
        let broke = broken_by(f);
        let mut last = f.end;
        for &n in &broke {
            spans.push((n, f.start, f.end));
        }
        let mut done: BTreeSet<u64> = BTreeSet::new();
        for c in &f.catch_up {
            let groups: Vec<&str> = members
                .iter()
                .filter(|(_, m)| m.contains(&c.node))
                .map(|(v, _)| v.as_str())
                .chain([crate::views::META])
                .collect();
            let proven = c.caught_up.filter(|&at| {
                groups.iter().all(|g| {
                    c.proofs
                        .iter()
                        .any(|p| p.group == *g && p.holds(c.node, c.healed) && at >= p.asked)
                })
            });
            match proven {
                Some(_) => audit.proven += 1,
                None => audit.unproven += 1,
            }
            let to = proven.unwrap_or(u64::MAX);
            spans.push((c.node, c.from, to));
            last = last.max(to);
            done.insert(c.node);
        }
        // A node it broke with no catch-up recorded never caught up.
        for &n in broke.difference(&done) {
            spans.push((n, f.end, u64::MAX));
            last = u64::MAX;
        }
        if f.clock_rate.is_some() {
            let skewed: BTreeSet<u64> = f.nodes.iter().copied().collect();
            faults_on.push((f.start, last, skewed));
        } else {
            faults_on.push((f.start, last, broke));
        }
    }
    let mut instants: Vec<u64> = spans
        .iter()
        .map(|&(_, from, _)| from)
        .filter(|&t| t < cutoff)
        .collect();
    instants.sort_unstable();
    instants.dedup();
    let none = BTreeSet::new();
    for t in instants {
        let down: BTreeSet<u64> = spans
            .iter()
            .filter(|&&(_, from, to)| from <= t && t <= to)
            .map(|&(n, _, _)| n)
            .collect();
        audit.instants += 1;
        audit.most_broken = audit.most_broken.max(down.len());
        let fits = budget::fits(&down, &none, &none, members, nodes.len());
        let within_one = faults_on
            .iter()
            .any(|(from, to, broke)| *from <= t && t <= *to && down.is_subset(broke));
        if !fits && !within_one {
            return Err(format!(
                "at {:.3} s nodes {down:?} were broken at once, beyond the budget (volumes {members:?}, {} meta voters)",
                t as f64 / 1e9,
                nodes.len()
            ));
        }
    }
    Ok(audit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catchup::{CatchUp, Proof};
    use crate::nemesis::{FaultKind, Target};
    use crate::views::META;

    const S: u64 = 1_000_000_000;

    fn proof(group: &str, healed: u64) -> Proof {
        Proof {
            group: group.into(),
            bar: 10,
            bar_asked: healed,
            asked: healed + S / 10,
            leader: 1,
            matched: 10,
        }
    }

    /// A fault of `kind` on `node` from `start` to `end` s, its node caught up at `up` s
    /// with proofs for `groups` (`None`: no catch-up recorded).
    fn fault(
        kind: FaultKind,
        node: u64,
        start: u64,
        end: u64,
        up: Option<(u64, &[&str])>,
    ) -> FaultRecord {
        let mut f = FaultRecord::new(kind, Target::Node { id: node }, vec![node], start * S);
        f.end = end * S;
        if let Some((up, groups)) = up {
            f.catch_up.push(CatchUp {
                node,
                from: end * S,
                healed: end * S,
                caught_up: Some(up * S),
                proofs: groups.iter().map(|g| proof(g, end * S)).collect(),
            });
        }
        f
    }

    #[test]
    fn the_record_proves_the_budget_or_names_the_instant_it_broke() {
        let members: BTreeMap<String, Vec<u64>> = [("a".to_string(), vec![1, 2, 3])].into();
        let nodes = [1, 2, 3, 4, 5];
        // Node 4 (no volume) killed 0-2 s, caught up at 3 s; node 5 killed at 4 s; then node 1.
        let good = [
            fault(FaultKind::Kill, 4, 0, 2, Some((3, &[META]))),
            fault(FaultKind::Kill, 5, 1, 4, Some((5, &[META]))),
            fault(FaultKind::Pause, 1, 4, 6, Some((7, &["a", META]))),
        ];
        let seen = audit(&good, &members, &nodes).unwrap();
        assert_eq!((seen.most_broken, seen.proven, seen.unproven), (2, 3, 0));
        // Node 4 taken as caught up at its heal without a proof: it is broken until the end,
        // so three nodes at 4 s.
        let mut unproven = good.clone();
        unproven[0].catch_up[0].proofs.clear();
        let err = audit(&unproven, &members, &nodes).unwrap_err();
        assert!(err.contains("at 4.000 s nodes {1, 4, 5}"), "{err}");
        // A proof for the meta group only: node 1 is also in a.
        let mut half = good.to_vec();
        half[2].catch_up[0].proofs.retain(|p| p.group == META);
        half.push(fault(FaultKind::Kill, 2, 8, 9, Some((10, &["a", META]))));
        let err = audit(&half, &members, &nodes).unwrap_err();
        assert!(err.contains("at 8.000 s nodes {1, 2}"), "{err}");
        // No catch-up recorded at all.
        let mut none = good.clone();
        none[0].catch_up.clear();
        assert!(audit(&none, &members, &nodes).is_err());
        // A proof asked before the heal.
        let mut early = good.clone();
        early[0].catch_up[0].proofs[0].bar_asked = S;
        assert!(audit(&early, &members, &nodes).is_err());
        // After the run's end everything heals at once: not checked.
        let mut ended = unproven.clone();
        ended[2].healed_at_end = Some(4 * S - 1);
        ended[1].healed_at_end = Some(4 * S - 1);
        assert!(audit(&ended, &members, &nodes).is_ok());
    }

    #[test]
    fn a_fault_may_break_beyond_the_budget_alone_or_around_what_is_broken() {
        let members: BTreeMap<String, Vec<u64>> = [("a".to_string(), vec![1, 2, 3])].into();
        let nodes = [1, 2, 3, 4, 5];
        // A split cutting off 1, 2 (a's majority) with node 2 killed within it.
        let mut split = fault(FaultKind::PartitionSplit, 1, 0, 5, None);
        split.minority = vec![1, 2];
        for n in [1, 2] {
            split.catch_up.push(CatchUp {
                node: n,
                from: 5 * S,
                healed: 5 * S,
                caught_up: Some(6 * S),
                proofs: vec![proof("a", 5 * S), proof(META, 5 * S)],
            });
        }
        let kill = fault(FaultKind::Kill, 2, 1, 2, Some((3, &["a", META])));
        assert!(audit(&[split.clone(), kill], &members, &nodes).is_ok());
        // A kill of node 3 beside the split: a loses all three.
        let beyond = fault(FaultKind::Kill, 3, 1, 2, Some((3, &["a", META])));
        assert!(audit(&[split, beyond], &members, &nodes).is_err());
    }
}
