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
    pacing: Pacing,
}

/// The bounds, in milliseconds, of the quiet gap before each fault and of the fault itself
/// (`--gap`, `--hold`: `MIN..MAX`, the maximum excluded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pacing {
    pub gap_ms: std::ops::Range<u64>,
    pub hold_ms: std::ops::Range<u64>,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            gap_ms: 500..2_500,
            hold_ms: 500..4_000,
        }
    }
}

/// Parses a `--gap`/`--hold` range such as `200ms..1s` (the maximum excluded), with
/// `parse` reading each bound; the error names `field`.
pub fn parse_range(
    field: &str,
    s: &str,
    parse: impl Fn(&str) -> Result<Duration, String>,
) -> Result<std::ops::Range<u64>, String> {
    let (lo, hi) = s
        .split_once("..")
        .ok_or_else(|| format!("--{field} `{s}`: expected MIN..MAX, e.g. 200ms..1s"))?;
    let lo = parse(lo)
        .map_err(|e| format!("--{field} `{s}`: {e}"))?
        .as_millis() as u64;
    let hi = parse(hi)
        .map_err(|e| format!("--{field} `{s}`: {e}"))?
        .as_millis() as u64;
    if lo >= hi {
        return Err(format!(
            "--{field} `{s}`: the minimum must be below the maximum"
        ));
    }
    Ok(lo..hi)
}

impl Schedule {
    /// A schedule over `kinds` (none: no faults) for nodes 1..=`nodes` and `volumes`.
    pub fn new(
        seed: u64,
        kinds: &[FaultKind],
        nodes: usize,
        volumes: &[String],
        targets: Targets,
        pacing: Pacing,
    ) -> Schedule {
        Schedule {
            rng: StdRng::seed_from_u64(seed),
            kinds: kinds.to_vec(),
            nodes: nodes as u64,
            volumes: volumes.to_vec(),
            targets,
            pacing,
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
        let gap = Duration::from_millis(self.rng.random_range(self.pacing.gap_ms.clone()));
        let kind = self.kinds[self.rng.random_range(0..self.kinds.len())];
        let target = self.target(kind);
        let hold = Duration::from_millis(self.rng.random_range(self.pacing.hold_ms.clone()));
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
        Schedule::new(
            seed,
            &FaultKind::ALL,
            3,
            &volumes,
            targets,
            Pacing::default(),
        )
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
            assert!(
                Pacing::default()
                    .gap_ms
                    .contains(&(step.gap.as_millis() as u64))
            );
            assert!(
                Pacing::default()
                    .hold_ms
                    .contains(&(step.hold.as_millis() as u64))
            );
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
            Schedule::new(1, &[], 3, &[], Targets::Any, Pacing::default()).next(),
            None,
            "no kinds, no faults"
        );
    }

    #[test]
    fn pacing_ranges_parse_and_bad_ones_name_the_flag() {
        let ms = |s: &str| -> Result<Duration, String> {
            let n = s.strip_suffix("ms").ok_or("no unit")?;
            n.parse()
                .map(Duration::from_millis)
                .map_err(|_| "not a number".to_string())
        };
        assert_eq!(parse_range("gap", "100ms..600ms", ms), Ok(100..600));
        for bad in ["100ms", "600ms..100ms", "5ms..5ms", "x..1ms"] {
            let e = parse_range("gap", bad, ms).unwrap_err();
            assert!(e.starts_with("--gap `"), "{bad}: {e}");
        }
        // Steps keep to the given bounds.
        let pacing = Pacing {
            gap_ms: 10..20,
            hold_ms: 30..40,
        };
        let steps: Vec<Step> = Schedule::new(3, &FaultKind::ALL, 3, &[], Targets::Any, pacing)
            .take(100)
            .collect();
        assert!(
            steps
                .iter()
                .all(|s| (10..20).contains(&(s.gap.as_millis() as u64))
                    && (30..40).contains(&(s.hold.as_millis() as u64)))
        );
    }
}
