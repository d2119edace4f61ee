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
use crate::kubelet::images::ImageMap;
use crate::kubelet::{Kubelet, KubeletConfig};
use crate::registry::{Registry, WriteOptions};
use crate::resources;
use crate::scheduler::Scheduler;
use crate::store::{DEFAULT_HISTORY, Store};

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub data_dir: PathBuf,
    pub nodes: usize,
    pub listen: SocketAddr,
    pub history: usize,
    /// Start storaged and cairn-csi per node and the provisioner (see `components`).
    pub with_cairn: bool,
    /// Run only the API server (no controllers, scheduler or kubelets).
    pub api_only: bool,
    /// Which executables each image runs (`--image NAME=PATH`).
    pub images: Arc<ImageMap>,
}

impl ClusterConfig {
    pub fn new(data_dir: impl Into<PathBuf>, nodes: usize) -> Self {
        ClusterConfig {
            data_dir: data_dir.into(),
            nodes,
            listen: "127.0.0.1:0".parse().expect("address"),
            history: DEFAULT_HISTORY,
            with_cairn: false,
            api_only: false,
            images: Arc::new(ImageMap::with_defaults()),
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
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
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

impl Cluster {
    pub async fn start(cfg: ClusterConfig) -> Result<Cluster> {
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
        let api = apiserver::serve(registry.clone(), cfg.listen, api_cfg).await?;
        let kubeconfig = data_dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &api.url())?;
        let (stop, stop_rx) = watch::channel(false);
        let client = Client::new(registry.clone());
        let mut tasks = Vec::new();
        let mut nodes = Vec::new();
        let mut components = Components::default();
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
            for i in 1..=cfg.nodes {
                let node = format!("node-{i}");
                let root = kubelet_root(&data_dir, &node);
                std::fs::create_dir_all(root.join("plugins")).map_err(Error::internal)?;
                std::fs::create_dir_all(root.join("plugins_registry")).map_err(Error::internal)?;
                let kcfg = KubeletConfig {
                    images: cfg.images.clone(),
                    ..KubeletConfig::new(&node, root)
                };
                let kubelet = Kubelet::new(client.clone(), kcfg);
                tasks.push(tokio::spawn(kubelet.run(stop_rx.clone())));
                nodes.push(node);
            }
        }
        let mut cairn = None;
        if cfg.with_cairn && !cfg.api_only {
            let layout = CairnLayout::new(&data_dir, &kubeconfig, &nodes)?;
            if let Err(e) = components::start_cairn(&layout, &mut components, &registry).await {
                let _ = stop.send(true);
                for t in tasks.drain(..) {
                    let _ = t.await;
                }
                components.stop_all().await;
                api.stop().await;
                return Err(e);
            }
            cairn = Some(layout);
        }
        tracing::info!(api = %api.url(), kubeconfig = %kubeconfig.display(), nodes = nodes.len(), "cluster up");
        Ok(Cluster {
            api,
            registry,
            kubeconfig,
            nodes,
            cairn,
            components,
            stop,
            tasks,
        })
    }

    pub fn client(&self) -> Client {
        Client::new(self.registry.clone())
    }

    /// Stops kubelets (killing containers, unmounting volumes), controllers,
    /// components and the API server, in that order.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.components.stop_all().await;
        self.api.stop().await;
        tracing::info!("cluster down");
    }
}
