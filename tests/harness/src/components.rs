//! Cairn's own processes under the harness (`up --with-cairn`): a storaged Raft cluster, a
//! cairn-csi node plugin per node, the controller plugin and provisioners; started, signalled, stopped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::node::{Namespaces, Nodes};
use crate::registry::{Registry, WriteOptions};
use crate::resources;

/// The CSI driver name.
pub const DRIVER: &str = "csi.cairn.dev";
/// Name of the controller-role provisioner `up --with-cairn` starts.
pub const PROVISIONER: &str = "cairn-provisioner-0";
/// Namespace of the provisioners' Lease and CSIStorageCapacity objects.
pub const SYSTEM_NAMESPACE: &str = "kube-system";
/// The objects an install creates before any claim: the CSIDriver and the StorageClasses.
const INSTALL_MANIFESTS: [&str; 2] = [
    include_str!("../../../manifests/01-csidriver.yaml"),
    include_str!("../../../manifests/06-storageclasses.yaml"),
];
/// storaged's port on its node's address (as in `manifests/`).
pub const STORAGED_PORT: u16 = 7001;
/// How long a component may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a signalled component may take to exit before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A process the harness runs alongside the control plane.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// A unique label, e.g. `storaged@node-1`.
    pub name: String,
    /// A binary name (found next to the harness binary or on PATH) or a path.
    pub binary: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr go (appended).
    pub log: PathBuf,
    /// The node whose namespaces it runs in (none: the host's).
    pub node: Option<Namespaces>,
}

/// Where everything of `--with-cairn` lives, and the storaged addresses. The addresses are
/// kept in `<data-dir>/cairn/storaged-addrs`, so an `up` on the same data directory finds
/// its Raft members at the addresses they were created with.
#[derive(Debug, Clone)]
pub struct CairnLayout {
    pub data_dir: PathBuf,
    pub kubeconfig: PathBuf,
    /// Node names, `node-1` … `node-N`; storaged `--node-id` is the position plus one.
    pub nodes: Vec<String>,
    /// storaged `host:port` per node, same order as `nodes`.
    pub storaged: Vec<String>,
    /// `--capacity` of each storaged.
    pub capacity: String,
    /// Each node's namespaces, same order as `nodes` (none: components run on the host).
    pub node_ns: Vec<Option<Namespaces>>,
    /// The kubeconfig of components on a node (the API server's bridge address).
    pub node_kubeconfig: PathBuf,
}

/// Log files without ANSI colours.
fn plain_logs() -> Vec<(String, String)> {
    vec![("NO_COLOR".into(), "1".into())]
}

fn free_port() -> Result<u16> {
    cairn_client::unused_loopback_port().map_err(Error::internal)
}

impl CairnLayout {
    /// Loads the storaged addresses of a previous run, or picks free ports.
    pub fn new(data_dir: &Path, kubeconfig: &Path, nodes: &[String]) -> Result<CairnLayout> {
        let dir = data_dir.join("cairn");
        std::fs::create_dir_all(&dir).map_err(Error::internal)?;
        let file = dir.join("storaged-addrs");
        let mut storaged: Vec<String> = std::fs::read_to_string(&file)
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default();
        storaged.truncate(nodes.len());
        while storaged.len() < nodes.len() {
            storaged.push(format!("127.0.0.1:{}", free_port()?));
        }
        std::fs::write(&file, storaged.join("\n")).map_err(Error::internal)?;
        Ok(CairnLayout {
            data_dir: data_dir.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
            nodes: nodes.to_vec(),
            storaged,
            capacity: "20GiB".into(),
            node_ns: vec![None; nodes.len()],
            node_kubeconfig: kubeconfig.to_path_buf(),
        })
    }

    /// The layout on harness nodes: each node's components run in its namespaces, storaged
    /// listens on the node's address at `STORAGED_PORT`, and components on a node reach the
    /// API server through `node_kubeconfig`.
    pub fn on_nodes(
        data_dir: &Path,
        kubeconfig: &Path,
        node_kubeconfig: &Path,
        nodes: &Nodes,
    ) -> Result<CairnLayout> {
        std::fs::create_dir_all(data_dir.join("cairn")).map_err(Error::internal)?;
        Ok(CairnLayout {
            data_dir: data_dir.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
            nodes: nodes.nodes.iter().map(|n| n.name.clone()).collect(),
            storaged: nodes
                .nodes
                .iter()
                .map(|n| format!("{}:{STORAGED_PORT}", n.address))
                .collect(),
            capacity: "20GiB".into(),
            node_ns: nodes.nodes.iter().map(|n| Some(n.namespaces())).collect(),
            node_kubeconfig: node_kubeconfig.to_path_buf(),
        })
    }

