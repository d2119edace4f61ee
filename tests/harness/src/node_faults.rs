//! Whole-node faults on a running cluster, by node name: a kill takes the node's kubelet and
//! every process of the node down at once, a start brings both back; pause and resume freeze it.

use crate::cluster::{Cluster, KubeletRun};
use crate::error::{Error, Result};
use crate::node::Node;

impl Cluster {
    fn machine(&mut self, name: &str) -> Result<&mut Node> {
        self.machines
            .as_mut()
            .and_then(|m| m.get_mut(name))
            .ok_or_else(|| Error::BadRequest(format!("no harness node {name}")))
    }

    /// Whole-node kill, as a power cut: the node's kubelet dies where it is (no container
    /// stopped, no volume unmounted, no status posted) and every process of the node gets
    /// SIGKILL; mounts made in the node go with its mount namespace. Idempotent. Like the
    /// other fault calls it blocks its thread (bounded): it needs the multi-threaded runtime.
    pub async fn kill_node(&mut self, name: &str) -> Result<()> {
        self.machine(name)?;
        if let Some(k) = self.kubelets.iter_mut().find(|k| k.cfg.node == name) {
            k.crash().await;
        }
        let node = self.machine(name)?;
        tokio::task::block_in_place(|| node.kill());
        tracing::warn!(node = name, "node killed");
        Ok(())
    }

    /// Starts a killed node again: the same namespaces' paths, address and directories, and
    /// a new kubelet, which registers the node again and runs the pods bound to it (volumes
    /// staged and published again). A running node is an error.
    pub async fn start_node(&mut self, name: &str) -> Result<()> {
        let node = self.machine(name)?;
        if node.running() {
            return Err(Error::BadRequest(format!("node {name} is running")));
        }
        tokio::task::block_in_place(|| node.start())?;
        let client = self.client();
        let stop = self.stop.clone();
        if let Some(k) = self.kubelets.iter_mut().find(|k| k.cfg.node == name) {
            // One kubelet per node, even if the node was killed without its kubelet.
            k.crash().await;
            *k = KubeletRun::spawn(client, k.cfg.clone(), &stop);
        }
        tracing::info!(node = name, "node started again");
        Ok(())
    }

    /// Whole-node pause: every process of the node SIGSTOPped (see `Node::pause`). The
    /// kubelet, a task of this process, keeps running. How many processes are stopped.
    pub async fn pause_node(&mut self, name: &str) -> Result<usize> {
        let node = self.machine(name)?;
        tokio::task::block_in_place(|| node.pause())
    }

    /// Continues a paused node's processes; how many there were (0: it was not paused).
    pub async fn resume_node(&mut self, name: &str) -> Result<usize> {
        Ok(self.machine(name)?.resume())
    }
}

impl KubeletRun {
    /// Aborts the kubelet's task and its pod workers where they are (nothing cleaned up).
    async fn crash(&mut self) {
        if self.task.is_finished() {
            return;
        }
        self.task.abort();
        let _ = (&mut self.task).await;
        self.kubelet.crash();
    }
}
