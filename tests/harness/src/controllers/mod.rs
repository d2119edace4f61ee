//! The controllers (PV binder, workloads, attach/detach, garbage collector, node DNS)
//! and the level-triggered loop that drives each of them.

pub mod attach_detach;
pub mod daemonset;
pub mod deployment;
pub mod dns;
pub mod events;
pub mod gc;
pub mod job;
pub mod node_lifecycle;
pub mod pv_binder;
pub mod replicaset;
pub mod service_proxy;
pub mod serviceaccounts;
pub mod statefulset;
pub mod workload;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::client::Client;

use crate::resources::ResourceType;
use crate::store::Store;

/// Signals shutdown to every loop in the harness.
pub type Shutdown = watch::Receiver<bool>;

/// Runs `reconcile` now, after every change to one of `interests`, and every
/// `resync` (for time-based transitions such as grace periods), until shutdown.
pub async fn run_loop<F>(
    name: &'static str,
    store: Arc<Store>,
    interests: Vec<ResourceType>,
    resync: Duration,
    mut shutdown: Shutdown,
    mut reconcile: F,
) where
    F: FnMut() + Send,
{
    let qualified: Vec<String> = interests.iter().map(ResourceType::qualified).collect();
    let mut rx = store.subscribe();
    let mut tick = tokio::time::interval(resync);
    tracing::debug!(controller = name, "started");
    let mut due = true;
    loop {
        if due {
            reconcile();
        }
        due = true;
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {}
            msg = rx.recv() => {
                let mut relevant = match &msg {
                    Ok(c) => qualified.contains(&c.key.res),
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                // Coalesce a burst of changes into one pass.
                loop {
                    match rx.try_recv() {
                        Ok(c) => relevant |= qualified.contains(&c.key.res),
                        Err(broadcast::error::TryRecvError::Lagged(_)) => relevant = true,
                        Err(_) => break,
                    }
                }
                due = relevant;
            }
        }
        if *shutdown.borrow() {
            break;
        }
    }
    tracing::debug!(controller = name, "stopped");
}

/// Starts the DaemonSet, Deployment, ReplicaSet and Job controllers (kube-controller-manager's
/// workload controllers besides StatefulSet).
pub fn spawn_apps(
    client: &Client,
    store: &Arc<Store>,
    resync: Duration,
    shutdown: &Shutdown,
) -> Vec<JoinHandle<()>> {
    use crate::resources::{DAEMONSETS, DEPLOYMENTS, JOBS, NODES, PODS, REPLICASETS};
    let ds = daemonset::DaemonSetController::new(client.clone());
    let deploy = deployment::DeploymentController::new(client.clone());
    let rs = replicaset::ReplicaSetController::new(client.clone());
    let job = job::JobController::new(client.clone());
    vec![
        tokio::spawn(run_loop(
            "daemonset",
            store.clone(),
            vec![DAEMONSETS, PODS, NODES],
            resync,
            shutdown.clone(),
            move || ds.reconcile(),
        )),
        tokio::spawn(run_loop(
            "deployment",
            store.clone(),
            vec![DEPLOYMENTS, REPLICASETS, PODS],
            resync,
            shutdown.clone(),
            move || deploy.reconcile(),
        )),
        tokio::spawn(run_loop(
            "replicaset",
            store.clone(),
            vec![REPLICASETS, PODS],
            resync,
            shutdown.clone(),
            move || rs.reconcile(),
        )),
        tokio::spawn(run_loop(
            "job",
            store.clone(),
            vec![JOBS, PODS],
            resync,
            shutdown.clone(),
            move || job.reconcile(),
        )),
    ]
}
