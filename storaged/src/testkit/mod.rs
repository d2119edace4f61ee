//! Process-level cluster fixture for tests and benchmarks: spawns real `storaged`
//! processes on loopback (mutual TLS, certificates from a CA of its own), kills (-9),
//! pauses and restarts them, and cleans up on drop.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_client::{Security, VolumeClient};
use cairn_proto::cairn::v1::ReplicaState;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::tls::Identity;
use crate::tls::certs::{self, Issue};

mod frontends;
pub use frontends::{frontend_pids, remove_frontends};

pub struct ProcNode {
    /// The node's Raft id (0 until known, for a node that joins through seeds).
    pub id: u64,
    /// Its `--node-name` (`node-<n>`, n counting from 1 in start order).
    pub name: String,
    pub addr: String,
    /// Where the node serves `/metrics`.
    pub metrics_addr: String,
    /// The node's log (`storaged.log`) and, unless given apart, its data.
    pub dir: PathBuf,
    /// The node's `--data-dir` (`dir` unless the cluster was started with `start_on`).
    pub data_dir: PathBuf,
    /// The network namespace it runs in (`None`: the host's).
    pub netns: Option<PathBuf>,
    /// Environment variables its process gets besides the cluster's (e.g. libfaketime's).
    pub env: Vec<(String, String)>,
    /// Arguments its process gets besides the cluster's (e.g. `--label zone=a`).
    pub args: Vec<String>,
    child: Option<Child>,
}

impl ProcNode {
    /// Its `--run-dir`: beside its log, so a data dir on a filesystem without Unix sockets
    /// (cairn-faultfs) still has frontend control sockets.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
}

/// Where a node of `ProcCluster::start_placed` runs: a network namespace of its own (a file
/// such as `/run/netns/NAME`) and its address there, on which it listens and is reached.
#[derive(Clone, Debug)]
pub struct Placement {
    pub netns: PathBuf,
    pub ip: std::net::IpAddr,
}

/// The ports of a placed node (alone in its namespace, it needs no free-port search).
const PLACED_PORT: u16 = 7400;
const PLACED_METRICS_PORT: u16 = 9400;

/// How the nodes of a `ProcCluster` are told about each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peers {
    /// `--node-id N --initial-cluster 1=127.0.0.1:P,...` (what `start` does).
    Addresses,
    /// `--node-id N --initial-cluster 1=localhost:P,...`: peers named by DNS.
    Names,
    /// No `--node-id`: `--node-name node-K --join localhost:P,... --bootstrap-expect N`
    /// (N the nodes started at once), a `storage-node:node-K` certificate. Ids follow the
    /// nodes' sorted addresses, as `discovery` chooses them.
    Seeds,
}

pub struct ProcCluster {
    pub nodes: Vec<ProcNode>,
    bin: PathBuf,
    peers: Peers,
    /// `--initial-cluster`, or `--join` for `Peers::Seeds`.
    initial: String,
    /// How many nodes the cluster started with (`--bootstrap-expect` for seeds).
    first: usize,
    root: tempfile::TempDir,
    extra_args: Vec<String>,
}

/// A free loopback port outside the ephemeral range (see `cairn_client::unused_loopback_port`).
pub fn free_port() -> u16 {
    cairn_client::unused_loopback_port().expect("a free loopback port")
}

/// Finds a workspace binary next to the current executable (`target/<profile>/NAME`).
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

impl ProcCluster {
    /// Starts `n` nodes (ids 1..=n) as the initial meta voters, in a temp dir.
    pub fn start(bin: &Path, n: usize, extra_args: &[&str]) -> std::io::Result<Self> {
        Self::start_in(&std::env::temp_dir(), bin, n, extra_args)
    }

    /// Like `start`, with the nodes' data dirs in a new directory under `parent`.
    pub fn start_in(
        parent: &Path,
        bin: &Path,
        n: usize,
        extra_args: &[&str],
    ) -> std::io::Result<Self> {
        Self::start_nodes(
            parent,
            bin,
            &vec![None; n],
            extra_args,
            Peers::Addresses,
            None,
            &[],
        )
    }

    /// Starts one node per entry of `zones` (ids 1..), each labelled `zone=<its entry>`.
    pub fn start_zoned(bin: &Path, zones: &[&str], extra_args: &[&str]) -> std::io::Result<Self> {
        let labels: Vec<Vec<String>> = zones
            .iter()
            .map(|z| vec!["--label".to_string(), format!("zone={z}")])
            .collect();
        Self::start_nodes(
            &std::env::temp_dir(),
            bin,
            &vec![None; zones.len()],
            extra_args,
            Peers::Addresses,
            None,
            &labels,
        )
    }

