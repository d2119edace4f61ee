//! Overlapping faults (`--overlap N`): up to N faults active at once on the seed's schedule,
//! within the minority budget (`budget`), and never two clocks more than `clock::MAX_APART` apart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::budget::{self, Broken, breaks, clock_fits, exclusive, restart_fits};
use crate::catchup::{CatchUp, Tracker};
use crate::cluster::FaultCluster;
use crate::error::Error;
use crate::history::Recorder;
use crate::lookahead::Lookahead;
use crate::nemesis::{self, ActiveFault, FaultKind, FaultRecord, Target};
use crate::run::RunConfig;
use crate::schedule::{Schedule, Step};
use crate::views::{self, View, Views};

/// How often the injector looks at its faults, the recovering nodes and the schedule. It
/// never waits on the cluster in between (`views` polls it), so this is its reaction time.
const TICK: Duration = Duration::from_millis(20);
/// How long a step that does not fit (it would break a majority of some group) waits for
/// room before it is dropped.
const FIT_WAIT: Duration = Duration::from_secs(15);
/// How many drawn steps wait at once, per fault that may be active: the more wait, the likelier
/// one fits beside the nodes still catching up.
const LOOKAHEAD: usize = 2;

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

struct Active {
    /// Its number in the order faults started (catch-ups are recorded under it).
    id: u64,
    fault: ActiveFault,
    due: Instant,
    breaks: BTreeSet<u64>,
}

/// What the injector knows between ticks: the latest answers about the groups, when a fault
/// last started or healed on each node (older answers say nothing about it), the nodes
/// catching up since a heal (with the faults whose heal left them so), and each volume's
/// members.
struct Known {
    views: Views,
    touched: BTreeMap<u64, Instant>,
    recovering: BTreeMap<u64, Tracker>,
    members: BTreeMap<String, Vec<u64>>,
}

impl Known {
    /// `node` left broken since `from` by fault `fault`, healed (or restarted) at `healed`: it
    /// catches up from answers asked after that (again, if it was catching up already).
    fn recover(&mut self, node: u64, fault: u64, from: u64, healed: Instant, recorder: &Recorder) {
        let healed_ns = recorder.at(healed);
        let t = self
            .recovering
            .entry(node)
            .or_insert_with(|| Tracker::new(node, from, healed_ns, healed));
        t.healed_again(healed_ns, healed);
        t.faults.push(fault);
    }

    fn touch(&mut self, nodes: impl IntoIterator<Item = u64>) {
        let now = Instant::now();
        for id in nodes {
            self.touched.insert(id, now);
        }
    }

    /// What is broken beside the active faults: partitions' cuts, other faults' nodes, and the
    /// nodes catching up.
    fn broken(&self, active: &[Active]) -> Broken {
        let (mut cut, mut held) = (BTreeSet::new(), BTreeSet::new());
        for a in active {
            match a.fault.record().kind.shape() {
                Some(_) => cut.extend(&a.breaks),
                None => held.extend(&a.breaks),
            }
        }
        Broken {
            cut,
            held,
            recovering: self.recovering.keys().copied().collect(),
        }
    }
}

