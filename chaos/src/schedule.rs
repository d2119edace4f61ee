//! The fault schedule drawn from a seed: which fault, on which target, after what quiet gap and
//! for how long, one at a time. The same seed and inputs give the same schedule.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::nemesis::{FaultKind, Target};

/// Which nodes single-node faults hit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Targets {
    /// The leader of a volume's group or a random node, evenly.
    #[default]
    Any,
    /// Always the leader of a volume's group.
    Leaders,
    /// Always this node (`--targets node:N`): e.g. the node where the fs workload is mounted.
    Node(u64),
}

/// One scheduled fault: after `gap` without faults, `kind` on `target` for `hold`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    pub gap: Duration,
    pub kind: FaultKind,
    pub target: Target,
    pub hold: Duration,
}

/// An endless stream of steps; take as many as the run has time for.
pub struct Schedule {
    rng: StdRng,
    kinds: Vec<FaultKind>,
    nodes: u64,
    volumes: Vec<String>,
    targets: Targets,
}

/// Bounds of the quiet gap before a fault and of the fault itself.
const GAP_MS: std::ops::Range<u64> = 500..2_500;
const HOLD_MS: std::ops::Range<u64> = 500..4_000;

impl Schedule {
    /// A schedule over `kinds` (none: no faults) for nodes 1..=`nodes` and `volumes`.
    pub fn new(
        seed: u64,
        kinds: &[FaultKind],
        nodes: usize,
        volumes: &[String],
        targets: Targets,
    ) -> Schedule {
        Schedule {
            rng: StdRng::seed_from_u64(seed),
            kinds: kinds.to_vec(),
            nodes: nodes as u64,
            volumes: volumes.to_vec(),
            targets,
        }
    }

    fn target(&mut self, kind: FaultKind) -> Target {
        if kind == FaultKind::PowerlossAll {
            return Target::All;
        }
        let leader = match self.targets {
            Targets::Leaders => true,
            Targets::Any => self.rng.random_bool(0.5),
            Targets::Node(id) => return Target::Node { id },
        };
        match leader && !self.volumes.is_empty() {
            true => Target::LeaderOf {
                volume: self.volumes[self.rng.random_range(0..self.volumes.len())].clone(),
            },
            false => Target::Node {
                id: self.rng.random_range(1..=self.nodes.max(1)),
            },
        }
    }
}

impl Iterator for Schedule {
    type Item = Step;
    fn next(&mut self) -> Option<Step> {
        if self.kinds.is_empty() {
            return None;
        }
        let gap = Duration::from_millis(self.rng.random_range(GAP_MS));
        let kind = self.kinds[self.rng.random_range(0..self.kinds.len())];
        let target = self.target(kind);
        let hold = Duration::from_millis(self.rng.random_range(HOLD_MS));
        Some(Step {
            gap,
            kind,
            target,
            hold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(seed: u64, targets: Targets) -> Vec<Step> {
        let volumes = vec!["a".to_string(), "b".to_string()];
        Schedule::new(seed, &FaultKind::ALL, 3, &volumes, targets)
            .take(50)
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        assert_eq!(steps(42, Targets::Any), steps(42, Targets::Any));
        assert_ne!(steps(42, Targets::Any), steps(43, Targets::Any));
    }

    #[test]
    fn steps_stay_in_bounds_and_cover_every_kind() {
        let all = steps(7, Targets::Any);
        for step in &all {
            assert!(GAP_MS.contains(&(step.gap.as_millis() as u64)));
            assert!(HOLD_MS.contains(&(step.hold.as_millis() as u64)));
            match (&step.kind, &step.target) {
                (FaultKind::PowerlossAll, Target::All) => {}
                (FaultKind::PowerlossAll, other) => panic!("powerloss-all on {other:?}"),
                (_, Target::Node { id }) => assert!((1..=3).contains(id)),
                (_, Target::LeaderOf { volume }) => assert!(volume == "a" || volume == "b"),
                (kind, Target::All) => panic!("{kind:?} on every node"),
            }
        }
        for kind in FaultKind::ALL {
            assert!(all.iter().any(|s| s.kind == kind), "{kind:?} never drawn");
        }
        assert!(
            steps(7, Targets::Leaders)
                .iter()
                .all(|s| matches!(s.target, Target::LeaderOf { .. } | Target::All))
        );
        assert!(steps(7, Targets::Node(2)).iter().all(|s| match s.kind {
            FaultKind::PowerlossAll => s.target == Target::All,
            _ => s.target == Target::Node { id: 2 },
        }));
        assert_eq!(
            Schedule::new(1, &[], 3, &[], Targets::Any).next(),
            None,
            "no kinds, no faults"
        );
    }
}
