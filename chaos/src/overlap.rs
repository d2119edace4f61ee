//! Overlapping faults (`--overlap N`): up to N faults active at once on the seed's schedule,
//! never more than a minority of any group's replicas broken or catching up at the same time,
//! and never two clocks more than `clock::MAX_APART` apart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cairn_proto::cairn::v1::ReplicaState;

use crate::clock;
use crate::cluster::FaultCluster;
use crate::error::Error;
use crate::history::Recorder;
use crate::lookahead::Lookahead;
use crate::nemesis::{self, ActiveFault, FaultKind, FaultRecord, Target};
use crate::partition::{self, Shape};
use crate::run::RunConfig;
use crate::schedule::{Schedule, Step};

/// How often the injector looks at its faults, the recovering nodes and the schedule.
const TICK: Duration = Duration::from_millis(100);
/// How long a step that does not fit (it would break a majority of some group) waits for
/// room before it is dropped.
const FIT_WAIT: Duration = Duration::from_secs(15);
/// How long a step waits for its volume's leader to be named (the loop must go on healing).
const RESOLVE_WAIT: Duration = Duration::from_secs(2);
/// The same for a step drawn after one still waiting: it must not hold up the loop.
const RESOLVE_WAIT_BEHIND: Duration = Duration::from_millis(300);

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

