//! The repair planner: from the catalogue, a volume group's actual membership and which
//! nodes are down, the one next step towards a full group (a pure function, no I/O).

use std::collections::BTreeSet;

use crate::meta::catalog::{Catalog, Repair, VolumeKind, VolumeRecord};
use crate::meta::placement;
use crate::node::GroupStatus;

/// A learner at most this many entries behind the leader is promoted: the joint
/// config then commits without waiting for a long catch-up.
pub const CAUGHT_UP_LAG: u64 = 64;

/// A volume group as its leader reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupView {
    pub leader: u64,
    /// Voters (of both sets in a joint config).
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    pub joint: bool,
    pub last_log_index: u64,
    /// Each member's matched log index, on the leader.
    pub matched: std::collections::BTreeMap<u64, Option<u64>>,
}

impl GroupView {
    /// The view in `status`, answered by `node`, if `node` leads the group.
    pub fn from_leader(node: u64, status: &GroupStatus) -> Option<GroupView> {
        if !status.hosted || status.leader != Some(node) {
            return None;
        }
        Some(GroupView {
            leader: node,
            voters: status.voters.iter().copied().collect(),
            learners: status.learners.iter().copied().collect(),
            joint: status.joint,
            last_log_index: status.last_log_index.unwrap_or(0),
            matched: status.matched.clone(),
        })
    }

    fn matched(&self, node: u64) -> Option<u64> {
        self.matched.get(&node).copied().flatten()
    }

    /// `node` holds the log up to `CAUGHT_UP_LAG` entries behind the leader.
    pub fn caught_up(&self, node: u64) -> bool {
        self.matched(node)
            .is_some_and(|m| m + CAUGHT_UP_LAG >= self.last_log_index)
    }
}

/// Why nothing can be done for a volume right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// No member answered as the group's leader (no quorum, or an election).
    NoLeader,
    /// The new member is still catching up: its matched index and the leader's last.
    CatchingUp {
        node: u64,
        matched: u64,
        target: u64,
    },
    /// No node can take the replica of `from` (distinct nodes, capacity, cordons).
    NoTarget { from: u64 },
}

/// The one next step for a volume; each is idempotent, so repeating a step (after a
/// meta leader change, or a lost answer) does no harm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The group is complete; nothing to do.
    Idle,
    Wait(Wait),
    /// Meta: record the replacement (`to` joins `members`, so it opens the group).
    Start(Repair),
    /// Group leader: add `to` as a learner (it catches up by snapshot, then log).
    AddLearner(u64),
    /// Group leader: replace the voters by these (promote `to`, remove `from`).
    SetVoters(BTreeSet<u64>),
    /// Group leader: drop a learner the catalogue does not place there.
    RemoveLearner(u64),
    /// Meta: `to` is a voter and `from` gone: `from` leaves `members`.
    Finish(Repair),
    /// Meta: `to` went down before it became a voter: it leaves `members`.
    Abort(Repair),
}

/// What the planner knows about nodes besides the catalogue.
pub struct Nodes<'a> {
    /// Unreachable for longer than `--replica-down-timeout`.
    pub down: &'a dyn Fn(u64) -> bool,
    /// Already the target of `--rebuild-concurrency` replacements.
    pub busy: &'a dyn Fn(u64) -> bool,
    /// The nodes' fresh usage reports (placement counts real usage by them).
    pub live: &'a placement::Live,
}

/// The next step for `vol`, whose group's leader reports `group` (`None`: no leader).
pub fn plan(cat: &Catalog, vol: &VolumeRecord, group: Option<&GroupView>, nodes: &Nodes) -> Step {
    if vol.kind != VolumeKind::Replicated {
        return Step::Idle;
    }
    let Some(g) = group else {
        return Step::Wait(Wait::NoLeader);
    };
    match vol.repair {
        Some(r) => continue_repair(g, r, nodes),
        None => next_repair(cat, vol, g, nodes),
    }
}

fn continue_repair(g: &GroupView, r: Repair, nodes: &Nodes) -> Step {
    let is_voter = g.voters.contains(&r.to);
    if is_voter {
        if g.voters.contains(&r.from) || g.joint {
            // A promotion half done (joint), or the removal still to go.
            return Step::SetVoters(target_voters(g, r));
        }
        return Step::Finish(r);
    }
    if (nodes.down)(r.to) {
        if g.learners.contains(&r.to) {
            return Step::RemoveLearner(r.to);
        }
        return Step::Abort(r);
    }
    if !g.learners.contains(&r.to) {
        return Step::AddLearner(r.to);
    }
    if g.caught_up(r.to) {
        return Step::SetVoters(target_voters(g, r));
    }
    Step::Wait(Wait::CatchingUp {
        node: r.to,
        matched: g.matched(r.to).unwrap_or(0),
        target: g.last_log_index,
    })
}

