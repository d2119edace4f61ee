//! One kubelet per simulated node: registers its Node, heartbeats a Lease,
//! and runs a worker per pod bound to it; reports volumesInUse.

pub mod csi;
mod env;
pub mod images;
pub mod plugins;
mod pod_status;
mod pod_worker;
pub mod probes;
pub mod runtime;
mod service_account;
mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::controllers::events::Recorder;
use crate::controllers::{Shutdown, run_loop};
use crate::registry::selectors::{FieldSelector, LabelSelector};
use crate::registry::{WriteOptions, now, now_micro};
use crate::resources;

#[derive(Debug, Clone)]
pub struct KubeletConfig {
    pub node: String,
    /// The kubelet root directory (`/var/lib/kubelet` on a real node).
    pub root: PathBuf,
    pub cpu: String,
    pub memory: String,
    pub pods: i64,
    pub labels: BTreeMap<String, String>,
    /// Extra CSI node plugin sockets besides those discovered under `<root>/plugins/*/csi.sock`.
    pub csi_sockets: Vec<PathBuf>,
    /// The node's address: `InternalIP`, and the hostIP and podIP of its (host-network) pods.
    pub address: IpAddr,
    /// The node's namespaces its pods run in (none: the host's).
    pub namespaces: Option<crate::node::Namespaces>,
    /// How pods reach the API server (`service_account`): its HTTPS address, CA, tokens.
    pub in_cluster: Option<crate::in_cluster::InCluster>,
    /// Which executables each image runs (`--image`).
    pub images: Arc<images::ImageMap>,
    /// How often the node's Lease in `kube-node-lease` is renewed (10 s upstream; shorter
    /// with a short `node-monitor-grace-period`, see `controllers::node_lifecycle`).
    pub lease_renew: Duration,
}

impl KubeletConfig {
    pub fn new(node: &str, root: PathBuf) -> Self {
        let mut labels = BTreeMap::new();
        labels.insert("kubernetes.io/hostname".into(), node.to_string());
        labels.insert("kubernetes.io/os".into(), "linux".into());
        labels.insert("kubernetes.io/arch".into(), "amd64".into());
        labels.insert("topology.cairn.dev/node".into(), node.to_string());
        KubeletConfig {
            node: node.into(),
            root,
            cpu: "4".into(),
            memory: "8Gi".into(),
            pods: 110,
            labels,
            csi_sockets: Vec::new(),
            address: IpAddr::from([127, 0, 0, 1]),
            namespaces: None,
            in_cluster: None,
            images: Arc::new(images::ImageMap::with_defaults()),
            lease_renew: Duration::from_secs(10),
        }
    }
}

struct Worker {
    tx: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct Kubelet {
    pub(crate) node: String,
    pub(crate) root: PathBuf,
    pub(crate) client: Client,
    pub(crate) events: Recorder,
    cfg: KubeletConfig,
    workers: Mutex<HashMap<String, Worker>>,
    /// CSI unique volume names staged on this node (node.status.volumesInUse).
    pub(crate) volumes_in_use: Mutex<BTreeSet<String>>,
    pub(crate) csi: csi::Plugins,
    stop: watch::Sender<bool>,
}

impl Kubelet {
    pub fn new(client: Client, cfg: KubeletConfig) -> Arc<Kubelet> {
        let events = Recorder::new(client.clone(), "kubelet", Some(&cfg.node));
        let (stop, _) = watch::channel(false);
        Arc::new(Kubelet {
            node: cfg.node.clone(),
            root: cfg.root.clone(),
            csi: csi::Plugins::new(cfg.root.clone(), cfg.csi_sockets.clone()),
            client,
            events,
            cfg,
            workers: Mutex::new(HashMap::new()),
            volumes_in_use: Mutex::new(BTreeSet::new()),
            stop,
        })
    }

    /// The node's address (hostIP, and podIP of its pods, which share the node's network).
    pub(crate) fn address(&self) -> String {
        self.cfg.address.to_string()
    }

    /// The node's namespaces, when it has its own.
    pub(crate) fn namespaces(&self) -> Option<crate::node::Namespaces> {
        self.cfg.namespaces.clone()
    }

    /// How pods on this node reach the API server.
    pub(crate) fn in_cluster(&self) -> Option<&crate::in_cluster::InCluster> {
        self.cfg.in_cluster.as_ref()
    }

    /// `path` (absolute, as seen in the node) as this process reaches it.
    pub(crate) fn node_path(&self, path: &str) -> PathBuf {
        let rel = path.trim_start_matches('/');
        match &self.cfg.namespaces {
            Some(n) => n.root().join(rel),
            None => PathBuf::from("/").join(rel),
        }
    }