/// Follows the schedule with up to `config.overlap` faults active at once (a step starts
/// `gap` after the previous one started, once a slot is free and `budget::admits` it); a
/// healed fault's nodes count as broken until their replicas are caught up. Each partition
/// has its own nftables table, so partitions overlap too. Returns the faults as they
/// happened, each with `overlapping` (how many faults were active when it started).
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
    let mut pending = Lookahead::new(schedule, config.overlap * LOOKAHEAD, started);
    let mut known = Known {
        views: Views::start(&cluster.procs, volumes),
        touched: BTreeMap::new(),
        recovering: BTreeMap::new(),
        members: cluster.members(volumes).await,
    };
    let mut log: Vec<FaultRecord> = Vec::new();
    // Each logged fault's id, and the catch-ups recorded under each id.
    let mut ids: Vec<u64> = Vec::new();
    let mut catch_ups: BTreeMap<u64, Vec<CatchUp>> = BTreeMap::new();
    let mut next_id = 0u64;
    let mut active: Vec<Active> = Vec::new();
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
                let catching_up: BTreeSet<u64> = known.recovering.keys().copied().collect();
                if !restart_fits(
                    &nodes,
                    &held,
                    &catching_up,
                    &cluster.lost,
                    &known.members,
                    &all,
                ) {
                    active.push(a);
                    continue;
                }
            }
            let from = recorder.now();
            nemesis::observe(cluster, &mut a.fault, volumes).await;
            let mut record = nemesis::heal(cluster, recorder, a.fault)?;
            if over {
                record.healed_at_end = Some(recorder.at(end));
            }
            let healed = Instant::now();
            let index = log.len();
            ids.push(a.id);
            known.touch(nodes.iter().chain(&a.breaks).copied());
            if record.kind == FaultKind::NodeLoss {
                // Alone by `exclusive`: wait for the rebuild as the one-at-a-time run does.
                cluster.wait_healthy(volumes, config.recovery).await?;
                known.members = cluster.members(volumes).await;
            } else {
                // A clock fault's heal restarted its nodes; the others' nodes were broken.
                let restarted = match kind.clock_rate() {
                    Some(_) => nodes.into_iter().collect(),
                    None => a.breaks,
                };
                for id in restarted {
                    known.recover(id, a.id, from, healed, recorder);
                }
            }
            log.push(record);
            if log[index].kind == FaultKind::NodeLoss {
                log[index].whole_after_s = healed.elapsed().as_secs_f64();
                log[index].members_after = known.members.clone();
            }
        }
        let answers = known.views.now();
        if !known.recovering.is_empty() {
            let members = &known.members;
            let ready: Vec<u64> = known
                .recovering
                .iter_mut()
                .filter_map(|(&id, t)| {
                    let groups = groups_of(id, members);
                    t.look(&groups, &answers, |at| recorder.at(at))
                        .then_some(id)
                })
                .collect();
            for id in ready {
                if let Some(t) = known.recovering.remove(&id) {
                    let after_s = t.healed_at.elapsed().as_secs_f64();
                    let (record, faults) = t.done(recorder.now());
                    tracing::debug!(node = id, after_s, proofs = ?record.proofs, "caught up");
                    for f in faults {
                        catch_ups.entry(f).or_default().push(record.clone());
                    }
                }
            }
            if let Some((id, t)) = known
                .recovering
                .iter()
                .find(|(_, t)| t.healed_at.elapsed() > config.recovery)
            {
                return Err(Error::Cluster(format!(
                    "node {id}'s replicas not caught up {:?} after its fault was healed\n{}",
                    t.healed_at.elapsed(),
                    cluster.log_tails(30)
                )));
            }
        }
        if over {
            if active.is_empty() {
                break;
            }
            tokio::time::sleep(TICK).await;
            continue;
        }
        // A step that does not fit yet lets the ones drawn after it start (`lookahead`).
        let candidates = match active.len() < config.overlap {
            true => pending.candidates(now),
            false => Vec::new(),
        };
        for (seq, step) in candidates {
            let waited = pending.tried(seq, now);
            let attempt = try_start(cluster, recorder, &step, &active, &known, &answers).await?;
            match attempt {
                Attempt::Started(fault, breaks) => {
                    let mut fault = *fault;
                    let id = next_id;
                    next_id += 1;
                    fault.set_overlapping(active.len());
                    nemesis::watch(cluster, &mut fault, volumes);
                    known.touch(fault.record().nodes.iter().chain(&breaks).copied());
                    // A skewed node is up once it caught up after its restart.
                    let breaks = match fault.record().kind.clock_rate() {
                        Some(_) => {
                            let (from, restarted) = (fault.record().start, Instant::now());
                            for &node in &fault.record().nodes {
                                known.recover(node, id, from, restarted, recorder);
                            }
                            BTreeSet::new()
                        }
                        None => breaks,
                    };
                    active.push(Active {
                        id,
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
    // Nodes still catching up when the last fault healed: recorded without a catch-up time.
    for (_, t) in std::mem::take(&mut known.recovering) {
        let (record, faults) = t.unfinished();
        for f in faults {
            catch_ups.entry(f).or_default().push(record.clone());
        }
    }
    for (record, id) in log.iter_mut().zip(&ids) {
        record.catch_up = catch_ups.remove(id).unwrap_or_default();
        let after = record
            .catch_up
            .iter()
            .filter_map(|c| c.caught_up)
            .map(|at| at.saturating_sub(record.end) as f64 / 1e9)
            .fold(0.0, f64::max);
        record.whole_after_s = record.whole_after_s.max(after);
    }
    Ok(log)
}

/// The groups `node` is a member of: the volumes `members` places on it, and the meta group.
fn groups_of(node: u64, members: &BTreeMap<String, Vec<u64>>) -> Vec<&str> {
    members
        .iter()
        .filter(|(_, m)| m.contains(&node))
        .map(|(v, _)| v.as_str())
        .chain([views::META])
        .collect()
}

enum Attempt {
    Started(Box<ActiveFault>, BTreeSet<u64>),
    /// Not possible at all (a lost or protected node): dropped at once.
    Skipped,
    /// Would break a majority, share a node with a fault, is exclusive, or its volume's
    /// leader is not known yet: try again later.
    NoRoom,
}

/// The nodes `target` stands for now, from answers asked after the last fault on its
/// volume's members (`None`: no leader named yet; the next tick tries again).
fn resolve(
    cluster: &FaultCluster,
    target: &Target,
    known: &Known,
    answers: &BTreeMap<String, View>,
) -> Option<Vec<u64>> {
    match target {
        Target::LeaderOf { volume } => {
            let leader = views::leader(answers, volume, |id| known.touched.get(&id).copied())?;
            Some(vec![leader])
        }
        Target::Node { id } => Some(vec![*id]),
        Target::All => Some(cluster.live_ids()),
    }
}

/// Starts `step` if `budget::admits` it beside the `active` faults and what `known` says is
/// catching up.
async fn try_start(
    cluster: &mut FaultCluster,
    recorder: &Recorder,
    step: &Step,
    active: &[Active],
    known: &Known,
    answers: &BTreeMap<String, View>,
) -> Result<Attempt, Error> {
    if !nemesis::possible(cluster, step.kind, &step.target) {
        tracing::info!(fault = step.kind.name(), target = ?step.target, "fault skipped: its node is lost or protected, or too few nodes are left");
        return Ok(Attempt::Skipped);
    }
    let broken = known.broken(active);
    let quiet = active.is_empty() && broken.recovering.is_empty();
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
    let Some(nodes) = resolve(cluster, &step.target, known, answers) else {
        tracing::debug!(fault = step.kind.name(), target = ?step.target, "no room: no leader named yet");
        return Ok(Attempt::NoRoom);
    };
    if !nemesis::spares(cluster, step.kind, &nodes) {
        tracing::info!(
            fault = step.kind.name(),
            ?nodes,
            "fault skipped: it would take down the node where the fs workload is attached"
        );
        return Ok(Attempt::Skipped);
    }
    let all = cluster.node_ids();
    let mates = nemesis::fellows(&step.target, nodes[0], &known.members);
    let new = breaks(step.kind, &nodes, &all, &mates);
    let partition = step.kind.shape().is_some();
    if !budget::admits(
        &new,
        partition,
        &broken,
        &cluster.lost,
        &known.members,
        all.len(),
    ) {
        tracing::debug!(
            fault = step.kind.name(),
            ?new,
            ?broken,
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
    let mut fault = nemesis::start_on(
        cluster,
        recorder,
        step.kind,
        step.target.clone(),
        nodes,
        quiet,
    )
    .await?;
    let busy = broken.all();
    let stacked = !new.is_disjoint(&busy);
    fault.set_stacked(stacked);
    tracing::info!(fault = step.kind.name(), breaks = ?new, ?busy, stacked, active = active.len(), "overlapping fault started");
    Ok(Attempt::Started(Box::new(fault), new))
}
