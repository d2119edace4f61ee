//! The nemesis: starts and heals one fault at a time on a `FaultCluster` (kill -9 and restart,
//! SIGSTOP/SIGCONT, power loss, EIO on fsync, a full disk and a slow one through faultfs,
//! network partitions through nftables, a clock at twice the rate through libfaketime) and
//! logs each with its start and end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_client::VolumeClient;
use cairn_faultfs::Op as DiskOp;
use cairn_storaged::tls::Identity;
use serde::{Deserialize, Serialize};

use crate::clock;
use crate::cluster::FaultCluster;
use crate::error::Error;
use crate::history::Recorder;
use crate::partition::{self, Shape};

/// A kind of fault, named as `--faults` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// `kill -9` of a node's storaged; healed by a restart.
    Kill,
    /// SIGSTOP of a node's storaged; healed by SIGCONT.
    Pause,
    /// A node's storaged killed and every byte its disk did not make durable dropped; healed
    /// by a restart.
    Powerloss,
    /// The same on every node at once.
    PowerlossAll,
    /// Every fsync on a node's disk fails with EIO. Healed by a power loss of that node (what
    /// the failed fsyncs did not make durable is gone), clearing the fault and a restart.
    Eio,
    /// A node's disk is full: every write to it fails with ENOSPC. Healed by freeing the
    /// space, then a restart of that node's storaged (a write error stops a group's Raft
    /// core for good, as openraft treats any storage error; the restart is what the
    /// liveness probe does in a cluster).
    DiskFull,
    /// Every fsync on a node's disk takes `SLOW_FSYNC` longer. Healed by clearing the delay.
    SlowDisk,
    /// A node cut from every other, both ways (clients on the host still reach it). Healed,
    /// like every partition, by deleting its own nftables table.
    PartitionIsolate,
    /// A minority (the target and the next nodes by id, ⌊(n−1)/2⌋ in all, the target's group
    /// mates last) cut from the rest.
    PartitionSplit,
    /// The target sees every node; the others, in two halves, do not see the other half.
    PartitionBridge,
    /// The target's packets to the next node by id dropped, that node's to it delivered.
    PartitionOneWay,
    /// A node's storaged restarted with its clocks (monotonic included) running `clock::FAST`
    /// times real time; on a volume's leader with no other fault active, that node is then
    /// made the volume's leader (see `lead_from`). Healed by a restart at real time.
    Clock,
    /// A node's storaged restarted with its clocks running `clock::SLOW` times real time (its
    /// timers, leases included, run late: the lease margin of decision 054 is what keeps
    /// reads safe if it leads). No leadership is handed to it: a slow node loses elections.
    /// Healed by a restart at real time.
    ClockSlow,
    /// A node's storaged killed and its data dir wiped, for good: the cluster must rebuild its
    /// replicas on the other nodes (`--replica-down-timeout`). The heal leaves it removed;
    /// later faults skip it. Needs a node beyond the replicas (4 or more).
    NodeLoss,
}

/// The delay a `slow-disk` fault adds to every fsync.
pub const SLOW_FSYNC: Duration = Duration::from_millis(200);

