//! The pods run's nemesis: faults on whole harness nodes (kill, pause, storaged kill, partition)
//! on a schedule drawn from a seed, applied and healed one at a time, and when a node is back.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::install::NAMESPACE;
use crate::resources;

/// A fault on one harness node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum NodeFault {
    /// The whole node (kubelet and every process) killed; healed by starting it again.
    NodeKill,
    /// Every process of the node SIGSTOPped; healed by SIGCONT.
    NodePause,
    /// `kill -9` of the node's storaged container; the kubelet restarts it (the heal is a wait).
    StoragedKill,
    /// The node's link to the bridge down: it reaches no node and no API server; healed by
    /// setting it up again.
    Partition,
}

impl NodeFault {
    pub const ALL: [NodeFault; 4] = [
        NodeFault::NodeKill,
        NodeFault::NodePause,
        NodeFault::StoragedKill,
        NodeFault::Partition,
    ];

    /// The name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            NodeFault::NodeKill => "node-kill",
            NodeFault::NodePause => "node-pause",
            NodeFault::StoragedKill => "storaged-kill",
            NodeFault::Partition => "partition",
        }
    }

    /// How long it is held: a storaged kill only waits for the kubelet's restart.
    fn hold_ms(self) -> std::ops::Range<u64> {
        match self {
            NodeFault::StoragedKill => 0..1,
            _ => 2_000..6_000,
        }
    }
}

/// One scheduled fault: after `gap` without faults, `kind` on node index `node` (0-based) for
/// `hold`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub gap: Duration,
    pub kind: NodeFault,
    pub node: usize,
    pub hold: Duration,
}

/// An endless stream of steps from a seed. The kinds come in rounds, each a seeded shuffle of
/// every enabled kind, so any `kinds.len()` consecutive rounds' steps cover each kind.
pub struct Schedule {
    rng: StdRng,
    kinds: Vec<NodeFault>,
    deck: Vec<NodeFault>,
    nodes: usize,
    gap_ms: std::ops::Range<u64>,
}

impl Schedule {
    pub fn new(seed: u64, kinds: &[NodeFault], nodes: usize) -> Schedule {
        let mut kinds = kinds.to_vec();
        kinds.sort_unstable();
        kinds.dedup();
        Schedule {
            rng: StdRng::seed_from_u64(seed),
            kinds,
            deck: Vec::new(),
            nodes: nodes.max(1),
            gap_ms: 2_000..5_000,
        }
    }
}

impl Iterator for Schedule {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        if self.deck.is_empty() {
            self.deck = self.kinds.clone();
            self.deck.shuffle(&mut self.rng);
        }
        let kind = self.deck.pop()?;
        let gap = Duration::from_millis(self.rng.random_range(self.gap_ms.clone()));
        let node = self.rng.random_range(0..self.nodes);
        let hold = Duration::from_millis(self.rng.random_range(kind.hold_ms()));
        Some(Step {
            gap,
            kind,
            node,
            hold,
        })
    }
}

/// The host end of `node`'s veth on the cluster bridge (`cb<net>h<k>`, as `node.rs` names it).
fn host_link(cluster: &Cluster, node: &str) -> Result<String> {
    let machines = cluster
        .machines
        .as_ref()
        .ok_or_else(|| Error::Internal("the cluster has no nodes".into()))?;
    let n = machines
        .get(node)
        .ok_or_else(|| Error::BadRequest(format!("no harness node {node}")))?;
    Ok(format!("cb{}h{}", machines.network.index, n.index))
}

/// The Cairn pods bound to `node` (as JSON).
fn cairn_pods(cluster: &Cluster, node: &str) -> Vec<Value> {
    cluster
        .client()
        .list_values(&resources::PODS)
        .into_iter()
        .filter(|p| p["metadata"]["namespace"] == NAMESPACE && p["spec"]["nodeName"] == node)
        .collect()
}

fn app(pod: &Value) -> &str {
    pod["metadata"]["labels"]["app.kubernetes.io/name"]
        .as_str()
        .unwrap_or("")
}

/// `kill -9` of the storaged container running on `node` (its process group); its pid.
fn kill_storaged(cluster: &Cluster, node: &str) -> Result<u32> {
    let pod = cairn_pods(cluster, node)
        .into_iter()
        .find(|p| app(p) == "cairn-storaged")
        .ok_or_else(|| Error::Internal(format!("no storaged pod on {node}")))?;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
    let running = crate::kubelet::runtime::running(uid, "storaged")
        .ok_or_else(|| Error::Internal(format!("storaged is not running on {node}")))?;
    crate::kubelet::runtime::signal(running.pid, nix::sys::signal::Signal::SIGKILL);
    Ok(running.pid)
}