    /// Starts `n` nodes that find each other as `peers` says, in a temp dir.
    pub fn start_with(
        bin: &Path,
        n: usize,
        extra_args: &[&str],
        peers: Peers,
    ) -> std::io::Result<Self> {
        Self::start_nodes(
            &std::env::temp_dir(),
            bin,
            &vec![None; n],
            extra_args,
            peers,
            None,
            &[],
        )
    }

    /// Starts one node per entry of `data_dirs` (ids 1..), each keeping its data in its own
    /// directory (which must exist, e.g. a fault filesystem's mount), its log and certificates
    /// in a temp dir.
    pub fn start_on(
        bin: &Path,
        data_dirs: &[PathBuf],
        extra_args: &[&str],
    ) -> std::io::Result<Self> {
        Self::start_on_dirs(bin, data_dirs, extra_args, None, &[])
    }

    /// Like `start_on`, each node in the network namespace and on the address of its
    /// `placements` entry (one per data dir); restarts keep them.
    pub fn start_placed(
        bin: &Path,
        data_dirs: &[PathBuf],
        placements: &[Placement],
        extra_args: &[&str],
    ) -> std::io::Result<Self> {
        if placements.len() != data_dirs.len() {
            return Err(std::io::Error::other(format!(
                "{} placements for {} data dirs",
                placements.len(),
                data_dirs.len()
            )));
        }
        Self::start_on_dirs(bin, data_dirs, extra_args, Some(placements), &[])
    }

    /// Like `start_on`, node `i` also getting `node_args[i]` (e.g. its own `--capacity`,
    /// which then replaces the default 64GiB).
    pub fn start_on_with(
        bin: &Path,
        data_dirs: &[PathBuf],
        node_args: &[Vec<String>],
        extra_args: &[&str],
    ) -> std::io::Result<Self> {
        Self::start_on_dirs(bin, data_dirs, extra_args, None, node_args)
    }

    fn start_on_dirs(
        bin: &Path,
        data_dirs: &[PathBuf],
        extra_args: &[&str],
        placements: Option<&[Placement]>,
        node_args: &[Vec<String>],
    ) -> std::io::Result<Self> {
        let data_dirs: Vec<Option<PathBuf>> = data_dirs.iter().cloned().map(Some).collect();
        Self::start_nodes(
            &std::env::temp_dir(),
            bin,
            &data_dirs,
            extra_args,
            Peers::Addresses,
            placements,
            node_args,
        )
    }