impl FaultKind {
    pub const ALL: [FaultKind; 14] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Powerloss,
        FaultKind::PowerlossAll,
        FaultKind::Eio,
        FaultKind::DiskFull,
        FaultKind::SlowDisk,
        FaultKind::PartitionIsolate,
        FaultKind::PartitionSplit,
        FaultKind::PartitionBridge,
        FaultKind::PartitionOneWay,
        FaultKind::Clock,
        FaultKind::ClockSlow,
        FaultKind::NodeLoss,
    ];

    /// What `--faults partition` stands for.
    pub const PARTITIONS: [FaultKind; 4] = [
        FaultKind::PartitionIsolate,
        FaultKind::PartitionSplit,
        FaultKind::PartitionBridge,
        FaultKind::PartitionOneWay,
    ];

    /// A comma-separated list of names; `partition` stands for every partition shape.
    pub fn parse_list(s: &str) -> Result<Vec<FaultKind>, Error> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            match name {
                "partition" => out.extend(FaultKind::PARTITIONS),
                other => out.push(other.parse()?),
            }
        }
        Ok(out)
    }

    /// The partition this kind makes, if it is one.
    pub fn shape(self) -> Option<Shape> {
        match self {
            FaultKind::PartitionIsolate => Some(Shape::Isolate),
            FaultKind::PartitionSplit => Some(Shape::Split),
            FaultKind::PartitionBridge => Some(Shape::Bridge),
            FaultKind::PartitionOneWay => Some(Shape::OneWay),
            _ => None,
        }
    }

    /// Whether the fault kills, stops or restarts its nodes' storaged (at its start or heal).
    pub fn stops_storaged(self) -> bool {
        !matches!(self, FaultKind::SlowDisk) && self.shape().is_none()
    }

    /// Whether the fault stands for the loss of the whole node (its power, its disk): on a
    /// real node that takes the kernel's mounts too, which the fs workload's mount on the host
    /// cannot model, so the node where it is attached is spared these. A storaged kill, pause
    /// or restart is not one: the frontend process carries the mount through it.
    pub fn takes_node_down(self) -> bool {
        matches!(
            self,
            FaultKind::Powerloss | FaultKind::PowerlossAll | FaultKind::Eio | FaultKind::NodeLoss
        )
    }

    /// The rate a clock fault runs its node's clocks at (`None`: not a clock fault).
    pub fn clock_rate(self) -> Option<f64> {
        match self {
            FaultKind::Clock => Some(clock::FAST),
            FaultKind::ClockSlow => Some(clock::SLOW),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Powerloss => "powerloss",
            FaultKind::PowerlossAll => "powerloss-all",
            FaultKind::Eio => "eio",
            FaultKind::DiskFull => "disk-full",
            FaultKind::SlowDisk => "slow-disk",
            FaultKind::PartitionIsolate => "partition-isolate",
            FaultKind::PartitionSplit => "partition-split",
            FaultKind::PartitionBridge => "partition-bridge",
            FaultKind::PartitionOneWay => "partition-one-way",
            FaultKind::Clock => "clock",
            FaultKind::ClockSlow => "clock-slow",
            FaultKind::NodeLoss => "node-loss",
        }
    }
}

impl std::str::FromStr for FaultKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                Error::Config(format!(
                    "faults: unknown fault {s:?} (known: {}, partition)",
                    names.join(", ")
                ))
            })
    }
}

/// Which node a fault hits, decided when it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "snake_case")]
pub enum Target {
    /// The node leading this volume's group when the fault starts.
    LeaderOf {
        volume: String,
    },
    Node {
        id: u64,
    },
    /// Every node.
    All,
}