    fn ns(&self, node: &str) -> Option<Namespaces> {
        let i = self.index(node).ok()?;
        self.node_ns.get(i).cloned().flatten()
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.data_dir.join("nodes").join(node)
    }

    /// The node plugin's socket, where the kubelet discovers plugins.
    pub fn node_socket(&self, node: &str) -> PathBuf {
        crate::cluster::kubelet_root(&self.data_dir, node)
            .join("plugins")
            .join(DRIVER)
            .join("csi.sock")
    }

    /// The controller plugin's socket, which the controller-role provisioners use.
    pub fn controller_socket(&self) -> PathBuf {
        self.data_dir
            .join("cairn")
            .join("controller")
            .join("csi.sock")
    }

    /// The cluster CA and one `--tls-dir` per identity, under the data dir.
    pub fn certs_dir(&self) -> PathBuf {
        self.data_dir.join("cairn").join("certs")
    }

    /// The `--tls-dir` (`ca.crt`, `tls.crt`, `tls.key`) of `identity` (`node:1`, `admin`…).
    pub fn tls_dir(&self, identity: &str) -> PathBuf {
        self.certs_dir().join(identity.replace(':', "-"))
    }

    /// Every identity of `--with-cairn`: a storaged per node, a node plugin per node, the
    /// controller (cairn-csi controller) and `admin` (cairnctl).
    fn identities(&self) -> Vec<String> {
        let mut ids: Vec<String> = (1..=self.nodes.len())
            .map(|i| format!("node:{i}"))
            .collect();
        ids.extend(self.nodes.iter().map(|n| format!("csi-node:{n}")));
        ids.extend(["controller".to_string(), "admin".to_string()]);
        ids
    }