    /// Starts the nodes (in the namespaces `placements` gives, else on loopback), node `i`
    /// also getting `node_args[i]` (when given).
    fn start_nodes(
        parent: &Path,
        bin: &Path,
        data_dirs: &[Option<PathBuf>],
        extra_args: &[&str],
        peers: Peers,
        placements: Option<&[Placement]>,
        node_args: &[Vec<String>],
    ) -> std::io::Result<Self> {
        let n = data_dirs.len();
        let root = tempfile::Builder::new()
            .prefix("cairn-cluster-")
            .tempdir_in(parent)?;
        let mut nodes: Vec<ProcNode> = (1..=n as u64)
            .zip(data_dirs)
            .map(|(k, data_dir)| {
                let dir = root.path().join(format!("node-{k}"));
                let placed = placements.map(|p| &p[k as usize - 1]);
                let (addr, metrics_addr) = match placed {
                    Some(p) => (
                        std::net::SocketAddr::new(p.ip, PLACED_PORT).to_string(),
                        std::net::SocketAddr::new(p.ip, PLACED_METRICS_PORT).to_string(),
                    ),
                    None => (
                        format!("127.0.0.1:{}", free_port()),
                        format!("127.0.0.1:{}", free_port()),
                    ),
                };
                ProcNode {
                    id: k,
                    name: format!("node-{k}"),
                    addr,
                    metrics_addr,
                    data_dir: data_dir.clone().unwrap_or_else(|| dir.clone()),
                    netns: placed.map(|p| p.netns.clone()),
                    env: Vec::new(),
                    args: node_args.get(k as usize - 1).cloned().unwrap_or_default(),
                    dir,
                    child: None,
                }
            })
            .collect();
        if peers == Peers::Seeds {
            let mut sorted: Vec<std::net::SocketAddr> = nodes
                .iter()
                .map(|n| n.addr.parse().expect("an address"))
                .collect();
            sorted.sort();
            for n in &mut nodes {
                let a: std::net::SocketAddr = n.addr.parse().expect("an address");
                n.id = 1 + sorted.iter().position(|s| *s == a).expect("listed") as u64;
            }
        }
        let local = |n: &ProcNode| n.addr.replace("127.0.0.1", "localhost");
        let initial = match peers {
            Peers::Addresses => nodes
                .iter()
                .map(|n| format!("{}={}", n.id, n.addr))
                .collect::<Vec<_>>(),
            Peers::Names => nodes
                .iter()
                .map(|n| format!("{}={}", n.id, local(n)))
                .collect(),
            Peers::Seeds => nodes.iter().map(local).collect(),
        }
        .join(",");
        let mut c = ProcCluster {
            nodes,
            bin: bin.to_path_buf(),
            peers,
            initial,
            first: n,
            root,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        certs::init_ca(&c.ca_dir()).map_err(std::io::Error::other)?;
        for i in 0..n {
            c.spawn(i)?;
        }
        Ok(c)
    }

    /// Starts one more node with the cluster's seeds (`Peers::Seeds` only); its index. Its
    /// id is 0 until `adopt_stamped_id` reads the one it chose.
    pub fn add_seed_node(&mut self) -> std::io::Result<usize> {
        assert_eq!(self.peers, Peers::Seeds, "only a seeded cluster adds nodes");
        let k = self.nodes.len() + 1;
        let dir = self.root.path().join(format!("node-{k}"));
        self.nodes.push(ProcNode {
            id: 0,
            name: format!("node-{k}"),
            addr: format!("127.0.0.1:{}", free_port()),
            metrics_addr: format!("127.0.0.1:{}", free_port()),
            data_dir: dir.clone(),
            netns: None,
            env: Vec::new(),
            args: Vec::new(),
            dir,
            child: None,
        });
        self.spawn(k - 1)?;
        Ok(k - 1)
    }

    /// The node id stamped in node `i`'s data dir (`None`: not stamped yet).
    pub fn stamped_id(&self, i: usize) -> Option<u64> {
        crate::identity::read_stamp(&self.nodes[i].data_dir)
            .ok()
            .flatten()
            .map(|s| s.node_id)
    }

    /// Waits (bounded) for node `i` to stamp its data dir, and takes that id as its own.
    pub async fn adopt_stamped_id(&mut self, i: usize, within: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(id) = self.stamped_id(i) {
                self.nodes[i].id = id;
                return Ok(id);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "node {} stamped no id within {within:?}",
            self.nodes[i].name
        ))
    }

    /// The identity-related arguments of node `i` and the identity of its certificate.
    fn peer_args(&self, i: usize) -> (Vec<String>, Identity) {
        let node = &self.nodes[i];
        match self.peers {
            Peers::Addresses | Peers::Names => (
                vec![
                    "--node-id".into(),
                    node.id.to_string(),
                    "--initial-cluster".into(),
                    self.initial.clone(),
                ],
                Identity::Node(node.id),
            ),
            Peers::Seeds => (
                vec![
                    "--node-name".into(),
                    node.name.clone(),
                    "--join".into(),
                    self.initial.clone(),
                    "--bootstrap-expect".into(),
                    self.first.to_string(),
                ],
                Identity::StorageNode(node.name.clone()),
            ),
        }
    }