/// One fault as it happened. Times are the history's clock (`Recorder::now`, nanoseconds).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub target: Target,
    pub nodes: Vec<u64>,
    pub start: u64,
    pub end: u64,
    /// Unsynced bytes a power loss dropped (`powerloss`, `powerloss-all`, `eio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_bytes: Option<u64>,
    /// Operations the disks answered EIO or ENOSPC during the fault (`eio`, `disk-full`): 0
    /// means it never fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors_injected: Option<u64>,
    /// Nodes whose storaged had exited on its own by the time the fault was healed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exited: Vec<u64>,
    /// The directed node pairs `[from, to]` whose packets a partition dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cut: Vec<[u64; 2]>,
    /// Packets dropped on each pair of `cut`, in its order, counted until the heal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_packets: Vec<u64>,
    /// The nodes a partition left without a majority.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub minority: Vec<u64>,
    /// During a partition with a minority, the leader the majority side named for each volume
    /// most of whose replicas are on that side (0: none there within `MAJORITY_LEADER_WAIT`).
    /// A volume with most replicas in the minority keeps its quorum there and is not listed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub majority_leaders: BTreeMap<String, u64>,
    /// CPU seconds each node's storaged used during the fault (nodes whose process ran
    /// throughout).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cpu_s: BTreeMap<u64, f64>,
    /// The seconds over which `cpu_s` was counted (from the fault in place to its heal).
    #[serde(default)]
    pub cpu_over_s: f64,
    /// `clock`: the rate its nodes' clocks ran at, and whether each process was seen, at the
    /// heal, with libfaketime's variables in its environment and its library mapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_faked: Option<bool>,
    /// `clock` on a volume's leader: the leaders paused (SIGSTOP, then SIGCONT) to hand that
    /// volume's leadership to the skewed node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nudged: Vec<u64>,
    /// `clock`: the volumes the skewed node led when the fault was healed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub led: Vec<String>,
    /// Seconds from the heal until the cluster was whole again (for `node-loss`: until every
    /// replica on the lost node was rebuilt elsewhere).
    #[serde(default)]
    pub whole_after_s: f64,
    /// `node-loss`: each volume's members once the cluster was whole again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members_after: BTreeMap<String, Vec<u64>>,
    /// With `--overlap`: how many other faults were active when this one started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub overlapping: usize,
    /// With `--overlap`: it started on nodes that other faults had broken already (inside a
    /// partition's cut, or around what was broken; `budget::admits`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stacked: bool,
    /// With `--overlap`: each node it left broken, from its heal (a clock fault: from each of
    /// its two restarts) until that node was proven caught up in every group it is a member
    /// of (`catchup`; `audit` checks the budget from these).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub catch_up: Vec<crate::catchup::CatchUp>,
    /// With `--overlap`: healed because the run's time was up (recorder ns when it was), not
    /// on the schedule; from then on everything heals at once, beyond the budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healed_at_end: Option<u64>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl FaultRecord {
    /// A fault of `kind` on `nodes` that started (and so far ended) at `start`.
    pub fn new(kind: FaultKind, target: Target, nodes: Vec<u64>, start: u64) -> FaultRecord {
        FaultRecord {
            kind,
            target,
            nodes,
            start,
            end: start,
            dropped_bytes: None,
            errors_injected: None,
            exited: Vec::new(),
            cut: Vec::new(),
            dropped_packets: Vec::new(),
            minority: Vec::new(),
            majority_leaders: BTreeMap::new(),
            cpu_s: BTreeMap::new(),
            cpu_over_s: 0.0,
            clock_rate: None,
            clock_faked: None,
            nudged: Vec::new(),
            led: Vec::new(),
            whole_after_s: 0.0,
            members_after: BTreeMap::new(),
            overlapping: 0,
            stacked: false,
            catch_up: Vec::new(),
            healed_at_end: None,
        }
    }
}

/// A fault started and not yet healed.
#[derive(Debug)]
pub struct ActiveFault {
    record: FaultRecord,
    /// Each running node's (pid, CPU used) once the fault was in place, and when that was.
    cpu_at_start: BTreeMap<u64, (u32, Duration)>,
    cpu_since: Instant,
    /// A partition's watch of its majority side (`watch`): volume → the leader it named.
    majority: Option<tokio::task::JoinHandle<BTreeMap<String, u64>>>,
    /// A partition's own nftables table (`ChaosNet::partition_table`).
    table: Option<String>,
}

impl ActiveFault {
    pub fn record(&self) -> &FaultRecord {
        &self.record
    }