/// Applies `kind` to `node`.
pub async fn inject(cluster: &mut Cluster, kind: NodeFault, node: &str) -> Result<()> {
    match kind {
        NodeFault::NodeKill => cluster.kill_node(node).await?,
        NodeFault::NodePause => {
            cluster.pause_node(node).await?;
        }
        NodeFault::StoragedKill => {
            let pid = kill_storaged(cluster, node)?;
            tracing::warn!(node, pid, "storaged killed");
        }
        NodeFault::Partition => {
            let link = host_link(cluster, node)?;
            cairn_netns::ip(&["link", "set", &link, "down"])?;
            tracing::warn!(node, %link, "node partitioned");
        }
    }
    Ok(())
}

/// Heals `kind` on `node` (a storaged kill needs nothing: the kubelet restarts it).
pub async fn heal(cluster: &mut Cluster, kind: NodeFault, node: &str) -> Result<()> {
    match kind {
        NodeFault::NodeKill => cluster.start_node(node).await?,
        NodeFault::NodePause => {
            cluster.resume_node(node).await?;
        }
        NodeFault::StoragedKill => {}
        NodeFault::Partition => {
            let link = host_link(cluster, node)?;
            cairn_netns::ip(&["link", "set", &link, "up"])?;
            tracing::info!(node, %link, "partition healed");
        }
    }
    Ok(())
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Whether every container of `pod` runs and started at `since` or later.
fn started_since(pod: &Value, since: chrono::DateTime<chrono::Utc>) -> bool {
    let statuses = pod["status"]["containerStatuses"].as_array();
    !statuses.is_none_or(|s| s.is_empty())
        && statuses.into_iter().flatten().all(|c| {
            c["state"]["running"]["startedAt"]
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .is_some_and(|t| t >= since)
        })
}

/// Whether `node` is back after `kind` was healed (its fault began at `since`, a time in whole
/// seconds): its Cairn pods Ready, and those the fault killed running new containers.
pub fn recovered(
    cluster: &Cluster,
    kind: NodeFault,
    node: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> bool {
    let pods = cairn_pods(cluster, node);
    let restarted = |p: &Value| match kind {
        NodeFault::NodeKill => started_since(p, since),
        NodeFault::StoragedKill if app(p) == "cairn-storaged" => started_since(p, since),
        _ => true,
    };
    pods.iter().any(|p| app(p) == "cairn-storaged") && pods.iter().all(|p| ready(p) && restarted(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_each_round_covers_every_kind() {
        let a: Vec<Step> = Schedule::new(7, &NodeFault::ALL, 3).take(12).collect();
        let b: Vec<Step> = Schedule::new(7, &NodeFault::ALL, 3).take(12).collect();
        assert_eq!(a, b);
        let c: Vec<Step> = Schedule::new(8, &NodeFault::ALL, 3).take(12).collect();
        assert_ne!(a, c, "another seed, another schedule");
        for round in a.chunks(4) {
            let mut kinds: Vec<NodeFault> = round.iter().map(|s| s.kind).collect();
            kinds.sort_unstable();
            assert_eq!(kinds, NodeFault::ALL);
        }
        assert!(a.iter().all(|s| s.node < 3));
        assert!(
            a.iter()
                .filter(|s| s.kind == NodeFault::StoragedKill)
                .all(|s| s.hold.is_zero())
        );
    }

    #[test]
    fn a_node_is_back_once_its_restarted_pods_are_ready() {
        let since = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:10Z")
            .unwrap()
            .to_utc();
        let pod = |started: &str, is_ready: &str| {
            serde_json::json!({"status": {
                "conditions": [{"type": "Ready", "status": is_ready}],
                "containerStatuses": [{"state": {"running": {"startedAt": started}}}]}})
        };
        assert!(started_since(&pod("2026-01-01T00:00:11Z", "True"), since));
        assert!(!started_since(&pod("2026-01-01T00:00:09Z", "True"), since));
        assert!(ready(&pod("2026-01-01T00:00:09Z", "True")));
        assert!(!ready(&pod("2026-01-01T00:00:11Z", "False")));
        assert!(!started_since(&serde_json::json!({"status": {}}), since));
    }
}
