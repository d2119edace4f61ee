//! Wiring: the store, API server, controllers, scheduler and kubelets of one
//! harness cluster, its kubeconfig, and an orderly shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::apiserver::{self, ApiServer, ApiServerConfig};
use crate::client::Client;
use crate::components::{self, CairnLayout, Components};
use crate::controllers::{self, attach_detach, gc, pv_binder, run_loop, statefulset};
use crate::error::{Error, Result};
use crate::in_cluster::{self, InCluster};
use crate::install;
use crate::kubelet::images::ImageMap;
use crate::kubelet::{Kubelet, KubeletConfig};
use crate::node::Nodes;
use crate::registry::{Registry, WriteOptions};
use crate::resources;
use crate::scheduler::Scheduler;
use crate::store::{DEFAULT_HISTORY, Store};

/// How `up --with-cairn` runs Cairn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CairnInstall {
    /// `kubectl apply -k manifests/` as a user would (`install`): Cairn runs as pods.
    Manifests,
    /// Processes the harness starts in the nodes itself (`components`), which tests stop
    /// and restart by name.
    Processes,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub data_dir: PathBuf,
    pub nodes: usize,
    pub listen: SocketAddr,
    pub history: usize,
    /// Install Cairn (see `cairn_install` for how).
    pub with_cairn: bool,
    /// How `with_cairn` installs Cairn.
    pub cairn_install: CairnInstall,
    /// Run only the API server (no controllers, scheduler or kubelets).
    pub api_only: bool,
    /// Which executables each image runs (`--image NAME=PATH`).
    pub images: Arc<ImageMap>,
    /// How long a kubelet may go without renewing its Lease before its node is marked
    /// NotReady (Unknown) and tainted (`node-monitor-grace-period`, 40 s upstream);
    /// kubelets renew every quarter of it, at most every 10 s.
    pub node_monitor_grace_period: Duration,
}

impl ClusterConfig {
    pub fn new(data_dir: impl Into<PathBuf>, nodes: usize) -> Self {
        ClusterConfig {
            data_dir: data_dir.into(),
            nodes,
            listen: "127.0.0.1:0".parse().expect("address"),
            history: DEFAULT_HISTORY,
            with_cairn: false,
            cairn_install: CairnInstall::Processes,
            api_only: false,
            images: Arc::new(ImageMap::with_defaults()),
            node_monitor_grace_period: controllers::node_lifecycle::DEFAULT_GRACE,
        }
    }
}

pub struct Cluster {
    pub api: ApiServer,
    pub registry: Arc<Registry>,
    pub kubeconfig: PathBuf,
    pub nodes: Vec<String>,
    /// Where Cairn's components live, with `with_cairn`.
    pub cairn: Option<CairnLayout>,
    /// Cairn's processes (empty without `with_cairn`); tests stop and restart them.
    pub components: Components,
    /// The nodes' namespaces and network (none without nodes); see `node`.
    pub machines: Option<Nodes>,
    /// The API server on the node bridge (what pods and node components reach).
    pub node_api: Option<ApiServer>,
    /// The API server's HTTPS listener on the node bridge (what in-cluster config reaches).
    pub https_api: Option<ApiServer>,
    /// Each node's kubelet, which a whole-node fault kills and starts again (`node_faults`).
    pub(crate) kubelets: Vec<KubeletRun>,
    pub(crate) stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// A running kubelet: its config (to start it again) and its task.
pub(crate) struct KubeletRun {
    pub(crate) cfg: KubeletConfig,
    pub(crate) kubelet: Arc<Kubelet>,
    pub(crate) task: JoinHandle<()>,
}

impl KubeletRun {
    pub(crate) fn spawn(client: Client, cfg: KubeletConfig, stop: &watch::Sender<bool>) -> Self {
        let kubelet = Kubelet::new(client, cfg.clone());
        let task = tokio::spawn(kubelet.clone().run(stop.subscribe()));
        KubeletRun { cfg, kubelet, task }
    }
}

/// The kubelet root of a node inside the data directory.
pub fn kubelet_root(data_dir: &Path, node: &str) -> PathBuf {
    data_dir.join("nodes").join(node).join("kubelet")
}

pub fn write_kubeconfig(path: &Path, server: &str) -> Result<()> {
    let cfg = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: cairn\n  cluster:\n    server: {server}\ncontexts:\n- name: cairn\n  context:\n    cluster: cairn\n    user: cairn\n    namespace: default\ncurrent-context: cairn\nusers:\n- name: cairn\n  user: {{}}\n"
    );
    std::fs::write(path, cfg).map_err(Error::internal)
}

