//! The extension point for Cairn's own components: per-node and cluster-wide
//! processes (storaged, cairn-csi, cairn-provisioner) the harness starts and stops.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// A process the harness runs alongside the control plane.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// A label for logs, e.g. `storaged@node-1`.
    pub name: String,
    /// A binary name (found next to the harness binary or on PATH) or a path.
    pub binary: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr go.
    pub log: PathBuf,
}

/// What a plan function is told about one simulated node.
#[derive(Debug, Clone)]
pub struct NodeContext {
    pub node: String,
    pub kubelet_root: PathBuf,
    pub data_dir: PathBuf,
    pub kubeconfig: PathBuf,
}

/// Cairn's components for one node, as `up --with-cairn` starts them. The CSI
/// node plugin listens where the kubelet discovers plugins:
/// `<kubelet-root>/plugins/csi.cairn.dev/csi.sock`.
pub fn cairn_node_plan(n: &NodeContext) -> Vec<ComponentSpec> {
    let sock = n
        .kubelet_root
        .join("plugins")
        .join("csi.cairn.dev")
        .join("csi.sock");
    let logs = n.data_dir.join("logs");
    let common = vec![
        ("KUBECONFIG".to_string(), n.kubeconfig.display().to_string()),
        ("CAIRN_NODE".to_string(), n.node.clone()),
    ];
    vec![
        ComponentSpec {
            name: format!("storaged@{}", n.node),
            binary: "storaged".into(),
            args: vec![
                "--node-id".into(),
                n.node.clone(),
                "--data-dir".into(),
                n.data_dir.join("storaged").display().to_string(),
            ],
            env: common.clone(),
            log: logs.join("storaged.log"),
        },
        ComponentSpec {
            name: format!("cairn-csi@{}", n.node),
            binary: "cairn-csi".into(),
            args: vec![
                "--mode".into(),
                "node".into(),
                "--endpoint".into(),
                format!("unix://{}", sock.display()),
                "--node-id".into(),
                n.node.clone(),
                "--kubelet-root".into(),
                n.kubelet_root.display().to_string(),
            ],
            env: common,
            log: logs.join("cairn-csi.log"),
        },
    ]
}

/// Cluster-wide components for `up --with-cairn`.
pub fn cairn_cluster_plan(data_dir: &Path, kubeconfig: &Path) -> Vec<ComponentSpec> {
    vec![ComponentSpec {
        name: "cairn-provisioner".into(),
        binary: "cairn-provisioner".into(),
        args: vec![],
        env: vec![("KUBECONFIG".into(), kubeconfig.display().to_string())],
        log: data_dir.join("logs").join("cairn-provisioner.log"),
    }]
}

/// Finds a binary next to the running executable, then on PATH.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        for d in [dir.clone(), dir.join("..")] {
            let p = d.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The running components; `stop_all` ends them in reverse start order.
#[derive(Default)]
pub struct Components {
    running: Vec<(ComponentSpec, tokio::process::Child)>,
}

impl Components {
    pub fn start(&mut self, spec: ComponentSpec) -> Result<()> {
        let bin = find_binary(&spec.binary).ok_or_else(|| {
            Error::Internal(format!("{}: binary {} not found", spec.name, spec.binary))
        })?;
        if let Some(d) = spec.log.parent() {
            std::fs::create_dir_all(d).map_err(Error::internal)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(Error::internal)?;
        let child = tokio::process::Command::new(bin)
            .args(&spec.args)
            .envs(spec.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(Error::internal)?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Internal(format!("{}: {e}", spec.name)))?;
        tracing::info!(component = %spec.name, pid = child.id(), "component started");
        self.running.push((spec, child));
        Ok(())
    }

    pub async fn stop_all(&mut self) {
        while let Some((spec, mut child)) = self.running.pop() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
            tracing::info!(component = %spec.name, "component stopped");
        }
    }
}
