//! A storaged cluster whose nodes keep their data on fault filesystems and run in network
//! namespaces of their own: a faultfs mount and a namespace per node, all removed on drop.

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
    /// its namespace with its data dir on its mount. Needs root, /dev/fuse and iproute2.
    pub fn start(
        name: &str,
        parent: &Path,
        bin: &Path,
        nodes: usize,
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
        let procs = ProcCluster::start_placed(bin, &data_dirs, &net.placements(), &[])?;
        Ok(FaultCluster {
            procs,
            mounts,
            net,
            dir,
        })
    }

    /// The fault filesystem under node `id`'s data dir.
    pub fn disk(&self, id: u64) -> &Controller {
        &self.mounts[self.procs.index_of(id)]
    }

    pub fn node_ids(&self) -> Vec<u64> {
        self.procs.nodes.iter().map(|n| n.id).collect()
    }

    /// Where the run keeps its mounts and backing directories.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Waits until a meta leader answers with every node registered, and every replica of
    /// `volumes` is a caught-up member.
    pub async fn wait_healthy(&self, volumes: &[String], within: Duration) -> Result<(), Error> {
        let started = std::time::Instant::now();
        self.procs
            .wait_ready(within)
            .await
            .map_err(Error::Cluster)?;
        let names: Vec<&str> = volumes.iter().map(String::as_str).collect();
        self.procs
            .wait_replicas_healthy(&names, within.saturating_sub(started.elapsed()))
            .await
            .map_err(Error::Cluster)
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