/// The nodes whose clocks the active faults skew, with their rates.
fn skewed(active: &[Active]) -> BTreeMap<u64, f64> {
    active
        .iter()
        .filter_map(|a| {
            let r = a.fault.record();
            Some((r.nodes.clone(), r.kind.clock_rate()?))
        })
        .flat_map(|(nodes, rate)| nodes.into_iter().map(move |id| (id, rate)))
        .collect()
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

struct Active {
    fault: ActiveFault,
    due: Instant,
    breaks: BTreeSet<u64>,
}

/// Follows the schedule with up to `config.overlap` faults active at once (a step starts
/// `gap` after the previous one started, once a slot is free and it fits); a healed fault's
/// nodes count as broken until their replicas are caught up. Each partition has its own
/// nftables table, so partitions overlap too. Returns the faults as they happened, each with
/// `overlapping` (how many faults were active when it started).
pub async fn inject(
    cluster: &mut FaultCluster,
    recorder: &Recorder,
    volumes: &[String],
    config: &RunConfig,
) -> Result<Vec<FaultRecord>, Error> {
    let started = Instant::now();
    let end = started + config.duration;
    let all = cluster.node_ids();
    let schedule = Schedule::new(
        config.seed,
        &config.faults,
        config.nodes,
        volumes,
        config.targets,
        config.pacing.clone(),
    );
    let mut pending = Lookahead::new(schedule, config.overlap, started);
    let mut members = cluster.members(volumes).await;
    let mut log: Vec<FaultRecord> = Vec::new();
    let mut active: Vec<Active> = Vec::new();
    // Node -> (since when it is catching up, the faults whose heal left it so).
    let mut recovering: BTreeMap<u64, (Instant, Vec<usize>)> = BTreeMap::new();
    loop {
        let now = Instant::now();
        let over = now >= end;
        let (mut due, kept): (Vec<Active>, Vec<Active>) =
            active.into_iter().partition(|a| over || a.due <= now);
        active = kept;
        // Clocks heal last: their restarts must fit beside what the others leave recovering.
        due.sort_by_key(|a| a.fault.record().kind.clock_rate().is_some());
        for mut a in due {
            let kind = a.fault.record().kind;
            let nodes = a.fault.record().nodes.clone();
            // A partition heals once its watch of the majority side has settled.
            if !over && !a.fault.observed() {
                active.push(a);
                continue;
            }
            // A clock's heal is a restart: it waits, like a start, until it breaks no majority.
            if kind.clock_rate().is_some() && !over {
                let held: BTreeSet<u64> = active.iter().flat_map(|a| a.breaks.clone()).collect();
                let catching_up: BTreeSet<u64> = recovering.keys().copied().collect();
                if !restart_fits(&nodes, &held, &catching_up, &cluster.lost, &members, &all) {
                    active.push(a);
                    continue;
                }
            }
            nemesis::observe(cluster, &mut a.fault, volumes).await;
            let record = nemesis::heal(cluster, recorder, a.fault)?;
            let healed = Instant::now();
            let index = log.len();
            if record.kind == FaultKind::NodeLoss {
                // Alone by `exclusive`: wait for the rebuild as the one-at-a-time run does.
                cluster.wait_healthy(volumes, config.recovery).await?;
                members = cluster.members(volumes).await;
            } else {
                // A clock fault's heal restarted its nodes; the others' nodes were broken.
                let restarted = match kind.clock_rate() {
                    Some(_) => nodes.into_iter().collect(),
                    None => a.breaks,
                };
                for id in restarted {
                    let entry = recovering.entry(id).or_insert((healed, Vec::new()));
                    entry.1.push(index);
                }
            }
            log.push(record);
            if log[index].kind == FaultKind::NodeLoss {
                log[index].whole_after_s = healed.elapsed().as_secs_f64();
                log[index].members_after = members.clone();
            }
        }
        if !recovering.is_empty() {
            let waiting: BTreeSet<u64> = recovering.keys().copied().collect();
            let caught_up = caught_up(cluster, volumes, &members, &waiting).await;
            for id in caught_up {
                if let Some((since, faults)) = recovering.remove(&id) {
                    tracing::debug!(node = id, after_s = since.elapsed().as_secs_f64(), faults = ?faults.iter().map(|&i| log[i].kind.name()).collect::<Vec<_>>(), "caught up");
                    for i in faults {
                        let s = since.elapsed().as_secs_f64();
                        log[i].whole_after_s = log[i].whole_after_s.max(s);
                    }
                }
            }
            if let Some((id, (since, _))) = recovering
                .iter()
                .find(|(_, (since, _))| since.elapsed() > config.recovery)
            {
                return Err(Error::Cluster(format!(
                    "node {id}'s replicas not caught up {:?} after its fault was healed\n{}",
                    since.elapsed(),
                    cluster.log_tails(30)
                )));
            }
        }
        if over {
            if active.is_empty() {
                break;
            }
            continue;
        }
        // A step that does not fit yet lets the ones drawn after it start (`lookahead`).
        let candidates = match active.len() < config.overlap {
            true => pending.candidates(now),
            false => Vec::new(),
        };
        for (seq, step) in candidates {
            let waited = pending.tried(seq, now);
            let resolve = match pending.is_head(seq) {
                true => RESOLVE_WAIT,
                false => RESOLVE_WAIT_BEHIND,
            };
            let attempt = try_start(
                cluster,
                recorder,
                &step,
                Room {
                    active: &active,
                    recovering: &recovering,
                    members: &members,
                    all: &all,
                },
                resolve,
            )
            .await?;
            match attempt {
                Attempt::Started(fault, breaks) => {
                    let mut fault = *fault;
                    fault.set_overlapping(active.len());
                    nemesis::watch(cluster, &mut fault, volumes);
                    // A skewed node is up once it caught up after its restart.
                    let breaks = match fault.record().kind.clock_rate() {
                        Some(_) => {
                            for &id in &fault.record().nodes {
                                recovering.entry(id).or_insert((Instant::now(), Vec::new()));
                            }
                            BTreeSet::new()
                        }
                        None => breaks,
                    };
                    active.push(Active {
                        fault,
                        due: (Instant::now() + step.hold).min(end),
                        breaks,
                    });
                    pending.remove(seq);
                    pending.started(Instant::now());
                    break;
                }
                Attempt::Skipped => pending.remove(seq),
                Attempt::NoRoom if waited.elapsed() < FIT_WAIT => {}
                Attempt::NoRoom => {
                    tracing::info!(fault = step.kind.name(), target = ?step.target, "fault dropped: no room for it within the minority budget");
                    pending.remove(seq);
                }
            }
        }
        tokio::time::sleep(TICK).await;
    }
    Ok(log)
}

enum Attempt {
    Started(Box<ActiveFault>, BTreeSet<u64>),
    /// Not possible at all (a lost or protected node): dropped at once.
    Skipped,
    /// Would break a majority, share a node with a fault, or is exclusive: try again later.
    NoRoom,
}

/// What a step must fit beside: the active faults, the nodes catching up, each volume's
/// members and every node.
struct Room<'a> {
    active: &'a [Active],
    recovering: &'a BTreeMap<u64, (Instant, Vec<usize>)>,
    members: &'a BTreeMap<String, Vec<u64>>,
    all: &'a [u64],
}