/// The voters once `r` is done: today's (both sets if joint), `to` in, `from` out.
fn target_voters(g: &GroupView, r: Repair) -> BTreeSet<u64> {
    let mut v = g.voters.clone();
    v.insert(r.to);
    v.remove(&r.from);
    v
}

fn next_repair(cat: &Catalog, vol: &VolumeRecord, g: &GroupView, nodes: &Nodes) -> Step {
    // A learner left behind by an aborted repair (or a deposed meta leader) goes first.
    if let Some(stray) = g.learners.iter().find(|l| !vol.members.contains(l)) {
        return Step::RemoveLearner(*stray);
    }
    let draining = |m: u64| cat.nodes.get(&m).is_some_and(|n| n.draining());
    // Lost members first, then those on draining nodes; only current voters (a member
    // the group never had cannot be replaced through it).
    let from = vol
        .members
        .iter()
        .copied()
        .filter(|m| g.voters.contains(m))
        .find(|m| (nodes.down)(*m))
        .or_else(|| {
            vol.members
                .iter()
                .copied()
                .filter(|m| g.voters.contains(m))
                .find(|m| draining(*m))
        });
    let Some(from) = from else {
        return Step::Idle;
    };
    let unusable = |n: u64| (nodes.down)(n) || (nodes.busy)(n);
    match placement::replacement(cat, vol, from, nodes.live, &unusable) {
        Some(to) => Step::Start(Repair { from, to }),
        None => Step::Wait(Wait::NoTarget { from }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::meta::catalog::{MetaCommand, NodeRecord, NodeRole, VolumeState};

    pub(crate) fn cat(nodes: u64) -> Catalog {
        let mut c = Catalog::default();
        for id in 1..=nodes {
            c.nodes.insert(
                id,
                NodeRecord {
                    id,
                    name: format!("node-{id}"),
                    addr: format!("127.0.0.1:{id}"),
                    labels: BTreeMap::new(),
                    capacity_bytes: 10 << 30,
                    role: NodeRole::Voter,
                },
            );
        }
        c.volumes.insert(
            "v".into(),
            VolumeRecord {
                id: 1,
                name: "v".into(),
                size: 1 << 30,
                replicas: 3,
                kind: VolumeKind::Replicated,
                members: vec![1, 2, 3],
                attachments: vec![],
                labels: BTreeMap::new(),
                created_unix: 0,
                origin: None,
                state: VolumeState::Ready,
                generation: 0,
                repair: None,
            },
        );
        c
    }

    pub(crate) fn view(leader: u64, voters: &[u64], learners: &[u64], last: u64) -> GroupView {
        GroupView {
            leader,
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            joint: false,
            last_log_index: last,
            matched: voters
                .iter()
                .chain(learners)
                .map(|n| (*n, Some(last)))
                .collect(),
        }
    }

    fn step(c: &Catalog, g: Option<&GroupView>, down: &[u64]) -> Step {
        let down = |n: u64| down.contains(&n);
        let busy = |_| false;
        plan(
            c,
            &c.volumes["v"],
            g,
            &Nodes {
                down: &down,
                busy: &busy,
                live: &placement::Live::new(),
            },
        )
    }

    fn apply(c: &mut Catalog, cmd: MetaCommand) {
        c.apply(cmd).unwrap();
    }

    const R: Repair = Repair { from: 3, to: 4 };

    #[test]
    fn a_lost_member_is_replaced_step_by_step() {
        let mut c = cat(4);
        let g = view(1, &[1, 2, 3], &[], 100);
        assert_eq!(step(&c, Some(&g), &[]), Step::Idle);
        assert_eq!(step(&c, None, &[3]), Step::Wait(Wait::NoLeader));
        assert_eq!(step(&c, Some(&g), &[3]), Step::Start(R));
        apply(
            &mut c,
            MetaCommand::StartRepair {
                name: "v".into(),
                from: 3,
                to: 4,
            },
        );
        assert_eq!(step(&c, Some(&g), &[3]), Step::AddLearner(4));
        let mut g = view(1, &[1, 2, 3], &[4], 100);
        g.matched.insert(4, Some(10));
        assert_eq!(
            step(&c, Some(&g), &[3]),
            Step::Wait(Wait::CatchingUp {
                node: 4,
                matched: 10,
                target: 100
            })
        );
        g.matched.insert(4, Some(90));
        assert_eq!(step(&c, Some(&g), &[3]), Step::SetVoters([1, 2, 4].into()));
        // Interrupted in the joint config: the same target again.
        let mut joint = view(2, &[1, 2, 3, 4], &[], 120);
        joint.joint = true;
        assert_eq!(
            step(&c, Some(&joint), &[3]),
            Step::SetVoters([1, 2, 4].into())
        );
        let done = view(2, &[1, 2, 4], &[], 130);
        assert_eq!(step(&c, Some(&done), &[3]), Step::Finish(R));
        apply(
            &mut c,
            MetaCommand::FinishRepair {
                name: "v".into(),
                from: 3,
                to: 4,
            },
        );
        assert_eq!(c.volumes["v"].members, vec![1, 2, 4]);
        assert_eq!(step(&c, Some(&done), &[3]), Step::Idle);
    }

    #[test]
    fn a_target_that_goes_down_is_removed_and_the_repair_aborted() {
        let mut c = cat(5);
        apply(
            &mut c,
            MetaCommand::StartRepair {
                name: "v".into(),
                from: 3,
                to: 4,
            },
        );
        let g = view(1, &[1, 2, 3], &[4], 100);
        assert_eq!(step(&c, Some(&g), &[3, 4]), Step::RemoveLearner(4));
        let g = view(1, &[1, 2, 3], &[], 100);
        assert_eq!(step(&c, Some(&g), &[3, 4]), Step::Abort(R));
        apply(
            &mut c,
            MetaCommand::AbortRepair {
                name: "v".into(),
                from: 3,
                to: 4,
            },
        );
        assert_eq!(
            step(&c, Some(&g), &[3, 4]),
            Step::Start(Repair { from: 3, to: 5 })
        );
        // A learner the catalogue does not place (a deposed leader's) is dropped first.
        let stray = view(1, &[1, 2, 3], &[4], 100);
        assert_eq!(step(&c, Some(&stray), &[3]), Step::RemoveLearner(4));
    }

    #[test]
    fn a_target_at_its_rebuild_limit_is_passed_over() {
        let c = cat(5);
        let g = view(1, &[1, 2, 3], &[], 100);
        let down = |n: u64| n == 3;
        let plan_with = |busy: &dyn Fn(u64) -> bool| {
            plan(
                &c,
                &c.volumes["v"],
                Some(&g),
                &Nodes {
                    down: &down,
                    busy,
                    live: &placement::Live::new(),
                },
            )
        };
        assert_eq!(
            plan_with(&|_| false),
            Step::Start(Repair { from: 3, to: 4 })
        );
        assert_eq!(
            plan_with(&|n| n == 4),
            Step::Start(Repair { from: 3, to: 5 })
        );
        assert_eq!(
            plan_with(&|n| n >= 4),
            Step::Wait(Wait::NoTarget { from: 3 })
        );
    }

    #[test]
    fn drains_need_a_target_and_respect_cordons_and_capacity() {
        let mut c = cat(4);
        apply(
            &mut c,
            MetaCommand::SetNodeSchedule {
                id: 2,
                cordoned: true,
                draining: true,
            },
        );
        let g = view(1, &[1, 2, 3], &[], 100);
        assert_eq!(
            step(&c, Some(&g), &[]),
            Step::Start(Repair { from: 2, to: 4 })
        );
        apply(
            &mut c,
            MetaCommand::SetNodeSchedule {
                id: 4,
                cordoned: true,
                draining: false,
            },
        );
        assert_eq!(
            step(&c, Some(&g), &[]),
            Step::Wait(Wait::NoTarget { from: 2 })
        );
        let mut c = cat(4);
        c.nodes.get_mut(&4).unwrap().capacity_bytes = 1 << 20;
        assert_eq!(
            step(&c, Some(&g), &[3]),
            Step::Wait(Wait::NoTarget { from: 3 })
        );
        // A down member goes before a draining one; a down node is never a target.
        let mut c = cat(5);
        c.nodes.get_mut(&1).unwrap().labels = [("cairn.dev/draining".into(), "true".into())].into();
        assert_eq!(
            step(&c, Some(&g), &[2, 4]),
            Step::Start(Repair { from: 2, to: 5 })
        );
    }
}
