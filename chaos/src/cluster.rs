//! A storaged cluster whose nodes keep their data on fault filesystems and run in network
//! namespaces of their own: a faultfs mount and a namespace per node, all removed on drop.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_faultfs::{Controller, FaultMount};
use cairn_storaged::testkit::ProcCluster;

use crate::error::Error;
use crate::net::ChaosNet;

/// The processes, then the mounts, the network and the directory: dropped in that order.
pub struct FaultCluster {
    pub procs: ProcCluster,
    mounts: Vec<FaultMount>,
    pub net: ChaosNet,
    dir: WorkDir,
    /// Nodes lost for good (`node-loss`): killed, their data wiped, never restarted.
    pub lost: BTreeSet<u64>,
    /// Nodes whose storaged no fault may stop (the fs workload's volume is attached there).
    pub protected: BTreeSet<u64>,
}

/// A directory made for one run and removed with everything in it on drop.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "could not remove the chaos work dir");
        }
    }
}

impl FaultCluster {
    /// Makes run `name`'s network (see `ChaosNet::create`), mounts a fault filesystem per node
    /// under a new directory in `parent` and starts `nodes` storaged processes (`bin`), each in
    /// its namespace with its data dir on its mount, with `extra_args`. Needs root, /dev/fuse
    /// and iproute2.
    pub fn start(
        name: &str,
        parent: &Path,
        bin: &Path,
        nodes: usize,
        extra_args: &[&str],
    ) -> Result<FaultCluster, Error> {
        let net = ChaosNet::create(name, nodes)?;
        let dir = WorkDir(parent.join(format!("cairn-chaos-{}-{}", std::process::id(), unique())));
        let mut mounts = Vec::with_capacity(nodes);
        let mut data_dirs = Vec::with_capacity(nodes);
        for id in 1..=nodes {
            let (backing, data) = (
                dir.0.join(format!("node-{id}/backing")),
                dir.0.join(format!("node-{id}/data")),
            );
            std::fs::create_dir_all(&backing)?;
            std::fs::create_dir_all(&data)?;
            mounts.push(FaultMount::mount(&backing, &data)?);
            data_dirs.push(data);
        }
        let procs = ProcCluster::start_placed(bin, &data_dirs, &net.placements(), extra_args)?;
        Ok(FaultCluster {
            procs,
            mounts,
            net,
            dir,
            lost: BTreeSet::new(),
            protected: BTreeSet::new(),
        })
    }

    /// The fault filesystem under node `id`'s data dir.
    pub fn disk(&self, id: u64) -> &Controller {
        &self.mounts[self.procs.index_of(id)]
    }

    pub fn node_ids(&self) -> Vec<u64> {
        self.procs.nodes.iter().map(|n| n.id).collect()
    }

    /// The nodes not lost for good.
    pub fn live_ids(&self) -> Vec<u64> {
        self.node_ids()
            .into_iter()
            .filter(|id| !self.lost.contains(id))
            .collect()
    }

    /// Where the run keeps its mounts and backing directories.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Waits until a meta leader answers with every node registered, no replica of `volumes`
    /// is on a lost node (the cluster rebuilt them elsewhere), and every replica is a
    /// caught-up member.
    pub async fn wait_healthy(&self, volumes: &[String], within: Duration) -> Result<(), Error> {
        let started = std::time::Instant::now();
        self.procs
            .wait_ready(within)
            .await
            .map_err(Error::Cluster)?;
        self.wait_off_lost(volumes, within.saturating_sub(started.elapsed()))
            .await?;
        let names: Vec<&str> = volumes.iter().map(String::as_str).collect();
        self.procs
            .wait_replicas_healthy(&names, within.saturating_sub(started.elapsed()))
            .await
            .map_err(Error::Cluster)
    }

    /// Waits until no member of `volumes` is on a lost node.
    async fn wait_off_lost(&self, volumes: &[String], within: Duration) -> Result<(), Error> {
        if self.lost.is_empty() {
            return Ok(());
        }
        let client = self.procs.client();
        let deadline = std::time::Instant::now() + within;
        let mut last = String::new();
        'poll: while std::time::Instant::now() < deadline {
            for volume in volumes {
                let waiting = match client.get_volume(volume).await {
                    Ok(v) => {
                        let members: Vec<u64> = v.members.iter().map(|m| m.node_id).collect();
                        last = format!("{volume}: members {members:?}, lost {:?}", self.lost);
                        members.iter().any(|id| self.lost.contains(id))
                    }
                    Err(e) => {
                        last = format!("{volume}: {}", e.message());
                        true
                    }
                };
                if waiting {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'poll;
                }
            }
            return Ok(());
        }
        Err(Error::Cluster(format!(
            "replicas not rebuilt off lost nodes within {within:?}: {last}"
        )))
    }

    /// The members of each of `volumes` (empty where it could not be read).
    pub async fn members(
        &self,
        volumes: &[String],
    ) -> std::collections::BTreeMap<String, Vec<u64>> {
        let client = self.procs.client();
        let mut out = std::collections::BTreeMap::new();
        for volume in volumes {
            let ids = client
                .get_volume(volume)
                .await
                .map(|v| v.members.iter().map(|m| m.node_id).collect())
                .unwrap_or_default();
            out.insert(volume.clone(), ids);
        }
        out
    }

    /// The last `lines` lines of every node's log, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        self.procs
            .nodes
            .iter()
            .map(|n| {
                let log = self.procs.log_of(n.id);
                let all: Vec<&str> = log.lines().collect();
                let tail = &all[all.len().saturating_sub(lines)..];
                format!("--- node {}\n{}\n", n.id, tail.join("\n"))
            })
            .collect()
    }
}

/// A number that differs between the runs of one process.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