/// Starts `step` if it fits `room` now, waiting up to `resolve` for its target's leader.
async fn try_start(
    cluster: &mut FaultCluster,
    recorder: &Recorder,
    step: &Step,
    room: Room<'_>,
    resolve: Duration,
) -> Result<Attempt, Error> {
    let Room {
        active,
        recovering,
        members,
        all,
    } = room;
    if !nemesis::possible(cluster, step.kind, &step.target) {
        tracing::info!(fault = step.kind.name(), target = ?step.target, "fault skipped: its node is lost or protected, or too few nodes are left");
        return Ok(Attempt::Skipped);
    }
    let quiet = active.is_empty() && recovering.is_empty();
    let alone = exclusive(step.kind) || active.iter().any(|a| exclusive(a.fault.record().kind));
    if !quiet && alone {
        tracing::debug!(fault = step.kind.name(), "no room: not alone");
        return Ok(Attempt::NoRoom);
    }
    if let (Some(rate), Target::Node { id }) = (step.kind.clock_rate(), &step.target)
        && !clock_fits(rate, &[*id], &skewed(active))
    {
        tracing::debug!(fault = step.kind.name(), node = id, "no room: clocks apart");
        return Ok(Attempt::NoRoom);
    }
    // Another fault may keep the leader from being named for now (a partition that leaves
    // the node the client asks first without a meta quorum): try again later.
    let nodes = match nemesis::resolve_within(cluster, &step.target, resolve).await {
        Ok(nodes) => nodes,
        Err(e) => {
            tracing::info!(fault = step.kind.name(), target = ?step.target, error = %e, "target not resolved; retrying");
            return Ok(Attempt::NoRoom);
        }
    };
    if !nemesis::spares(cluster, step.kind, &nodes) {
        tracing::info!(
            fault = step.kind.name(),
            ?nodes,
            "fault skipped: it would take down the node where the fs workload is attached"
        );
        return Ok(Attempt::Skipped);
    }
    let mates = nemesis::fellows(&step.target, nodes[0], members);
    let new = breaks(step.kind, &nodes, all, &mates);
    let busy: BTreeSet<u64> = active
        .iter()
        .flat_map(|a| a.breaks.iter().copied())
        .chain(recovering.keys().copied())
        .collect();
    // Alone, a fault may break what its kind breaks (a one-at-a-time run's faults); with
    // others, only within the minority budget.
    if !quiet && !fits(&new, &busy, &cluster.lost, members, all.len()) {
        tracing::debug!(
            fault = step.kind.name(),
            ?new,
            ?busy,
            "no room: over the budget"
        );
        return Ok(Attempt::NoRoom);
    }
    if let Some(rate) = step.kind.clock_rate()
        && !clock_fits(rate, &nodes, &skewed(active))
    {
        tracing::debug!(fault = step.kind.name(), ?nodes, "no room: clocks apart");
        return Ok(Attempt::NoRoom);
    }
    let fault = nemesis::start_on(
        cluster,
        recorder,
        step.kind,
        step.target.clone(),
        nodes,
        quiet,
    )
    .await?;
    tracing::info!(fault = step.kind.name(), breaks = ?new, busy = ?busy, active = active.len(), "overlapping fault started");
    Ok(Attempt::Started(Box::new(fault), new))
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

/// Which of `nodes` have every replica of `volumes` they hold caught up (a leader or a
/// follower), with a meta leader answering. Only the volumes that `members` places on one of
/// `nodes` are asked (one at least, for the meta leader), all at once: each answer waits for
/// its members' status, up to 400 ms for one that is down.
async fn caught_up(
    cluster: &FaultCluster,
    volumes: &[String],
    members: &BTreeMap<String, Vec<u64>>,
    nodes: &BTreeSet<u64>,
) -> Vec<u64> {
    let client = cluster.procs.client().with_deadline(Duration::from_secs(2));
    let mut asked: Vec<&String> = volumes
        .iter()
        .filter(|v| {
            members
                .get(*v)
                .is_none_or(|m| m.iter().any(|id| nodes.contains(id)))
        })
        .collect();
    if asked.is_empty() {
        asked.extend(volumes.first());
    }
    let answers = futures::future::join_all(asked.into_iter().map(|v| client.get_volume(v))).await;
    let mut behind: BTreeSet<u64> = BTreeSet::new();
    for answer in answers {
        match answer {
            Ok(v) => behind.extend(
                v.members
                    .iter()
                    .filter(|m| !matches!(m.state(), ReplicaState::Leader | ReplicaState::Follower))
                    .map(|m| m.node_id),
            ),
            Err(_) => return Vec::new(),
        }
    }
    nodes
        .iter()
        .copied()
        .filter(|id| !behind.contains(id))
        .collect()
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
}