    fn spawn(&mut self, i: usize) -> std::io::Result<()> {
        let (peer_args, identity) = self.peer_args(i);
        let tls_args = if self.extra_args.iter().any(|a| a == "--insecure") {
            vec![]
        } else {
            let dir = self.tls_dir(&identity)?;
            vec!["--tls-dir".into(), dir.into_os_string()]
        };
        let own_metrics = !self
            .extra_args
            .iter()
            .any(|a| a.starts_with("--metrics-addr"));
        let node = &mut self.nodes[i];
        let own_capacity = self
            .extra_args
            .iter()
            .chain(&node.args)
            .any(|a| a == "--capacity");
        let capacity_args: &[&str] = if own_capacity {
            &[]
        } else {
            &["--capacity", "64GiB"]
        };
        let metrics_args = if own_metrics {
            vec!["--metrics-addr".to_string(), node.metrics_addr.clone()]
        } else {
            vec![]
        };
        std::fs::create_dir_all(&node.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("storaged.log"))?;
        let mut cmd = Command::new(&self.bin);
        if let Some(path) = &node.netns {
            let ns = std::fs::File::open(path)?;
            // SAFETY: only a syscall on a descriptor opened before the fork, as pre_exec requires.
            unsafe {
                cmd.pre_exec(move || {
                    use std::os::fd::AsFd;
                    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
                    Ok(())
                });
            }
        }
        let child = cmd
            .args(["--listen", &node.addr, "--data-dir"])
            .arg(&node.data_dir)
            .arg("--run-dir")
            .arg(node.run_dir())
            .args(peer_args)
            .args(capacity_args)
            .args(metrics_args)
            .args(&self.extra_args)
            .args(&node.args)
            .args(tls_args)
            .env(
                "RUST_LOG",
                std::env::var("CAIRN_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .envs(node.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        node.child = Some(child);
        Ok(())
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// The cluster's CA (`ca.crt`, `ca.key`), beside the nodes' data dirs.
    pub fn ca_dir(&self) -> PathBuf {
        self.root.path().join("certs").join("ca")
    }

    /// A `--tls-dir` for `identity`, signed by the cluster's CA (issued on first use).
    pub fn tls_dir(&self, identity: &Identity) -> std::io::Result<PathBuf> {
        let dir = self.root.path().join("certs").join(identity.to_string());
        if !dir.join("tls.key").exists() {
            let req = Issue {
                identity: identity.clone(),
                ips: vec![],
                dns: vec![],
            };
            certs::issue(&self.ca_dir(), &req, &dir).map_err(std::io::Error::other)?;
        }
        Ok(dir)
    }

    /// How a client with `identity` reaches this cluster.
    pub fn security_for(&self, identity: &Identity) -> Security {
        if self.extra_args.iter().any(|a| a == "--insecure") {
            return Security::Insecure;
        }
        let dir = self.tls_dir(identity).expect("issue a test certificate");
        Security::from_flags(Some(&dir), false).expect("load a test certificate")
    }

    /// A client with the `admin` identity.
    pub fn client(&self) -> VolumeClient {
        VolumeClient::new(self.addrs(), self.security_for(&Identity::Admin))
            .expect("cluster addresses are valid")
    }

    pub fn index_of(&self, id: u64) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .expect("known node id")
    }

    /// `kill -9` node `id` and reap it.
    pub fn kill9(&mut self, id: u64) {
        let i = self.index_of(id);
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM node `id` and wait up to `within` for it to exit; how long it took, or
    /// `None` (it is then killed).
    pub async fn terminate(&mut self, id: u64, within: Duration) -> Option<Duration> {
        let i = self.index_of(id);
        let mut c = self.nodes[i].child.take()?;
        let started = Instant::now();
        let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        while started.elapsed() < within {
            if let Ok(Some(_)) = c.try_wait() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    pub fn restart(&mut self, id: u64) -> std::io::Result<()> {
        self.kill9(id);
        let i = self.index_of(id);
        self.spawn(i)
    }

    /// Restarts node `id` (`kill -9` first) on a new port, with the same data dir and id
    /// and the cluster's flags unchanged (its `--initial-cluster` entry still names the old
    /// address): a pod that came back with a new IP. Returns the new address.
    pub fn restart_at_new_address(&mut self, id: u64) -> std::io::Result<String> {
        self.kill9(id);
        let i = self.index_of(id);
        let mut addr: std::net::SocketAddr =
            self.nodes[i].addr.parse().map_err(std::io::Error::other)?;
        addr.set_port(free_port());
        self.nodes[i].addr = addr.to_string();
        self.spawn(i)?;
        Ok(self.nodes[i].addr.clone())
    }

    /// Restarts node `id` (`kill -9` first) with `env` as its extra environment, which later
    /// restarts keep until the next call.
    pub fn restart_with_env(&mut self, id: u64, env: Vec<(String, String)>) -> std::io::Result<()> {
        self.kill9(id);
        let i = self.index_of(id);
        self.nodes[i].env = env;
        self.spawn(i)
    }

    /// The process id of node `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes[self.index_of(id)].child.as_ref().map(|c| c.id())
    }

    /// Whether node `id`'s process runs (started, not killed, not exited on its own).
    pub fn is_alive(&mut self, id: u64) -> bool {
        let i = self.index_of(id);
        self.nodes[i]
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// How node `id`'s process ended, once it has (`None` while it runs or was not started).
    pub fn exit_status(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let i = self.index_of(id);
        self.nodes[i].child.as_mut()?.try_wait().ok().flatten()
    }

    /// CPU time (user + system) node `id`'s process has used so far, from `/proc`.
    pub fn cpu_time(&self, id: u64) -> Option<Duration> {
        let pid = self.pid(id)?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command (which may hold spaces) end with `)`: utime, stime are
        // the 14th and 15th fields, the 12th and 13th after it.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf reads a constant of the system; no memory is involved.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (hz > 0).then(|| Duration::from_secs_f64(ticks as f64 / hz as f64))
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes[self.index_of(id)].child.is_some()
    }

    /// SIGSTOP / SIGCONT a node (a "paused" process keeps its sockets open).
    pub fn pause(&self, id: u64, paused: bool) {
        if let Some(c) = &self.nodes[self.index_of(id)].child {
            let sig = if paused {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            };
            let _ = kill(Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// Waits until every running node is registered and a meta leader answers.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), String> {
        let client = self.client();
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            match client.cluster_status().await {
                Ok(s) if s.meta_leader_id != 0 && s.nodes.len() >= self.nodes.len() => {
                    return Ok(());
                }
                Ok(s) => {
                    last = format!(
                        "leader {} with {} nodes registered",
                        s.meta_leader_id,
                        s.nodes.len()
                    )
                }
                Err(e) => last = e.message().to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("cluster not ready within {within:?}: {last}"))
    }

    /// The node id that leads volume `name`'s group, as reported by GetVolume.
    pub async fn volume_leader(&self, name: &str, within: Duration) -> Result<u64, String> {
        let client = self.client();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(v) = client.get_volume(name).await
                && v.leader_node_id != 0
            {
                return Ok(v.leader_node_id);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("volume {name} has no leader within {within:?}"))
    }

    /// Waits until every replica of each volume in `names` is a live, caught-up member
    /// ("leader" or "follower" in GetVolume), e.g. after a restart, before the next fault.
    pub async fn wait_replicas_healthy(
        &self,
        names: &[&str],
        within: Duration,
    ) -> Result<(), String> {
        let client = self.client();
        let deadline = Instant::now() + within;
        let mut last = String::new();
        'poll: while Instant::now() < deadline {
            for name in names {
                match client.get_volume(name).await {
                    Ok(v) => {
                        if let Some(r) = v.members.iter().find(|r| {
                            !matches!(r.state(), ReplicaState::Leader | ReplicaState::Follower)
                        }) {
                            last = format!("{name}: node {} is {}", r.node_id, r.state().word());
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue 'poll;
                        }
                    }
                    Err(e) => {
                        last = format!("{name}: {}", e.message());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue 'poll;
                    }
                }
            }
            return Ok(());
        }
        Err(format!("replicas not healthy within {within:?}: {last}"))
    }

    pub fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(self.nodes[self.index_of(id)].dir.join("storaged.log"))
            .unwrap_or_default()
    }

    /// Node `id`'s Prometheus exposition (`None`: it did not answer).
    pub async fn metrics(&self, id: u64) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = &self.nodes[self.index_of(id)].metrics_addr;
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
    }

    /// The sum of a metric's samples (every label set) on node `id`.
    pub async fn metric_sum(&self, id: u64, name: &str) -> Option<f64> {
        let text = self.metrics(id).await?;
        Some(
            text.lines()
                .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// The sum of a metric's samples on node `id` whose labels include `label`
    /// (`volume="v"`).
    pub async fn metric_where(&self, id: u64, name: &str, label: &str) -> Option<f64> {
        let text = self.metrics(id).await?;
        Some(
            text.lines()
                .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
                .filter(|l| {
                    l.split_once('}')
                        .is_some_and(|(labels, _)| labels.split([',', '{']).any(|p| p == label))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// Empties a node's data dir, as a lost disk would (its log file stays for the test).
    pub fn wipe(dir: &Path) {
        for e in std::fs::read_dir(dir).expect("read the data dir") {
            let p = e.expect("a data dir entry").path();
            if p.file_name().is_some_and(|n| n == "storaged.log") {
                continue;
            }
            if p.is_dir() {
                std::fs::remove_dir_all(&p).expect("remove a directory");
            } else {
                std::fs::remove_file(&p).expect("remove a file");
            }
        }
    }

    pub fn node_addrs(&self) -> BTreeMap<u64, String> {
        self.nodes.iter().map(|n| (n.id, n.addr.clone())).collect()
    }
}

/// Lines of each node's log printed when a test panics.
const LOG_TAIL: usize = 60;

impl Drop for ProcCluster {
    fn drop(&mut self) {
        // A failing test's only record of what the nodes did: their logs go with the
        // temporary directory, so print each one's tail first.
        if std::thread::panicking() {
            for n in &self.nodes {
                let log = std::fs::read_to_string(n.dir.join("storaged.log")).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
                eprintln!(
                    "--- node {} ({}) log, last {} lines ---",
                    n.id,
                    n.name,
                    tail.len()
                );
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
                let _ = c.kill();
                let _ = c.wait();
            }
            // Frontend processes outlive storaged by design (decision 041): end them too.
            remove_frontends(&n.run_dir());
        }
    }
}