    /// Whether what `watch` waits for is settled: a heal before that would not show whether
    /// the partition took effect.
    pub fn observed(&self) -> bool {
        self.majority.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Notes how many other faults were active when this one started.
    pub fn set_overlapping(&mut self, n: usize) {
        self.record.overlapping = n;
    }

    /// Notes that it started on nodes other faults had broken already.
    pub fn set_stacked(&mut self, stacked: bool) {
        self.record.stacked = stacked;
    }
}

/// How long the nemesis waits for a volume's leader when a fault targets it.
const LEADER_WAIT: Duration = Duration::from_secs(20);
/// How long a partition's majority side may take to have (or elect) a leader of its own.
pub const MAJORITY_LEADER_WAIT: Duration = Duration::from_secs(15);
/// How long a `clock` fault may take to make its skewed node a volume's leader.
const LEAD_WAIT: Duration = Duration::from_secs(20);
/// How long a leader paused to hand over leadership stays paused at most.
const NUDGE_HOLD: Duration = Duration::from_secs(4);

/// The node ids `target` stands for now (a volume's leader is asked for).
pub async fn resolve(cluster: &FaultCluster, target: &Target) -> Result<Vec<u64>, Error> {
    resolve_within(cluster, target, LEADER_WAIT).await
}

/// `resolve`, waiting at most `wait` for a volume's leader.
pub async fn resolve_within(
    cluster: &FaultCluster,
    target: &Target,
    wait: Duration,
) -> Result<Vec<u64>, Error> {
    Ok(match target {
        Target::LeaderOf { volume } => vec![
            cluster
                .procs
                .volume_leader(volume, wait)
                .await
                .map_err(Error::Cluster)?,
        ],
        Target::Node { id } => vec![*id],
        Target::All => cluster.live_ids(),
    })
}

/// The other members of the group whose leader `target` names (`leader`, resolved), read
/// from `members`; empty when the target is a node or all of them.
pub fn fellows(target: &Target, leader: u64, members: &BTreeMap<String, Vec<u64>>) -> Vec<u64> {
    match target {
        Target::LeaderOf { volume } => members
            .get(volume)
            .map(|m| m.iter().copied().filter(|&id| id != leader).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Starts `kind` on `target` (resolved to node ids now) and returns the fault to heal.
pub async fn start(
    cluster: &mut FaultCluster,
    recorder: &Recorder,
    kind: FaultKind,
    target: Target,
) -> Result<ActiveFault, Error> {
    let nodes = resolve(cluster, &target).await?;
    start_on(cluster, recorder, kind, target, nodes, true).await
}

/// Starts `kind` on `nodes`, which `target` resolved to, and returns the fault to heal.
/// `alone`: no other fault is active, so a `clock` fault on a leader may pause other leaders
/// to hand it leadership (`lead_from`); beside other faults that could break a majority.
pub async fn start_on(
    cluster: &mut FaultCluster,
    recorder: &Recorder,
    kind: FaultKind,
    target: Target,
    nodes: Vec<u64>,
    alone: bool,
) -> Result<ActiveFault, Error> {
    let start = recorder.now();
    let mut dropped_bytes = None;
    let (mut clock_rate, mut nudged) = (None, Vec::new());
    let mut cut = partition::Cut {
        pairs: Vec::new(),
        minority: Vec::new(),
    };
    let mut table = None;
    match kind {
        FaultKind::Kill => nodes.iter().for_each(|&id| cluster.procs.kill9(id)),
        FaultKind::Pause => nodes.iter().for_each(|&id| cluster.procs.pause(id, true)),
        FaultKind::Powerloss | FaultKind::PowerlossAll => {
            dropped_bytes = Some(powerloss(cluster, &nodes));
        }
        FaultKind::Eio => nodes
            .iter()
            .for_each(|&id| cluster.disk(id).eio(DiskOp::Fsync, None)),
        FaultKind::DiskFull => nodes.iter().for_each(|&id| cluster.disk(id).enospc(0)),
        FaultKind::SlowDisk => nodes
            .iter()
            .for_each(|&id| cluster.disk(id).fsync_delay(SLOW_FSYNC)),
        FaultKind::PartitionIsolate
        | FaultKind::PartitionSplit
        | FaultKind::PartitionBridge
        | FaultKind::PartitionOneWay => {
            let shape = kind.shape().expect("a partition kind");
            // Only a split chooses its minority by the target's group.
            let members = match (&target, kind) {
                (Target::LeaderOf { volume }, FaultKind::PartitionSplit) => {
                    cluster.members(std::slice::from_ref(volume)).await
                }
                _ => BTreeMap::new(),
            };
            let mates = fellows(&target, nodes[0], &members);
            cut = partition::cut(shape, nodes[0], &cluster.node_ids(), &mates);
            let net = &cluster.net;
            let link = |id: u64| net.host_link(id).unwrap_or_default().to_string();
            let own = net.partition_table();
            partition::apply(&partition::rules(&own, &cut.pairs, link))?;
            table = Some(own);
        }
        FaultKind::Clock | FaultKind::ClockSlow => {
            let rate = kind.clock_rate().expect("a clock kind");
            let env = clock::env(rate)?;
            for &id in &nodes {
                restart_with(cluster, id, Some(env.clone()))?;
            }
            clock_rate = Some(rate);
            if let (FaultKind::Clock, Target::LeaderOf { volume }, true) = (kind, &target, alone) {
                nudged = lead_from(cluster, volume, nodes[0]).await;
            }
        }
        FaultKind::NodeLoss => {
            for &id in &nodes {
                cluster.procs.kill9(id);
                let data = cluster.procs.nodes[cluster.procs.index_of(id)]
                    .data_dir
                    .clone();
                wipe(&data)?;
                cluster.lost.insert(id);
            }
        }
    }
    let cpu_at_start = cpu_of(cluster);
    tracing::info!(fault = kind.name(), ?nodes, ?dropped_bytes, cut = ?cut.pairs, "fault started");
    Ok(ActiveFault {
        cpu_at_start,
        cpu_since: Instant::now(),
        majority: None,
        table,
        record: FaultRecord {
            dropped_bytes,
            clock_rate,
            nudged,
            cut: cut.pairs.iter().map(|&(a, b)| [a, b]).collect(),
            minority: cut.minority,
            ..FaultRecord::new(kind, target, nodes, start)
        },
    })
}

/// Makes `node` (just restarted) the leader of `volume`'s group: once its replicas are caught
/// up, pauses the group's leader until another leads (a node whose clock runs fast times
/// out first, so it usually wins), then resumes it; again until `node` leads or `LEAD_WAIT`
/// has passed. Returns the leaders it paused.
async fn lead_from(cluster: &FaultCluster, volume: &str, node: u64) -> Vec<u64> {
    let deadline = Instant::now() + LEAD_WAIT;
    let mut paused = Vec::new();
    if let Err(e) = cluster
        .procs
        .wait_replicas_healthy(&[volume], LEAD_WAIT)
        .await
    {
        tracing::warn!(volume, node, error = %e, "clock: the skewed node did not catch up");
        return paused;
    }
    let client = cluster.procs.client().with_deadline(Duration::from_secs(1));
    let leader = async |client: &VolumeClient| {
        client
            .get_volume(volume)
            .await
            .map_or(0, |v| v.leader_node_id)
    };
    while Instant::now() < deadline {
        let now = leader(&client).await;
        if now == node {
            tracing::info!(volume, node, ?paused, "clock: the skewed node leads");
            return paused;
        }
        if now != 0 {
            cluster.procs.pause(now, true);
            paused.push(now);
            let until = Instant::now() + NUDGE_HOLD;
            loop {
                let l = leader(&client).await;
                if (l != 0 && l != now) || Instant::now() >= until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            cluster.procs.pause(now, false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::warn!(
        volume,
        node,
        ?paused,
        "clock: the skewed node did not become the leader"
    );
    paused
}

/// Whether `kind` on `target` can start now: a node lost for good takes no further fault, a
/// node loss must leave at least `REPLICAS` nodes to rebuild on, and a protected node (where
/// the fs workload's volume is attached) takes no fault that takes the whole node down.
pub fn possible(cluster: &FaultCluster, kind: FaultKind, target: &Target) -> bool {
    if let Target::Node { id } = target
        && (cluster.lost.contains(id) || !spares(cluster, kind, &[*id]))
    {
        return false;
    }
    kind != FaultKind::NodeLoss || cluster.live_ids().len() > REPLICAS
}

/// Whether `kind` on `nodes` leaves every protected node up (its storaged may stop).
pub fn spares(cluster: &FaultCluster, kind: FaultKind, nodes: &[u64]) -> bool {
    !kind.takes_node_down() || !nodes.iter().any(|id| cluster.protected.contains(id))
}

/// Replicas of each chaos volume.
pub const REPLICAS: usize = 3;

/// Removes everything in a node's data dir, as a lost disk would.
fn wipe(dir: &std::path::Path) -> Result<(), Error> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        match path.is_dir() {
            true => std::fs::remove_dir_all(&path)?,
            false => std::fs::remove_file(&path)?,
        }
    }
    Ok(())
}

/// Each running node's pid and the CPU its storaged has used.
fn cpu_of(cluster: &FaultCluster) -> BTreeMap<u64, (u32, Duration)> {
    cluster
        .node_ids()
        .into_iter()
        .filter_map(|id| {
            let pid = cluster.procs.pid(id)?;
            Some((id, (pid, crate::cpu::used(pid)?)))
        })
        .collect()
}

/// Records what a fault did to leadership, before its heal: for a clock fault, the volumes its
/// node leads now; for a partition, what `watch` saw (waiting for it to settle).
pub async fn observe(cluster: &FaultCluster, fault: &mut ActiveFault, volumes: &[String]) {
    if fault.record.kind.clock_rate().is_some() {
        let client = cluster.procs.client().with_deadline(Duration::from_secs(2));
        let leaders = futures::future::join_all(volumes.iter().map(|v| client.get_volume(v))).await;
        for (volume, v) in volumes.iter().zip(leaders) {
            if v.is_ok_and(|v| fault.record.nodes.contains(&v.leader_node_id)) {
                fault.record.led.push(volume.clone());
            }
        }
        return;
    }
    if let Some(watch) = fault.majority.take() {
        fault.record.majority_leaders = watch.await.unwrap_or_default();
    }
}

/// For a partition that cuts off a minority: watches in the background, for each of `volumes`
/// with most replicas outside the minority, until the majority side, asked alone, names a
/// leader outside the minority (up to `MAJORITY_LEADER_WAIT`), and keeps what it named for
/// `observe`. The run goes on meanwhile; `ActiveFault::observed` says when it is settled.
pub fn watch(cluster: &FaultCluster, fault: &mut ActiveFault, volumes: &[String]) {
    let minority = fault.record.minority.clone();
    if minority.is_empty() {
        return;
    }
    let majority: Vec<String> = cluster
        .procs
        .nodes
        .iter()
        .filter(|n| !minority.contains(&n.id))
        .map(|n| n.addr.clone())
        .collect();
    let Ok(client) = VolumeClient::new(majority, cluster.procs.security_for(&Identity::Admin))
    else {
        return;
    };
    let client = client.with_deadline(Duration::from_secs(2));
    let volumes = volumes.to_vec();
    fault.majority = Some(tokio::spawn(async move {
        let deadline = Instant::now() + MAJORITY_LEADER_WAIT;
        let seen = futures::future::join_all(
            volumes
                .iter()
                .map(|volume| majority_leader(&client, volume, &minority, deadline)),
        )
        .await;
        seen.into_iter().flatten().collect()
    }));
}

/// The leader `client` (the majority side) names for `volume` once it is outside `minority`,
/// or whatever it named last at `deadline`; `None` if most of the volume's replicas are in the
/// minority.
async fn majority_leader(
    client: &VolumeClient,
    volume: &str,
    minority: &[u64],
    deadline: Instant,
) -> Option<(String, u64)> {
    let mut seen = 0;
    loop {
        if let Ok(v) = client.get_volume(volume).await {
            let outside = v
                .members
                .iter()
                .filter(|m| !minority.contains(&m.node_id))
                .count();
            if outside * 2 <= v.members.len() {
                return None;
            }
            seen = v.leader_node_id;
        }
        if (seen != 0 && !minority.contains(&seen)) || Instant::now() >= deadline {
            tracing::info!(
                volume,
                leader = seen,
                ?minority,
                "leader seen by the majority side"
            );
            return Some((volume.to_string(), seen));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Heals `fault`: the nodes it stopped run again, with their disks fault-free.
pub fn heal(
    cluster: &mut FaultCluster,
    recorder: &Recorder,
    fault: ActiveFault,
) -> Result<FaultRecord, Error> {
    let mut record = fault.record;
    let table = fault.table;
    let kind = record.kind;
    let now = cpu_of(cluster);
    record.cpu_over_s = fault.cpu_since.elapsed().as_secs_f64();
    record.cpu_s = fault
        .cpu_at_start
        .iter()
        .filter_map(|(id, (pid, before))| {
            let (pid_now, after) = now.get(id)?;
            (pid_now == pid).then(|| (*id, after.saturating_sub(*before).as_secs_f64()))
        })
        .collect();
    record.exited = record
        .nodes
        .iter()
        .copied()
        .filter(|&id| {
            matches!(
                kind,
                FaultKind::Pause
                    | FaultKind::Eio
                    | FaultKind::DiskFull
                    | FaultKind::SlowDisk
                    | FaultKind::Clock
                    | FaultKind::ClockSlow
            ) && !cluster.procs.is_alive(id)
        })
        .collect();
    match record.kind {
        FaultKind::Pause => record
            .nodes
            .iter()
            .for_each(|&id| cluster.procs.pause(id, false)),
        FaultKind::Kill | FaultKind::Powerloss | FaultKind::PowerlossAll => {
            restart(cluster, &record.nodes)?
        }
        FaultKind::Eio => {
            record.errors_injected = Some(errors_injected(cluster, &record.nodes));
            record.dropped_bytes = Some(powerloss(cluster, &record.nodes));
            record.nodes.iter().for_each(|&id| cluster.disk(id).clear());
            restart(cluster, &record.nodes)?;
        }
        FaultKind::DiskFull => {
            record.errors_injected = Some(errors_injected(cluster, &record.nodes));
            record.nodes.iter().for_each(|&id| cluster.disk(id).clear());
            restart(cluster, &record.nodes)?;
        }
        FaultKind::SlowDisk => record.nodes.iter().for_each(|&id| cluster.disk(id).clear()),
        FaultKind::Clock | FaultKind::ClockSlow => {
            let rate = record
                .clock_rate
                .or(kind.clock_rate())
                .unwrap_or(clock::FAST);
            let env = clock::env(rate)?;
            record.clock_faked = Some(record.nodes.iter().all(|&id| {
                cluster
                    .procs
                    .pid(id)
                    .is_some_and(|pid| clock::has_env(pid, &env) && clock::preloaded(pid))
            }));
            for &id in &record.nodes {
                restart_with(cluster, id, Some(Vec::new()))?;
            }
        }
        // The node stays lost; the cluster's rebuild is what `run` waits for next.
        FaultKind::NodeLoss => {}
        FaultKind::PartitionIsolate
        | FaultKind::PartitionSplit
        | FaultKind::PartitionBridge
        | FaultKind::PartitionOneWay => {
            let table = table.unwrap_or_else(|| cluster.net.table());
            // The heal goes on without the counters rather than leave the partition in place.
            let counters = partition::dropped(&table).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "partition counters unreadable");
                BTreeMap::new()
            });
            record.dropped_packets = record
                .cut
                .iter()
                .map(|[a, b]| counters.get(&(*a, *b)).copied().unwrap_or(0))
                .collect();
            partition::heal(&table)?;
        }
    }
    record.end = recorder.now();
    tracing::info!(fault = record.kind.name(), nodes = ?record.nodes, exited = ?record.exited, "fault healed");
    Ok(record)
}

/// The EIO and ENOSPC answers the nodes' disks gave since their faults were last cleared.
fn errors_injected(cluster: &FaultCluster, nodes: &[u64]) -> u64 {
    nodes
        .iter()
        .map(|&id| cluster.disk(id).errors_injected())
        .sum()
}

/// Kills the nodes' storaged (reaped, so nothing more reaches their disks), then drops every
/// byte their disks did not make durable; returns the bytes dropped.
fn powerloss(cluster: &mut FaultCluster, nodes: &[u64]) -> u64 {
    nodes.iter().for_each(|&id| cluster.procs.kill9(id));
    nodes
        .iter()
        .map(|&id| {
            let report = cluster.disk(id).powerloss();
            tracing::info!(
                node = id,
                files = report.files,
                bytes = report.bytes,
                undone = report.undone,
                "power loss"
            );
            report.bytes
        })
        .sum()
}

fn restart(cluster: &mut FaultCluster, nodes: &[u64]) -> Result<(), Error> {
    for &id in nodes {
        restart_with(cluster, id, None)?;
    }
    Ok(())
}

/// Restarts node `id` (`kill -9` first), with `env` as its environment from now on if given;
/// the error names the node.
fn restart_with(
    cluster: &mut FaultCluster,
    id: u64,
    env: Option<Vec<(String, String)>>,
) -> Result<(), Error> {
    match env {
        Some(env) => cluster.procs.restart_with_env(id, env),
        None => cluster.procs.restart(id),
    }
    .map_err(|e| Error::Cluster(format!("restart node {id}: {e}")))
}
