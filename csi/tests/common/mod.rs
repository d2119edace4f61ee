//! Test harness for cairn-csi: real storaged processes, real cairn-csi processes on Unix
//! sockets, gRPC clients over those sockets, and cleanup of mounts and loop devices.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use cairn_proto::csi::v1 as csi;
use csi::controller_client::ControllerClient;
use csi::identity_client::IdentityClient;
use csi::node_client::NodeClient;
use csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

/// Upper bound for a cluster or a plugin to come up.
pub const STARTUP: Duration = Duration::from_secs(90);

/// Directory holding the workspace binaries (`target/<profile>`), from this test's path.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>, or target/<profile>/examples/<name>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The storaged binary: `$CAIRN_STORAGED_BIN`, else next to this crate's binaries.
pub fn storaged_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CAIRN_STORAGED_BIN") {
        return PathBuf::from(p);
    }
    let p = bin_dir().join("storaged");
    assert!(
        p.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build -p cairn-storaged`) first, \
         or set CAIRN_STORAGED_BIN",
        p.display()
    );
    p
}

/// The cairn-csi binary: `$CAIRN_CSI_BIN`, else the one cargo built for this test, else (in an
/// example, which cargo gives no `CARGO_BIN_EXE_*`) the one next to the workspace binaries.
pub fn csi_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CAIRN_CSI_BIN") {
        return PathBuf::from(p);
    }
    match option_env!("CARGO_BIN_EXE_cairn-csi") {
        Some(p) => PathBuf::from(p),
        None => bin_dir().join("cairn-csi"),
    }
}

/// Runs `cairnctl certs ARGS` (the CA and certificates of a test cluster).
fn certs(args: &[&str]) {
    let out = Command::new(bin_dir().join("cairnctl"))
        .arg("certs")
        .args(args)
        .output()
        .expect("run cairnctl certs");
    assert!(
        out.status.success(),
        "cairnctl certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    cairn_client::unused_loopback_port().expect("a free loopback port")
}

/// Poll `f` until it returns Some, failing the test after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Unmount everything under `dir` (deepest first) and detach loop devices backed by files there.
pub fn cleanup_under(dir: &Path) {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = cairn_csi::mount::parse_mountinfo(&text)
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
    if let Ok(out) = Command::new("losetup")
        .args(["-n", "-l", "-O", "NAME,BACK-FILE"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut f = line.split_whitespace();
            if let (Some(dev), Some(back)) = (f.next(), f.next())
                && Path::new(back).starts_with(dir)
            {
                let _ = Command::new("losetup").args(["-d", dev]).status();
            }
        }
    }
}

/// Mount points under `dir` right now.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    cairn_csi::mount::parse_mountinfo(&text)
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// The `--tls-dir` of `identity` under `root/certs`, signed by `root/certs/ca`.
fn issue(root: &Path, identity: &str) -> PathBuf {
    let certs_dir = root.join("certs");
    let out = certs_dir.join(identity);
    if !out.join("tls.key").exists() {
        let ca = certs_dir.join("ca");
        let args = [
            "issue",
            "--ca-dir",
            ca.to_str().unwrap(),
            "--identity",
            identity,
        ];
        certs(&[&args[..], &["--out", out.to_str().unwrap()]].concat());
    }
    out
}

/// A storaged process (None: planned, not started yet).
pub struct Storaged {
    pub child: Option<Child>,
    pub addr: String,
    pub name: String,
}

/// A 3-node (or n-node) storaged cluster in a temporary directory.
pub struct Cluster {
    pub nodes: Vec<Storaged>,
    pub dir: tempfile::TempDir,
    initial: String,
    extra: Vec<String>,
}

impl Cluster {
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, &[]).await
    }

    /// `start`, with `extra` flags for every storaged.
    pub async fn start_with(n: usize, extra: &[&str]) -> Cluster {
        let mut cluster = Self::plan(n, extra);
        cluster.launch().await;
        cluster
    }

    /// The cluster's directory, CA, addresses and node names, with no storaged running yet.
    pub fn plan(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("cairn-csi-it-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let ca = dir.path().join("certs").join("ca");
        certs(&["init", "--dir", ca.to_str().unwrap()]);
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, port)| Storaged {
                child: None,
                addr: format!("127.0.0.1:{port}"),
                name: format!("node-{}", i + 1),
            })
            .collect();
        Cluster {
            nodes,
            dir,
            initial,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Starts every planned storaged, then waits until storaged lists them all.
    pub async fn launch(&mut self) {
        let bin = storaged_bin();
        let tls: Vec<Vec<String>> = (1..=self.nodes.len())
            .map(|id| self.tls_args(&format!("node:{id}")))
            .collect();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let id = i + 1;
            let data = self.dir.path().join(format!("storaged-{id}"));
            std::fs::create_dir_all(&data).unwrap();
            let log =
                std::fs::File::create(self.dir.path().join(format!("storaged-{id}.log"))).unwrap();
            let child = Command::new(&bin)
                .args(["--node-id", &id.to_string()])
                .args(["--listen", &node.addr])
                .arg("--data-dir")
                .arg(&data)
                .args(["--initial-cluster", &self.initial])
                .args(["--node-name", &node.name])
                .args([
                    "--label",
                    &format!("zone=zone-{}", if id == 1 { "a" } else { "b" }),
                ])
                .args(["--capacity", "20GiB"])
                .args(&tls[i])
                .args(&self.extra)
                // storaged logs to stdout; keep both streams.
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn storaged");
            node.child = Some(child);
        }
        let n = self.nodes.len();
        let client =
            cairn_client::VolumeClient::new(self.endpoints(), self.security("admin")).unwrap();
        wait_for("storaged cluster with all nodes", STARTUP, || {
            let client = client.clone();
            async move {
                match client.list_nodes().await {
                    Ok(ns) if ns.len() >= n => Some(()),
                    _ => None,
                }
            }
        })
        .await;
    }

    /// A `--tls-dir` for `identity` (`controller`, `csi-node:node-1`, ...), issued on first use.
    pub fn tls_dir(&self, identity: &str) -> PathBuf {
        issue(self.dir.path(), identity)
    }

    /// Whether the cluster runs in plaintext (started with `--insecure`).
    pub fn insecure(&self) -> bool {
        self.extra.iter().any(|a| a == "--insecure")
    }

    /// The flags by which a process with `identity` calls or serves the cluster: its
    /// `--tls-dir`, or none on a plaintext cluster (whose extra flags, or the plugin's
    /// `--insecure`, say so).
    fn tls_args(&self, identity: &str) -> Vec<String> {
        match self.insecure() {
            true => Vec::new(),
            false => vec![
                "--tls-dir".into(),
                self.tls_dir(identity).to_string_lossy().into_owned(),
            ],
        }
    }

    /// A plugin's flags to call the cluster as `identity`.
    fn plugin_tls_args(&self, identity: &str) -> Vec<String> {
        match self.insecure() {
            true => vec!["--insecure".into()],
            false => self.tls_args(identity),
        }
    }

    /// How a client with `identity` reaches the cluster.
    pub fn security(&self, identity: &str) -> cairn_client::Security {
        match self.insecure() {
            true => cairn_client::Security::Insecure,
            false => {
                cairn_client::Security::from_flags(Some(&self.tls_dir(identity)), false).unwrap()
            }
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Endpoints with node `i`'s own storaged first (what a node plugin on it is given).
    pub fn endpoints_for(&self, i: usize) -> String {
        let mut v = vec![self.nodes[i].addr.clone()];
        v.extend(
            self.nodes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, n)| n.addr.clone()),
        );
        v.join(",")
    }

    pub fn node_client(&self, i: usize) -> cairn_client::NodeClient {
        let me = self.security(&format!("csi-node:{}", self.nodes[i].name));
        cairn_client::NodeClient::connect(&self.nodes[i].addr, &me).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Unmount first, so storaged's FUSE exports are not busy, then stop storaged.
        let kubelets = self.dir.path().join("kubelet");
        cleanup_under(&kubelets);
        for child in self.nodes.iter_mut().filter_map(|n| n.child.as_mut()) {
            stop(child);
        }
        // Frontends outlive storaged by design: stop them, with their loop devices and FUSE
        // mounts, while their paths still resolve (a detached mount's loop shows as `/disk`).
        for entry in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let run = entry.path().join("run");
            if entry.file_name().to_string_lossy().starts_with("storaged-") && run.is_dir() {
                cairn_storaged::testkit::remove_frontends(&run);
            }
        }
        cleanup_under(self.dir.path());
    }
}

/// A cairn-csi process serving on a Unix socket.
pub struct Plugin {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub args: Vec<String>,
    pub log: PathBuf,
}

impl Plugin {
    pub async fn start(socket: &Path, args: &[&str], log: &Path) -> Plugin {
        let mut p = Plugin {
            child: None,
            socket: socket.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            log: log.to_path_buf(),
        };
        p.spawn().await;
        p
    }

    /// A node plugin for cluster node `i`, with its own kubelet root.
    pub async fn node(cluster: &Cluster, i: usize) -> Plugin {
        let mut p = Plugin::node_plan(cluster, i);
        p.spawn().await;
        p
    }

    /// A node plugin for cluster node `i`, started whether its storaged runs or not: it is
    /// waited for until it answers Probe, ready or not.
    pub async fn node_unready(cluster: &Cluster, i: usize) -> Plugin {
        let mut p = Plugin::node_plan(cluster, i);
        p.spawn_then(false).await;
        p
    }

    fn node_plan(cluster: &Cluster, i: usize) -> Plugin {
        let tls = cluster.plugin_tls_args(&format!("csi-node:{}", cluster.nodes[i].name));
        Plugin {
            child: None,
            socket: cluster.dir.path().join(format!("csi-node-{}.sock", i + 1)),
            args: Plugin::on_node(cluster, i, "node", tls),
            log: cluster.dir.path().join(format!("csi-node-{}.log", i + 1)),
        }
    }

    /// The flags of a plugin in `mode` on cluster node `i` (its kubelet root created), calling
    /// storaged with the TLS flags `tls`.
    fn on_node(cluster: &Cluster, i: usize, mode: &str, tls: Vec<String>) -> Vec<String> {
        let root = cluster.kubelet_root(i);
        std::fs::create_dir_all(&root).unwrap();
        let args = [
            "--mode",
            mode,
            "--node-id",
            &cluster.nodes[i].name,
            "--storaged",
            &cluster.endpoints_for(i),
            "--kubelet-root",
            root.to_str().unwrap(),
        ];
        args.iter().map(|s| s.to_string()).chain(tls).collect()
    }

    /// Controller and node plugin of cluster node `i` in one process (`--mode all`), with a
    /// `controller` certificate and the node's `csi-node` one.
    pub async fn all(cluster: &Cluster, i: usize) -> Plugin {
        let sock = cluster.dir.path().join(format!("csi-all-{}.sock", i + 1));
        let log = cluster.dir.path().join(format!("csi-all-{}.log", i + 1));
        let node_tls = cluster.tls_dir(&format!("csi-node:{}", cluster.nodes[i].name));
        let tls = cluster.plugin_tls_args("controller");
        let mut args = Plugin::on_node(cluster, i, "all", tls);
        if !cluster.insecure() {
            args.extend(["--node-tls-dir".into(), node_tls.to_str().unwrap().into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Plugin::start(&sock, &args, &log).await
    }

    pub async fn controller(cluster: &Cluster) -> Plugin {
        let sock = cluster.dir.path().join("csi-controller.sock");
        let log = cluster.dir.path().join("csi-controller.log");
        let eps = cluster.endpoints().join(",");
        let mut args = vec![
            "--mode".to_string(),
            "controller".into(),
            "--storaged".into(),
            eps,
        ];
        args.extend(cluster.plugin_tls_args("controller"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Plugin::start(&sock, &args, &log).await
    }

    async fn spawn(&mut self) {
        self.spawn_then(true).await;
    }

    /// Starts the process, then waits until it answers Probe (`ready`: and is ready).
    async fn spawn_then(&mut self, ready: bool) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(csi_bin())
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket.display()))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn cairn-csi");
        self.child = Some(child);
        let sock = self.socket.clone();
        wait_for("cairn-csi Probe", STARTUP, || {
            let sock = sock.clone();
            async move {
                let ch = connect(&sock).await.ok()?;
                let r = IdentityClient::new(ch)
                    .probe(csi::ProbeRequest {})
                    .await
                    .ok()?;
                (!ready || r.into_inner().ready == Some(true)).then_some(())
            }
        })
        .await;
    }

    /// SIGKILL (no cleanup at all), then start again on the same socket.
    pub async fn crash_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        assert!(
            self.socket.exists(),
            "a killed plugin leaves its socket file behind"
        );
        self.spawn().await;
    }

    pub async fn channel(&self) -> Channel {
        connect(&self.socket)
            .await
            .expect("connect to plugin socket")
    }
    pub async fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel().await)
    }
    pub async fn ctrl(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel().await)
    }
    pub async fn node_rpc(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel().await)
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            stop(c);
        }
    }
}

/// A tonic channel over a Unix socket.
pub async fn connect(sock: &Path) -> Result<Channel, tonic::transport::Error> {
    cairn_proto::uds::channel(sock.to_path_buf()).await
}

impl Cluster {
    pub fn kubelet_root(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join("kubelet")
            .join(format!("node-{}", i + 1))
    }

    /// `<root>/plugins/kubernetes.io/csi/<driver>/<sha256(volumeHandle)>/globalmount`
    pub fn staging_path(&self, i: usize, volume_id: &str) -> PathBuf {
        let h = hex::encode(Sha256::digest(volume_id.as_bytes()));
        let p = self
            .kubelet_root(i)
            .join("plugins/kubernetes.io/csi/csi.cairn.dev")
            .join(h)
            .join("globalmount");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// `<root>/pods/<pod-uid>/volumes/kubernetes.io~csi/<pv>/mount` (parent created, as kubelet does).
    pub fn target_path(&self, i: usize, pod: &str, pv: &str) -> PathBuf {
        let p = self
            .kubelet_root(i)
            .join("pods")
            .join(pod)
            .join("volumes/kubernetes.io~csi")
            .join(pv);
        std::fs::create_dir_all(&p).unwrap();
        p.join("mount")
    }
}

pub fn mount_cap(mode: Mode, fs: &str) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn block_cap(mode: Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn create_req(
    name: &str,
    size: i64,
    cap: csi::VolumeCapability,
    params: &[(&str, &str)],
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: size,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap],
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// Stage and publish on a node plugin; returns (staging, target).
pub async fn stage_and_publish(
    node: &Plugin,
    cluster: &Cluster,
    i: usize,
    volume_id: &str,
    publish_context: std::collections::HashMap<String, String>,
    cap: csi::VolumeCapability,
    pod: &str,
) -> (PathBuf, PathBuf) {
    let staging = cluster.staging_path(i, volume_id);
    let target = cluster.target_path(i, pod, volume_id);
    let mut n = node.node_rpc().await;
    n.node_stage_volume(csi::NodeStageVolumeRequest {
        volume_id: volume_id.into(),
        publish_context: publish_context.clone(),
        staging_target_path: staging.to_str().unwrap().into(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    })
    .await
    .expect("NodeStageVolume");
    n.node_publish_volume(csi::NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        publish_context,
        staging_target_path: staging.to_str().unwrap().into(),
        target_path: target.to_str().unwrap().into(),
        volume_capability: Some(cap),
        readonly: false,
        ..Default::default()
    })
    .await
    .expect("NodePublishVolume");
    (staging, target)
}

/// Unpublish and unstage (each twice, to check idempotency).
pub async fn unpublish_and_unstage(node: &Plugin, volume_id: &str, staging: &Path, target: &Path) {
    let mut n = node.node_rpc().await;
    for _ in 0..2 {
        n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: volume_id.into(),
            target_path: target.to_str().unwrap().into(),
        })
        .await
        .expect("NodeUnpublishVolume");
    }
    assert!(
        !target.exists(),
        "NodeUnpublish must remove {}",
        target.display()
    );
    for _ in 0..2 {
        n.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: staging.to_str().unwrap().into(),
        })
        .await
        .expect("NodeUnstageVolume");
    }
}

pub fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Run a shell command, asserting success; returns stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether this process may grow a mounted ext4 (EXT4_IOC_RESIZE_FS needs CAP_SYS_RESOURCE).
pub fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(eff, 16).unwrap() & (1 << CAP_SYS_RESOURCE) != 0
}

pub async fn controller_publish(
    ctrl: &Plugin,
    id: &str,
    node: &str,
    cap: &csi::VolumeCapability,
) -> Result<std::collections::HashMap<String, String>, tonic::Status> {
    ctrl.ctrl()
        .await
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: id.into(),
            node_id: node.into(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().publish_context)
}

pub async fn controller_unpublish(ctrl: &Plugin, id: &str, node: &str) {
    ctrl.ctrl()
        .await
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: id.into(),
            node_id: node.into(),
            ..Default::default()
        })
        .await
        .expect("ControllerUnpublishVolume");
}

pub async fn create(ctrl: &Plugin, req: csi::CreateVolumeRequest) -> csi::Volume {
    ctrl.ctrl()
        .await
        .create_volume(req)
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .unwrap()
}