fn bootstrap(reg: &Registry) -> Result<()> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        match reg.create(&resources::NAMESPACES, None, obj, WriteOptions::default()) {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates the nodes (namespaces, bridge) and serves the API on the bridge, with the nodes'
/// kubeconfig (`DIR/kubeconfig-nodes`, also `/etc/cairn/kubeconfig` in every node), and
/// over HTTPS for in-cluster config (`in_cluster`).
async fn start_nodes(
    data_dir: &Path,
    names: &[String],
    registry: &Arc<Registry>,
    api: &ApiServer,
    cfg: ApiServerConfig,
) -> Result<(Nodes, ApiServer, (ApiServer, InCluster))> {
    let dir = data_dir.to_path_buf();
    let names = names.to_vec();
    let mut m = tokio::task::spawn_blocking(move || Nodes::start(&dir, &names))
        .await
        .map_err(Error::internal)??;
    let gw = std::net::IpAddr::from(m.network.gateway());
    let https_cfg = cfg.clone();
    let napi =
        match apiserver::serve(registry.clone(), (gw, api.addr.port()).into(), cfg.clone()).await {
            Ok(s) => Ok(s),
            // The loopback port is taken on the bridge address (a wildcard listener): any port.
            Err(_) => apiserver::serve(registry.clone(), (gw, 0).into(), cfg).await,
        };
    let written = napi.and_then(|napi| {
        let kc = data_dir.join("kubeconfig-nodes");
        write_kubeconfig(&kc, &napi.url())?;
        for n in &m.nodes {
            if let Some(etc) = n.host_dir("/etc/cairn") {
                write_kubeconfig(&etc.join("kubeconfig"), &napi.url())?;
            }
        }
        Ok(napi)
    });
    let started = match written {
        Ok(napi) => match in_cluster::start(data_dir, registry, gw, https_cfg).await {
            Ok(https) => Ok((napi, https)),
            Err(e) => {
                napi.stop().await;
                Err(e)
            }
        },
        Err(e) => Err(e),
    };
    match started {
        Ok((napi, https)) => Ok((m, napi, https)),
        Err(e) => {
            tokio::task::spawn_blocking(move || m.shutdown()).await.ok();
            Err(e)
        }
    }
}

async fn stop_nodes(
    machines: Option<Nodes>,
    node_api: Option<ApiServer>,
    https_api: Option<ApiServer>,
) {
    if let Some(mut m) = machines {
        let _ = tokio::task::spawn_blocking(move || m.shutdown()).await;
    }
    for a in node_api.into_iter().chain(https_api) {
        a.stop().await;
    }
}

impl Cluster {
    pub async fn start(cfg: ClusterConfig) -> Result<Cluster> {
        let (_never, cancel) = watch::channel(false);
        Self::start_until(cfg, cancel).await
    }

    /// `start`, stopped when `cancel` turns true (a signal during `up`): the start-up ends at
    /// its next await point (the nodes' creation runs to its end first) and everything it
    /// started is torn down as on a start-up failure; the error then says it was interrupted.
    pub async fn start_until(
        cfg: ClusterConfig,
        mut cancel: watch::Receiver<bool>,
    ) -> Result<Cluster> {
        let data_dir = std::path::absolute(&cfg.data_dir).map_err(Error::internal)?;
        std::fs::create_dir_all(&data_dir).map_err(Error::internal)?;
        let store = Store::open(&data_dir.join("etcd"), cfg.history)?;
        let registry = Registry::new(store.clone());
        bootstrap(&registry)?;
        let logs_dir = data_dir.clone();
        let locator: apiserver::LogLocator = Arc::new(move |pod, container| {
            let node = pod["spec"]["nodeName"].as_str()?;
            let uid = pod["metadata"]["uid"].as_str()?;
            let p = Kubelet::log_path(&kubelet_root(&logs_dir, node), uid, container);
            p.exists().then_some(p)
        });
        let api_cfg = ApiServerConfig {
            log_locator: Some(locator),
            ..Default::default()
        };
        let api = apiserver::serve(registry.clone(), cfg.listen, api_cfg.clone()).await?;
        let kubeconfig = data_dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &api.url())?;
        let (stop, stop_rx) = watch::channel(false);
        let client = Client::new(registry.clone());
        let mut tasks = Vec::new();
        let mut nodes = Vec::new();
        let mut kubelets = Vec::new();
        let mut components = Components::default();
        let (mut machines, mut node_api) = (None, None);
        let (mut https_api, mut in_cluster) = (None, None);
        if !cfg.api_only {
            let resync = Duration::from_secs(1);
            let binder = pv_binder::PvBinder::new(client.clone());
            tasks.push(tokio::spawn(run_loop(
                "pv-binder",
                store.clone(),
                vec![
                    resources::PVS,
                    resources::PVCS,
                    resources::STORAGECLASSES,
                    resources::PODS,
                    resources::NODES,
                ],
                resync,
                stop_rx.clone(),
                move || binder.reconcile(),
            )));
            let sts = statefulset::StatefulSetController::new(client.clone());
            tasks.push(tokio::spawn(run_loop(
                "statefulset",
                store.clone(),
                vec![resources::STATEFULSETS, resources::PODS, resources::PVCS],
                resync,
                stop_rx.clone(),
                move || sts.reconcile(),
            )));
            tasks.extend(controllers::spawn_apps(&client, &store, resync, &stop_rx));
            let adc = attach_detach::AttachDetachController::new(client.clone());
            tasks.push(tokio::spawn(run_loop(
                "attach-detach",
                store.clone(),
                vec![
                    resources::PODS,
                    resources::PVS,
                    resources::PVCS,
                    resources::VOLUMEATTACHMENTS,
                    resources::CSIDRIVERS,
                    resources::NODES,
                ],
                resync,
                stop_rx.clone(),
                move || adc.reconcile(),
            )));
            let collector = gc::GarbageCollector::new(client.clone());
            tasks.push(tokio::spawn(run_loop(
                "garbage-collector",
                store.clone(),
                resources::ALL
                    .iter()
                    .copied()
                    .filter(|r| r.kind != "Event" && r.kind != "Lease")
                    .collect(),
                Duration::from_secs(2),
                stop_rx.clone(),
                move || collector.reconcile(),
            )));
            let mut lifecycle = controllers::node_lifecycle::NodeLifecycleController::new(
                client.clone(),
                cfg.node_monitor_grace_period,
            );
            tasks.push(tokio::spawn(run_loop(
                "node-lifecycle",
                store.clone(),
                vec![resources::NODES, resources::LEASES],
                resync,
                stop_rx.clone(),
                move || lifecycle.reconcile(),
            )));
            let mut scheduler = Scheduler::new(client.clone());
            tasks.push(tokio::spawn(run_loop(
                "scheduler",
                store.clone(),
                vec![
                    resources::PODS,
                    resources::NODES,
                    resources::PVCS,
                    resources::PVS,
                    resources::STORAGECLASSES,
                    resources::CSIDRIVERS,
                    resources::CSISTORAGECAPACITIES,
                ],
                resync,
                stop_rx.clone(),
                move || scheduler.reconcile(),
            )));
            let names: Vec<String> = (1..=cfg.nodes).map(|i| format!("node-{i}")).collect();
            if !names.is_empty() {
                let (m, napi, (https, ic)) =
                    match start_nodes(&data_dir, &names, &registry, &api, api_cfg.clone()).await {
                        Ok(v) => v,
                        Err(e) => {
                            let _ = stop.send(true);
                            for t in tasks.drain(..) {
                                let _ = t.await;
                            }
                            api.stop().await;
                            return Err(e);
                        }
                    };
                let dns = controllers::dns::DnsController::new(client.clone(), &m);
                tasks.push(tokio::spawn(run_loop(
                    "dns",
                    store.clone(),
                    vec![resources::SERVICES, resources::PODS],
                    resync,
                    stop_rx.clone(),
                    move || dns.reconcile(),
                )));
                let mut proxy = controllers::service_proxy::ServiceProxy::new(client.clone(), &m);
                tasks.push(tokio::spawn(run_loop(
                    "service-proxy",
                    store.clone(),
                    vec![resources::SERVICES, resources::PODS, resources::NODES],
                    resync,
                    stop_rx.clone(),
                    move || proxy.reconcile(),
                )));
                machines = Some(m);
                node_api = Some(napi);
                https_api = Some(https);
                in_cluster = Some(ic);
            }
            let https_port = https_api.as_ref().map(|a: &ApiServer| a.addr.port());
            let sac = controllers::serviceaccounts::ServiceAccountController::new(
                client.clone(),
                https_port,
            );
            tasks.push(tokio::spawn(run_loop(
                "serviceaccount",
                store.clone(),
                vec![
                    resources::NAMESPACES,
                    resources::SERVICEACCOUNTS,
                    resources::SERVICES,
                ],
                resync,
                stop_rx.clone(),
                move || sac.reconcile(),
            )));
            for (i, node) in names.into_iter().enumerate() {
                let root = kubelet_root(&data_dir, &node);
                std::fs::create_dir_all(root.join("plugins")).map_err(Error::internal)?;
                std::fs::create_dir_all(root.join("plugins_registry")).map_err(Error::internal)?;
                let mut kc = KubeletConfig {
                    images: cfg.images.clone(),
                    lease_renew: (cfg.node_monitor_grace_period / 4).min(Duration::from_secs(10)),
                    ..KubeletConfig::new(&node, root)
                };
                if let Some(m) = &machines {
                    kc.address = m.nodes[i].address.into();
                    kc.namespaces = Some(m.nodes[i].namespaces());
                    kc.in_cluster = in_cluster.clone();
                }
                kubelets.push(KubeletRun::spawn(client.clone(), kc, &stop));
                nodes.push(node);
            }
        }
        let mut cairn = None;
        let interrupted = || Error::Internal("start-up interrupted by a signal".into());
        let with_cairn = cfg.with_cairn && !cfg.api_only;
        if with_cairn || *cancel.borrow() {
            let started = async {
                if !with_cairn {
                    return Ok(None);
                }
                let layout = match &machines {
                    Some(m) => CairnLayout::on_nodes(
                        &data_dir,
                        &kubeconfig,
                        &data_dir.join("kubeconfig-nodes"),
                        m,
                    ),
                    None => CairnLayout::new(&data_dir, &kubeconfig, &nodes),
                };
                match (layout, cfg.cairn_install, &machines) {
                    (Ok(l), CairnInstall::Manifests, Some(m)) => {
                        let addrs: Vec<std::net::IpAddr> =
                            m.nodes.iter().map(|n| n.address.into()).collect();
                        install::install(&client, &l, &addrs, &cfg.images)
                            .await
                            .map(|()| l)
                    }
                    (Ok(_), CairnInstall::Manifests, None) => Err(Error::Internal(
                        "installing the manifests needs harness nodes (--nodes)".into(),
                    )),
                    (Ok(l), CairnInstall::Processes, _) => {
                        components::start_cairn(&l, &mut components, &registry)
                            .await
                            .map(|()| l)
                    }
                    (Err(e), _, _) => Err(e),
                }
                .map(Some)
            };
            let started = tokio::select! {
                biased;
                Ok(_) = cancel.wait_for(|c| *c) => Err(interrupted()),
                r = started => r,
            };
            match started {
                Ok(l) => cairn = l,
                Err(e) => {
                    let _ = stop.send(true);
                    for t in tasks.drain(..).chain(kubelets.drain(..).map(|k| k.task)) {
                        let _ = t.await;
                    }
                    components.stop_all().await;
                    stop_nodes(machines, node_api, https_api).await;
                    api.stop().await;
                    return Err(e);
                }
            }
        }
        tracing::info!(api = %api.url(), kubeconfig = %kubeconfig.display(), nodes = nodes.len(), "cluster up");
        Ok(Cluster {
            api,
            registry,
            kubeconfig,
            nodes,
            cairn,
            components,
            machines,
            node_api,
            https_api,
            kubelets,
            stop,
            tasks,
        })
    }

    pub fn client(&self) -> Client {
        Client::new(self.registry.clone())
    }

    /// Stops kubelets (killing containers, unmounting volumes), controllers,
    /// components, the nodes (their namespaces, links, mounts, bridge) and the API server,
    /// in that order.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let kubelets = self.kubelets.drain(..).map(|k| k.task);
        for t in self.tasks.drain(..).chain(kubelets) {
            let _ = t.await;
        }
        self.components.stop_all().await;
        stop_nodes(
            self.machines.take(),
            self.node_api.take(),
            self.https_api.take(),
        )
        .await;
        self.api.stop().await;
        tracing::info!("cluster down");
    }
}
