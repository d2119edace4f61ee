//! The nemesis: starts and heals one fault at a time on a `FaultCluster` (kill -9 and restart,
//! SIGSTOP/SIGCONT, power loss, EIO on fsync, a full disk and a slow one through faultfs) and
//! logs each with its start and end.

use std::time::Duration;

use cairn_faultfs::Op as DiskOp;
use serde::{Deserialize, Serialize};

use crate::cluster::FaultCluster;
use crate::error::Error;
use crate::history::Recorder;

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
}

/// The delay a `slow-disk` fault adds to every fsync.
pub const SLOW_FSYNC: Duration = Duration::from_millis(200);

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Powerloss,
        FaultKind::PowerlossAll,
        FaultKind::Eio,
        FaultKind::DiskFull,
        FaultKind::SlowDisk,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Powerloss => "powerloss",
            FaultKind::PowerlossAll => "powerloss-all",
            FaultKind::Eio => "eio",
            FaultKind::DiskFull => "disk-full",
            FaultKind::SlowDisk => "slow-disk",
        }
    }
}

impl std::str::FromStr for FaultKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| Error::Config(format!("unknown fault {s:?}")))
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
}

/// A fault started and not yet healed.
#[derive(Debug)]
pub struct ActiveFault {
    record: FaultRecord,
}

impl ActiveFault {
    pub fn record(&self) -> &FaultRecord {
        &self.record
    }
}

/// How long the nemesis waits for a volume's leader when a fault targets it.
const LEADER_WAIT: Duration = Duration::from_secs(20);

/// Starts `kind` on `target` (resolved to node ids now) and returns the fault to heal.
pub async fn start(
    cluster: &mut FaultCluster,
    recorder: &Recorder,
    kind: FaultKind,
    target: Target,
) -> Result<ActiveFault, Error> {
    let nodes = match &target {
        Target::LeaderOf { volume } => vec![
            cluster
                .procs
                .volume_leader(volume, LEADER_WAIT)
                .await
                .map_err(Error::Cluster)?,
        ],
        Target::Node { id } => vec![*id],
        Target::All => cluster.node_ids(),
    };
    let start = recorder.now();
    let mut dropped_bytes = None;
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
    }
    tracing::info!(fault = kind.name(), ?nodes, ?dropped_bytes, "fault started");
    Ok(ActiveFault {
        record: FaultRecord {
            kind,
            target,
            nodes,
            start,
            end: start,
            dropped_bytes,
            errors_injected: None,
            exited: Vec::new(),
        },
    })
}

/// Heals `fault`: the nodes it stopped run again, with their disks fault-free.
pub fn heal(
    cluster: &mut FaultCluster,
    recorder: &Recorder,
    fault: ActiveFault,
) -> Result<FaultRecord, Error> {
    let mut record = fault.record;
    let kind = record.kind;
    record.exited = record
        .nodes
        .iter()
        .copied()
        .filter(|&id| {
            matches!(
                kind,
                FaultKind::Pause | FaultKind::Eio | FaultKind::DiskFull | FaultKind::SlowDisk
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
        cluster.procs.restart(id)?;
    }
    Ok(())
}