    /// Creates the cluster CA and the certificates of every identity with `cairnctl certs`,
    /// keeping those a previous `up` on this data dir made (idempotent).
    pub fn issue_certs(&self) -> Result<()> {
        let ctl = find_binary("cairnctl")
            .ok_or_else(|| Error::Internal("binary cairnctl not found".into()))?;
        let ca = self.certs_dir().join("ca");
        let run = |args: Vec<String>| -> Result<()> {
            let out = std::process::Command::new(&ctl)
                .args(&args)
                .output()
                .map_err(Error::internal)?;
            if !out.status.success() {
                return Err(Error::Internal(format!(
                    "cairnctl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Ok(())
        };
        if !ca.join("ca.key").exists() {
            run(vec![
                "certs".into(),
                "init".into(),
                "--dir".into(),
                ca.display().to_string(),
            ])?;
        }
        for id in self.identities() {
            let dir = self.tls_dir(&id);
            if dir.join("tls.key").exists() {
                continue;
            }
            let mut ips = vec!["--ip".to_string(), "127.0.0.1".into()];
            let own = id
                .strip_prefix("node:")
                .and_then(|i| i.parse::<usize>().ok())
                .and_then(|i| self.storaged.get(i.wrapping_sub(1)))
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .map(|a| a.ip())
                .filter(|ip| !ip.is_loopback());
            if let Some(ip) = own {
                ips.extend(["--ip".to_string(), ip.to_string()]);
            }
            run(vec![
                "certs".into(),
                "issue".into(),
                "--ca-dir".into(),
                ca.display().to_string(),
                "--identity".into(),
                id,
                "--out".into(),
                dir.display().to_string(),
            ]
            .into_iter()
            .chain(ips)
            .collect())?;
        }
        Ok(())
    }

    fn tls_arg(&self, identity: &str) -> String {
        format!("--tls-dir={}", self.tls_dir(identity).display())
    }

    /// The node-local provisioner's discovery directory (`/mnt/cairn-disks` on a real node).
    pub fn discovery_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("cairn-disks")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.data_dir
            .join("logs")
            .join(format!("{}.log", name.replace('@', "-")))
    }

    fn index(&self, node: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n == node)
            .ok_or_else(|| Error::Internal(format!("unknown node {node}")))
    }

    /// storaged for `node`: the first three nodes are the initial voters, later ones join.
    pub fn storaged_spec(&self, node: &str) -> Result<ComponentSpec> {
        let i = self.index(node)?;
        let mut args = vec![
            format!("--node-id={}", i + 1),
            format!("--listen={}", self.storaged[i]),
            format!(
                "--data-dir={}",
                self.node_dir(node).join("storaged").display()
            ),
            format!("--node-name={node}"),
            format!("--capacity={}", self.capacity),
            self.tls_arg(&format!("node:{}", i + 1)),
        ];
        let voters = self.storaged.len().min(3);
        if i < voters {
            let initial: Vec<String> = (0..voters)
                .map(|j| format!("{}={}", j + 1, self.storaged[j]))
                .collect();
            args.push(format!("--initial-cluster={}", initial.join(",")));
        } else {
            args.push(format!("--join={}", self.storaged[..voters].join(",")));
        }
        let name = format!("storaged@{node}");
        Ok(ComponentSpec {
            log: self.log(&name),
            name,
            binary: "storaged".into(),
            args,
            env: plain_logs(),
            node: self.ns(node),
        })
    }

    /// The cairn-csi node plugin for `node`; its own storaged comes first.
    pub fn node_plugin_spec(&self, node: &str) -> Result<ComponentSpec> {
        let i = self.index(node)?;
        let mut storaged = vec![self.storaged[i].clone()];
        storaged.extend(
            self.storaged
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| a.clone()),
        );
        let name = format!("cairn-csi@{node}");
        Ok(ComponentSpec {
            log: self.log(&name),
            name,
            binary: "cairn-csi".into(),
            args: vec![
                "--mode=node".into(),
                format!("--endpoint=unix://{}", self.node_socket(node).display()),
                format!("--node-id={node}"),
                format!("--storaged={}", storaged.join(",")),
                // On a harness node the kubelet hands CSI the node's own paths.
                format!(
                    "--kubelet-root={}",
                    match self.ns(node) {
                        Some(_) => PathBuf::from("/var/lib/kubelet"),
                        None => crate::cluster::kubelet_root(&self.data_dir, node),
                    }
                    .display()
                ),
                self.tls_arg(&format!("csi-node:{node}")),
            ],
            env: plain_logs(),
            node: self.ns(node),
        })
    }

    /// The controller-mode cairn-csi.
    pub fn controller_plugin_spec(&self) -> ComponentSpec {
        let name = "cairn-csi-controller".to_string();
        ComponentSpec {
            log: self.log(&name),
            name,
            binary: "cairn-csi".into(),
            args: vec![
                "--mode=controller".into(),
                format!("--endpoint=unix://{}", self.controller_socket().display()),
                format!("--storaged={}", self.storaged.join(",")),
                self.tls_arg("controller"),
            ],
            env: plain_logs(),
            node: None,
        }
    }

    /// A controller-role provisioner replica named `identity` (its Lease identity too), with
    /// leader election, so that more replicas can be started next to it.
    pub fn provisioner_spec(&self, identity: &str) -> ComponentSpec {
        ComponentSpec {
            log: self.log(identity),
            name: identity.to_string(),
            binary: "cairn-provisioner".into(),
            args: vec![
                format!(
                    "--csi-endpoint=unix://{}",
                    self.controller_socket().display()
                ),
                format!("--kubeconfig={}", self.kubeconfig.display()),
                "--metrics-addr=".into(),
                "--leader-election".into(),
                format!("--leader-election-namespace={SYSTEM_NAMESPACE}"),
                format!("--capacity-namespace={SYSTEM_NAMESPACE}"),
                "--capacity-poll-interval=5".into(),
                format!("--identity={identity}"),
            ],
            env: plain_logs(),
            node: None,
        }
    }

    /// The node-local provisioner (static local PVs) of `node`.
    pub fn local_provisioner_spec(&self, node: &str) -> ComponentSpec {
        let name = format!("cairn-provisioner@{node}");
        ComponentSpec {
            log: self.log(&name),
            name,
            binary: "cairn-provisioner".into(),
            args: vec![
                format!("--kubeconfig={}", self.node_kubeconfig.display()),
                format!("--node-name={node}"),
                format!("--discovery-dir={}", self.discovery_dir(node).display()),
                "--metrics-addr=".into(),
                format!("--identity=cairn-provisioner-{node}"),
            ],
            env: plain_logs(),
            node: self.ns(node),
        }
    }
}

/// Creates the CSIDriver and StorageClasses of `manifests/` (kept if they already exist).
pub fn install_objects(reg: &Registry) -> Result<()> {
    for text in INSTALL_MANIFESTS {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let obj: Value = serde::Deserialize::deserialize(doc).map_err(Error::internal)?;
            let rt = match obj["kind"].as_str() {
                Some("CSIDriver") => &resources::CSIDRIVERS,
                Some("StorageClass") => &resources::STORAGECLASSES,
                Some(_) | None => continue,
            };
            match reg.create(rt, None, obj, WriteOptions::default()) {
                Ok(_) => {}
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

async fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while !ready() {
        if Instant::now() > deadline {
            return Err(Error::Internal(format!(
                "{what} not ready after {START_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The node names storaged's catalogue lists, asked (as `admin`) of the first address
/// that answers.
pub(crate) async fn storaged_nodes(layout: &CairnLayout) -> Vec<String> {
    use cairn_proto::cairn::v1 as pb;
    let Ok(security) = cairn_client::Security::from_flags(Some(&layout.tls_dir("admin")), false)
    else {
        return Vec::new();
    };
    for a in &layout.storaged {
        let Ok(endpoint) = security.endpoint(a) else {
            continue;
        };
        let Ok(channel) = endpoint.connect().await else {
            continue;
        };
        let mut c = pb::volume_service_client::VolumeServiceClient::new(channel);
        if let Ok(r) = c.list_nodes(pb::ListNodesRequest {}).await {
            return r.into_inner().nodes.into_iter().map(|n| n.name).collect();
        }
    }
    Vec::new()
}

/// Fails at once if a storaged process has exited (a start that cannot succeed).
fn ensure_storaged_alive(layout: &CairnLayout, components: &mut Components) -> Result<()> {
    for node in &layout.nodes {
        let name = format!("storaged@{node}");
        if !components.is_running(&name) {
            return Err(Error::Internal(format!(
                "{name} exited during start; see {}",
                layout.log(&name).display()
            )));
        }
    }
    Ok(())
}

/// Waits until every storaged has registered in the catalogue (so volumes can be placed).
async fn wait_registered(layout: &CairnLayout, components: &mut Components) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let names = storaged_nodes(layout).await;
        if layout.nodes.iter().all(|n| names.contains(n)) {
            return Ok(());
        }
        ensure_storaged_alive(layout, components)?;
        if Instant::now() > deadline {
            let missing: Vec<&String> =
                layout.nodes.iter().filter(|n| !names.contains(n)).collect();
            return Err(Error::Internal(format!(
                "storaged nodes {missing:?} not registered after {START_TIMEOUT:?} (registered: {names:?})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts everything of `--with-cairn` in dependency order: storaged (waiting until each
/// listens and all are in the catalogue), the CSI plugins (waiting for their sockets),
/// then the provisioners.
pub async fn start_cairn(
    layout: &CairnLayout,
    components: &mut Components,
    reg: &Registry,
) -> Result<()> {
    install_objects(reg)?;
    layout.issue_certs()?;
    for node in &layout.nodes {
        components.start(layout.storaged_spec(node)?)?;
    }
    for addr in &layout.storaged {
        let sa: SocketAddr = addr.parse().map_err(Error::internal)?;
        wait_until(&format!("storaged at {addr}"), || {
            TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_ok()
        })
        .await?;
    }
    wait_registered(layout, components).await?;
    let mut sockets = vec![layout.controller_socket()];
    components.start(layout.controller_plugin_spec())?;
    for node in &layout.nodes {
        components.start(layout.node_plugin_spec(node)?)?;
        sockets.push(layout.node_socket(node));
    }
    for s in &sockets {
        wait_until(&format!("CSI socket {}", s.display()), || s.exists()).await?;
    }
    components.start(layout.provisioner_spec(PROVISIONER))?;
    for node in &layout.nodes {
        std::fs::create_dir_all(layout.discovery_dir(node)).map_err(Error::internal)?;
        components.start(layout.local_provisioner_spec(node))?;
    }
    Ok(())
}

/// Finds a binary next to the running executable (or one directory up, for test binaries
/// under `target/debug/deps`), then on PATH.
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
        if self.pid(&spec.name).is_some() {
            return Err(Error::Internal(format!("{} is already running", spec.name)));
        }
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
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(&spec.args)
            .envs(spec.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(Error::internal)?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(ns) = &spec.node {
            let files = ns
                .open()
                .map_err(|e| Error::Internal(format!("{}: node: {e}", spec.name)))?;
            // SAFETY: only syscalls on files opened before fork, as pre_exec requires.
            unsafe {
                cmd.pre_exec(move || files.join().map_err(std::io::Error::from));
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::Internal(format!("{}: {e}", spec.name)))?;
        tracing::info!(component = %spec.name, pid = child.id(), log = %spec.log.display(), "component started");
        self.running.push((spec, child));
        Ok(())
    }

    /// The names of the components started and not stopped, in start order.
    pub fn names(&self) -> Vec<String> {
        self.running.iter().map(|(s, _)| s.name.clone()).collect()
    }

    /// The pid of a running component (None once it has exited or was stopped).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.running
            .iter()
            .find(|(s, _)| s.name == name)
            .and_then(|(_, c)| c.id())
    }

    /// Whether the component's process is still alive.
    pub fn is_running(&mut self, name: &str) -> bool {
        self.running
            .iter_mut()
            .find(|(s, _)| s.name == name)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `sig` to one component and waits for it to exit (SIGKILL after a bound);
    /// returns its spec, so that it can be started again.
    pub async fn stop(&mut self, name: &str, sig: Signal) -> Result<ComponentSpec> {
        let i = self
            .running
            .iter()
            .position(|(s, _)| s.name == name)
            .ok_or_else(|| Error::Internal(format!("no component {name}")))?;
        let (spec, child) = self.running.remove(i);
        end(&spec, child, sig).await;
        Ok(spec)
    }

    /// Stops one component with `sig` and starts it again with the same spec.
    pub async fn restart(&mut self, name: &str, sig: Signal) -> Result<()> {
        let spec = self.stop(name, sig).await?;
        self.start(spec)
    }

    pub async fn stop_all(&mut self) {
        while let Some((spec, child)) = self.running.pop() {
            end(&spec, child, Signal::SIGTERM).await;
        }
    }
}

async fn end(spec: &ComponentSpec, mut child: tokio::process::Child, sig: Signal) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), sig);
    }
    let status = match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            tracing::warn!(component = %spec.name, "did not exit in time; killing");
            let _ = child.kill().await;
            child.wait().await.ok()
        }
    };
    tracing::info!(component = %spec.name, signal = ?sig, status = ?status, "component stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_use_the_real_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<String> = (1..=4).map(|i| format!("node-{i}")).collect();
        let l =
            CairnLayout::new(dir.path(), &dir.path().join("kubeconfig"), &nodes).expect("layout");
        let s1 = l.storaged_spec("node-1").expect("spec").args;
        assert!(s1.contains(&"--node-id=1".to_string()));
        assert!(s1.contains(&"--node-name=node-1".to_string()));
        assert!(
            s1.iter()
                .any(|a| a.starts_with("--initial-cluster=1=127.0.0.1:")
                    && a.contains(",3=")
                    && !a.contains("4="))
        );
        let s4 = l.storaged_spec("node-4").expect("spec").args;
        assert!(s4.iter().any(|a| a.starts_with("--join=")));
        assert!(!s4.iter().any(|a| a.starts_with("--initial-cluster")));
        let p = l.node_plugin_spec("node-2").expect("spec").args;
        assert!(p.contains(&format!(
            "--storaged={},{},{},{}",
            l.storaged[1], l.storaged[0], l.storaged[2], l.storaged[3]
        )));
        assert!(
            p.iter()
                .any(|a| a.ends_with("/nodes/node-2/kubelet/plugins/csi.cairn.dev/csi.sock"))
        );
        // A second layout on the same directory keeps the addresses (Raft membership).
        let again =
            CairnLayout::new(dir.path(), &dir.path().join("kubeconfig"), &nodes).expect("layout");
        assert_eq!(again.storaged, l.storaged);
    }

    #[test]
    fn install_objects_creates_the_driver_and_classes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(dir.path(), 100).expect("store");
        let reg = Registry::new(store);
        install_objects(&reg).expect("install");
        install_objects(&reg).expect("idempotent");
        let d = reg
            .get(&resources::CSIDRIVERS, None, DRIVER)
            .expect("driver");
        assert_eq!(d["spec"]["attachRequired"], true);
        assert_eq!(d["spec"]["storageCapacity"], true);
        for c in [
            "cairn-replicated",
            "cairn-replicated-wffc",
            "cairn-local",
            "local-storage",
        ] {
            reg.get(&resources::STORAGECLASSES, None, c).expect("class");
        }
    }
}