    /// The kubelet root as the node (and so a CSI plugin running on it) sees it:
    /// `/var/lib/kubelet` on a harness node, else the root itself.
    pub(crate) fn csi_root(&self) -> PathBuf {
        match &self.cfg.namespaces {
            Some(_) => PathBuf::from("/var/lib/kubelet"),
            None => self.root.clone(),
        }
    }

    /// A path under `csi_root` as this process reaches it (under `root`).
    pub(crate) fn host_of(&self, node_path: &std::path::Path) -> PathBuf {
        match node_path.strip_prefix(self.csi_root()) {
            Ok(rest) => self.root.join(rest),
            Err(_) => node_path.to_path_buf(),
        }
    }

    /// A path under `root` as the node sees it (under `csi_root`).
    pub(crate) fn node_of(&self, host_path: &std::path::Path) -> PathBuf {
        match host_path.strip_prefix(&self.root) {
            Ok(rest) => self.csi_root().join(rest),
            Err(_) => host_path.to_path_buf(),
        }
    }

    /// Where a container's log lives.
    pub fn log_path(root: &std::path::Path, uid: &str, container: &str) -> PathBuf {
        root.join("pods")
            .join(uid)
            .join("logs")
            .join(format!("{container}.log"))
    }

    fn node_object(&self) -> Value {
        let cap = json!({"cpu": self.cfg.cpu, "memory": self.cfg.memory, "pods": self.cfg.pods.to_string(), "ephemeral-storage": "100Gi"});
        let ts = now();
        let cond = |t: &str, s: &str, r: &str, m: &str| json!({"type": t, "status": s, "reason": r, "message": m, "lastHeartbeatTime": ts, "lastTransitionTime": ts});
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.node, "labels": self.cfg.labels},
            "spec": {},
            "status": {
                "capacity": cap, "allocatable": cap,
                "conditions": [
                    cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                    cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                    cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                    cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
                ],
                "addresses": [{"type": "InternalIP", "address": self.cfg.address.to_string()}, {"type": "Hostname", "address": self.node}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "cairn-harness",
                    "containerRuntimeVersion": "cairn://0.1.0", "kubeletVersion": "v1.33.0-cairn", "kubeProxyVersion": "",
                    "operatingSystem": "linux", "architecture": "amd64"},
            }
        })
    }

    /// Creates or refreshes the Node object and its Lease.
    pub fn register(&self) -> crate::Result<()> {
        let reg = self.client.registry();
        let node = self.node_object();
        match reg.create(
            &resources::NODES,
            None,
            node.clone(),
            WriteOptions::default(),
        ) {
            Ok(_) => tracing::info!(node = %self.node, "node registered"),
            Err(e) if e.is_already_exists() => {
                let patch = json!({"metadata": {"labels": self.cfg.labels}});
                self.client
                    .patch_rt(&resources::NODES, None, &self.node, &patch)?;
                let status = json!({"status": node["status"]});
                reg.patch(
                    &resources::NODES,
                    None,
                    &self.node,
                    crate::registry::patch::PatchType::Merge,
                    &status,
                    crate::registry::Sub::Status,
                    WriteOptions::default(),
                )?;
            }
            Err(e) => return Err(e),
        }
        self.heartbeat();
        Ok(())
    }

    /// This kubelet's Node object as the API server holds it (None if it cannot be read).
    fn own_node(&self) -> Option<serde_json::Value> {
        self.client
            .registry()
            .get(&resources::NODES, None, &self.node)
            .ok()
    }

    /// Posts the node's status again when the API server's Ready condition is not the
    /// kubelet's (True): the node lifecycle controller set it Unknown while this kubelet's
    /// posts were late. Upstream's kubelet posts its status whenever it differs.
    fn repost_status_if_lost(&self) {
        let Some(node) = self.own_node() else {
            return;
        };
        let ready = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .and_then(|c| c["status"].as_str().map(String::from));
        if ready.as_deref() == Some("True") {
            return;
        }
        tracing::warn!(node = %self.node, ready = ?ready, "node status lost: posting it again");
        if let Err(e) = self.register() {
            tracing::warn!(node = %self.node, error = %e, "posting the node status failed");
        }
    }

    fn heartbeat(&self) {
        let reg = self.client.registry();
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.node, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": self.node, "leaseDurationSeconds": 40, "renewTime": now_micro()}});
        if let Err(e) = reg.create(
            &resources::LEASES,
            Some("kube-node-lease"),
            lease,
            WriteOptions::default(),
        ) && e.is_already_exists()
        {
            let patch = json!({"spec": {"renewTime": now_micro(), "holderIdentity": self.node}});
            let _ = self.client.patch_rt(
                &resources::LEASES,
                Some("kube-node-lease"),
                &self.node,
                &patch,
            );
        }
    }

    /// Runs until shutdown, then stops every container and unmounts every volume.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        if let Err(e) = self.register() {
            tracing::error!(node = %self.node, error = %e, "node registration failed");
        }
        let me = self.clone();
        let mut lease_shutdown = shutdown.clone();
        // The node lease and status have a loop of their own (upstream's node lease
        // controller and status loop), so that a slow CSI call never holds them back: the
        // node would be lost (Unknown, its pods marked not ready) while its kubelet runs.
        // Both loops are aborted with this task too (`crash`).
        let lease = AbortOnDrop(tokio::spawn(async move {
            let mut lease = tokio::time::interval(me.cfg.lease_renew);
            loop {
                tokio::select! {
                    _ = lease.tick() => {
                        me.heartbeat();
                        me.repost_status_if_lost();
                    }
                    _ = lease_shutdown.changed() => break,
                }
            }
        }));
        let me = self.clone();
        let mut hb_shutdown = shutdown.clone();
        let hb = AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            let mut expand = tokio::time::interval(Duration::from_secs(2));
            // The plugin watcher: upstream watches plugins_registry with inotify.
            let mut registry = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => me.csi.refresh(&me).await,
                    _ = registry.tick() => if me.csi.registrations.scan(&me.root, &me.node).await { me.csi.refresh(&me).await },
                    _ = expand.tick() => me.csi_expand_pending().await,
                    _ = hb_shutdown.changed() => break,
                }
            }
        }));
        let store = self.client.registry().store().clone();
        let interests = vec![
            resources::PODS,
            resources::PVCS,
            resources::PVS,
            resources::VOLUMEATTACHMENTS,
            resources::CONFIGMAPS,
            resources::SECRETS,
        ];
        let me = self.clone();
        run_loop(
            "kubelet",
            store,
            interests,
            Duration::from_secs(1),
            shutdown,
            move || me.sync(),
        )
        .await;
        drop((hb, lease));
        self.stop_all().await;
    }

    /// The kubelet dies with its node (a whole-node kill): every pod worker is aborted where
    /// it is, with no container stopped and no volume unmounted; the caller aborts `run`.
    pub fn crash(&self) {
        let workers: Vec<Worker> = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, w)| w)
            .collect();
        for w in &workers {
            w.task.abort();
        }
        tracing::warn!(node = %self.node, pods = workers.len(), "kubelet crashed");
    }

    fn my_pods(&self) -> Vec<Pod> {
        let fs = FieldSelector::parse(&format!("spec.nodeName={}", self.node)).unwrap_or_default();
        self.client
            .list_selected::<Pod>(None, &LabelSelector::default(), &fs)
    }

    /// Starts, updates and forgets pod workers to match the pods bound here.
    fn sync(self: &Arc<Self>) {
        let pods = self.my_pods();
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let live: BTreeSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        workers.retain(|uid, w| {
            if w.task.is_finished() {
                return false;
            }
            if !live.contains(uid) {
                let _ = w.tx.send(None);
            }
            true
        });
        for pod in pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if let Some(w) = workers.get(&uid) {
                w.tx.send_if_modified(|cur| {
                    let changed = cur.as_ref().map(|c| &c.metadata.resource_version)
                        != Some(&pod.metadata.resource_version);
                    if changed {
                        *cur = Some(pod.clone());
                    }
                    changed
                });
                continue;
            }
            let terminal = matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            if terminal && pod.metadata.deletion_timestamp.is_none() {
                continue;
            }
            let (tx, rx) = watch::channel(Some(pod.clone()));
            let task = tokio::spawn(pod_worker::run(self.clone(), rx, self.stop.subscribe()));
            workers.insert(uid, Worker { tx, task });
        }
        drop(workers);
        self.report_volumes_in_use();
    }

    fn report_volumes_in_use(&self) {
        let want: Vec<String> = self
            .volumes_in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let Some(node) = self.own_node() else {
            return;
        };
        let cur: Vec<String> = node["status"]["volumesInUse"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        if cur != want {
            let reg = self.client.registry();
            let patch = json!({"status": {"volumesInUse": want}});
            let _ = reg.patch(
                &resources::NODES,
                None,
                &self.node,
                crate::registry::patch::PatchType::Merge,
                &patch,
                crate::registry::Sub::Status,
                WriteOptions::default(),
            );
        }
    }

    async fn stop_all(&self) {
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, w)| w.task)
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        tracing::info!(node = %self.node, "kubelet stopped");
    }
}
