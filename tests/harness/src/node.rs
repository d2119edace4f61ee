//! Harness nodes as namespaces, like kind's node containers: per node a holder process owning a
//! network, UTS and mount namespace, a veth to the cluster's bridge, and host paths of its own.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use cairn_netns::{
    Bridge, attach_veth, ip, kill_until_gone, link_exists, ns_id, processes_in, signal_all,
    wait_gone,
};

use crate::error::{Error, Result};

pub mod loops;

/// The host paths every node has of its own: (path in the node, directory under
/// `DIR/nodes/<node>/` it is bound from). `/dev` stays shared (loop devices and FUSE are global).
pub const NODE_PATHS: [(&str, &str); 6] = [
    ("/var/lib/kubelet", "kubelet"),
    ("/var/lib/cairn", "cairn"),
    ("/mnt/cairn-disks", "cairn-disks"),
    ("/mnt/disks", "disks"),
    ("/run", "run"),
    ("/etc/cairn", "etc-cairn"),
];

/// The node's own `/etc/hosts` (`DIR/nodes/<node>/hosts`): its name and the cluster's
/// DNS names (headless and ClusterIP Services), kept current by the `dns` controller.
pub const HOSTS_FILE: &str = "hosts";

/// Node subnets are `10.213.<i>.0/24`, bridge `cairnbr<i>` at `.1`, node-k at `.(10+k)`.
const SUBNET: [u8; 2] = [10, 213];
/// Where the subnet index a data directory uses is kept (so storaged addresses stay put).
const NETWORK_FILE: &str = "network";
/// Marks a holder process's command line (`$0`), so leftovers are found by data directory.
const HOLDER_MARK: &str = "cairn-node:";
const HOLDER_SCRIPT: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `pause` keeps stopping the node's processes until all of them are stopped.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A node's namespaces as pods and components join them: the holder's pid (it changes when
/// the node restarts, so every holder of this handle follows).
#[derive(Debug, Clone, Default)]
pub struct Namespaces(Arc<AtomicU32>);

/// Open namespace files of a node, in the order a process joins them.
pub struct NsFiles {
    pub net: File,
    pub uts: File,
    pub mnt: File,
}

impl Namespaces {
    pub fn pid(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }

    /// `/proc/<holder>/<what>`.
    pub fn proc(&self, what: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{what}", self.pid()))
    }

    /// The node's `/` as the host reaches it (`/proc/<holder>/root`): paths looked up below it
    /// resolve in the node's mount namespace.
    pub fn root(&self) -> PathBuf {
        self.proc("root")
    }

    pub fn open(&self) -> std::io::Result<NsFiles> {
        if self.pid() == 0 {
            return Err(std::io::Error::other("the node is not running"));
        }
        Ok(NsFiles {
            net: File::open(self.proc("ns/net"))?,
            uts: File::open(self.proc("ns/uts"))?,
            mnt: File::open(self.proc("ns/mnt"))?,
        })
    }

    /// The node's network namespace (`net:[inode]`).
    pub fn net_id(&self) -> Option<String> {
        ns_id(&self.pid().to_string(), "net")
    }
}

impl NsFiles {
    /// Joins the namespaces; for a child between fork and exec (only syscalls).
    pub fn join(&self) -> nix::Result<()> {
        setns(self.net.as_fd(), CloneFlags::CLONE_NEWNET)?;
        setns(self.uts.as_fd(), CloneFlags::CLONE_NEWUTS)?;
        setns(self.mnt.as_fd(), CloneFlags::CLONE_NEWNS)
    }
}

/// The cluster's network: a bridge the harness creates on a private /24 it picked, with the
/// host's address on it, and a shared bind of `DIR/nodes` so mounts the host makes under it
/// reach every node (each node's copy is a slave: what a node mounts stays in it).
#[derive(Debug)]
pub struct Network {
    pub index: u8,
    pub bridge: String,
    data_dir: PathBuf,
}

impl Network {
    /// Picks a subnet (the one this data directory used before, else the first whose bridge
    /// name is free and whose /24 no host route overlaps), creates the bridge and the bind.
    pub fn create(data_dir: &Path) -> Result<Network> {
        std::fs::create_dir_all(data_dir).map_err(Error::internal)?;
        cleanup_leftovers(data_dir);
        let recorded: Option<u8> = std::fs::read_to_string(data_dir.join(NETWORK_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let candidates: Vec<u8> = match recorded {
            Some(i) => vec![i],
            None => (0..=255).collect(),
        };
        let alias = data_dir.display().to_string();
        let bridge = match Bridge::create_free(
            SUBNET,
            candidates,
            |i| format!("cairnbr{i}"),
            &alias,
        ) {
            Ok(b) => b,
            Err(cairn_netns::Error::NoSubnet(_)) => {
                return Err(Error::Internal(match recorded {
                    Some(i) => format!(
                        "subnet {}.{}.{i}.0/24, recorded in {} for this data directory, is in use \
                         (bridge cairnbr{i} or a host route): storaged's Raft members keep their addresses",
                        SUBNET[0],
                        SUBNET[1],
                        data_dir.join(NETWORK_FILE).display()
                    ),
                    None => "no free 10.213.<i>.0/24 subnet for the node bridge".into(),
                }));
            }
            Err(e) => return Err(e.into()),
        };
        let net = Network {
            index: bridge.index,
            bridge: bridge.name,
            data_dir: data_dir.to_path_buf(),
        };
        if let Err(e) = net.configure() {
            net.destroy();
            return Err(e);
        }
        tracing::info!(bridge = %net.bridge, gateway = %net.gateway(), "node network created");
        Ok(net)
    }

    fn configure(&self) -> Result<()> {
        std::fs::write(
            self.data_dir.join(NETWORK_FILE),
            format!("{}\n", self.index),
        )
        .map_err(Error::internal)?;
        let nodes = self.data_dir.join("nodes");
        std::fs::create_dir_all(&nodes).map_err(Error::internal)?;
        mount(
            Some(&nodes),
            &nodes,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| Error::Internal(format!("bind {}: {e}", nodes.display())))?;
        mount(
            None::<&str>,
            &nodes,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(|e| Error::Internal(format!("make-shared {}: {e}", nodes.display())))
    }

    /// The host's address on the bridge (the API server listens there for the nodes).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET[0], SUBNET[1], self.index, 1)
    }

    /// The address of node `k` (1-based).
    pub fn node_address(&self, k: usize) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET[0], SUBNET[1], self.index, (10 + k) as u8)
    }

    /// Removes the mounts under `DIR/nodes`, the bind and the bridge.
    pub fn destroy(&self) {
        unmount_under(&self.data_dir.join("nodes"));
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            tracing::warn!(bridge = %self.bridge, error = %e, "bridge removal failed");
        }
        tracing::info!(bridge = %self.bridge, "node network removed");
    }
}

/// Unmounts `dir` and every mount below it on the host, deepest first.
fn unmount_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = cairn_csi::mount::parse_mountinfo(&info)
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Err(e) = umount2(&p, MntFlags::MNT_DETACH)
            && e != nix::errno::Errno::EINVAL
        {
            tracing::warn!(mount = %p.display(), error = %e, "unmount failed");
        }
    }
}

/// What a crashed harness left for this data directory: node processes (holders and all that
/// runs in their namespaces), mounts under `DIR/nodes`, the bridge (if its alias is this dir).
pub fn cleanup_leftovers(data_dir: &Path) {
    let nodes = data_dir.join("nodes");
    if let Ok(rd) = std::fs::read_dir(&nodes) {
        for e in rd.flatten() {
            let pid_file = e.path().join("holder.pid");
            let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let mark = format!("{HOLDER_MARK}{}", e.path().display());
            if String::from_utf8_lossy(&cmdline).contains(&mark) {
                tracing::warn!(pid, node_dir = %e.path().display(), "killing a node left by a previous run");
                if let Some(net) = ns_id(&pid.to_string(), "net") {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    kill_until_gone(&net, STOP_TIMEOUT);
                }
            }
            let _ = std::fs::remove_file(&pid_file);
        }
    }
    unmount_under(&nodes);
    let recorded = std::fs::read_to_string(data_dir.join(NETWORK_FILE)).unwrap_or_default();
    if let Ok(i) = recorded.trim().parse::<u8>() {
        let bridge = format!("cairnbr{i}");
        let alias =
            std::fs::read_to_string(format!("/sys/class/net/{bridge}/ifalias")).unwrap_or_default();
        if alias.trim() == data_dir.display().to_string() {
            tracing::warn!(%bridge, "removing a bridge left by a previous run");
            let _ = ip(&["link", "del", &bridge]);
        }
    }
}

/// One node: its holder process and namespaces, its address and its directories.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    /// 1-based position (`node-k`), which fixes the address and link names.
    pub index: usize,
    pub address: Ipv4Addr,
    /// `DIR/nodes/<name>`: the node's paths of `NODE_PATHS` live below it.
    pub dir: PathBuf,
    ns: Namespaces,
    holder: Option<Child>,
    bridge: String,
    gateway: Ipv4Addr,
    net_index: u8,
    /// Between `pause` and `resume` (or a kill).
    paused: bool,
}

impl Node {
    pub fn new(net: &Network, data_dir: &Path, name: &str, index: usize) -> Node {
        Node {
            name: name.to_string(),
            index,
            address: net.node_address(index),
            dir: data_dir.join("nodes").join(name),
            ns: Namespaces::default(),
            holder: None,
            bridge: net.bridge.clone(),
            gateway: net.gateway(),
            net_index: net.index,
            paused: false,
        }
    }

    /// The handle pods and components join (it follows restarts).
    pub fn namespaces(&self) -> Namespaces {
        self.ns.clone()
    }

    /// The host directory bound at `path` (one of `NODE_PATHS`) in the node.
    pub fn host_dir(&self, path: &str) -> Option<PathBuf> {
        NODE_PATHS
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, d)| self.dir.join(d))
    }

    fn veth(&self) -> (String, String) {
        (
            format!("cb{}h{}", self.net_index, self.index),
            format!("cb{}n{}", self.net_index, self.index),
        )
    }

    /// Creates the namespaces (holder), the node's mounts and its link to the bridge.
    pub fn start(&mut self) -> Result<()> {
        if self.holder.is_some() {
            return Err(Error::Internal(format!("node {} is running", self.name)));
        }
        for (_, d) in NODE_PATHS {
            std::fs::create_dir_all(self.dir.join(d)).map_err(Error::internal)?;
        }
        let hosts = self.dir.join(HOSTS_FILE);
        if !hosts.exists() {
            std::fs::write(
                &hosts,
                crate::controllers::dns::render(&self.name, &self.address.to_string(), &[]),
            )
            .map_err(Error::internal)?;
        }
        let overlay = self.dir.join("overlay");
        let _ = std::fs::remove_dir_all(&overlay);
        let hostname = self.name.clone().into_bytes();
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            HOLDER_SCRIPT,
            &format!("{HOLDER_MARK}{}", self.dir.display()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only syscalls on data prepared before fork, as pre_exec requires.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid()?;
                unshare(
                    CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWNS,
                )?;
                nix::errno::Errno::result(nix::libc::sethostname(
                    hostname.as_ptr().cast(),
                    hostname.len(),
                ))?;
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::Internal(format!("node {}: holder: {e}", self.name)))?;
        self.ns.0.store(child.id(), Ordering::SeqCst);
        self.holder = Some(child);
        let _ = std::fs::write(self.dir.join("holder.pid"), self.ns.pid().to_string());
        let setup = self.setup_mounts().and_then(|()| self.setup_link());
        if let Err(e) = setup {
            self.kill();
            return Err(Error::Internal(format!("node {}: {e}", self.name)));
        }
        tracing::info!(node = %self.name, address = %self.address, holder = self.ns.pid(), "node started");
        Ok(())
    }

    /// In the node's mount namespace (joined by a thread of ours): detaches the copies of
    /// the host's nested mounts (so the node pins none of them), then binds `NODE_PATHS`.
    fn setup_mounts(&self) -> Result<()> {
        let mnt = File::open(self.ns.proc("ns/mnt")).map_err(Error::internal)?;
        let dir = self.dir.clone();
        let shared = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        std::thread::spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_FS).map_err(Error::internal)?;
            setns(mnt.as_fd(), CloneFlags::CLONE_NEWNS).map_err(Error::internal)?;
            // First of all, nothing the node mounts or unmounts may reach the host: the new
            // namespace's copies of the host's shared mounts are peers of the host's own (all
            // of them on a systemd host, `/run/netns` wherever `ip netns` ran), so detaching a
            // copy below would unmount the host's, and a bind on `/run` would cover the host's.
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_SLAVE,
                None::<&str>,
            )
            .map_err(|e| Error::Internal(format!("make-rslave /: {e}")))?;
            let info =
                std::fs::read_to_string("/proc/thread-self/mountinfo").map_err(Error::internal)?;
            for m in crate::kubelet::runtime::hidden_host_mounts(&info)
                .iter()
                .rev()
            {
                if m.starts_with(&shared) || shared.starts_with(m) {
                    continue;
                }
                match umount2(m, MntFlags::MNT_DETACH) {
                    Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
                    Err(e) => return Err(Error::Internal(format!("detach {}: {e}", m.display()))),
                }
            }
            // Mounts the host makes under `DIR/nodes` reach the node; the node's own (staged
            // volumes, FUSE exports) stay in it, seen once, at the path they were made at.
            mount(
                None::<&str>,
                &shared,
                None::<&str>,
                MsFlags::MS_SLAVE,
                None::<&str>,
            )
            .map_err(|e| Error::Internal(format!("make-slave {}: {e}", shared.display())))?;
            let mut overlaid = Vec::new();
            for (target, d) in NODE_PATHS {
                let target = Path::new(target);
                ensure_dir(target, &dir.join("overlay"), &mut overlaid)?;
                mount(
                    Some(&dir.join(d)),
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| Error::Internal(format!("bind {}: {e}", target.display())))?;
            }
            // A kubelet's root is shared, as is Cairn's data dir (every mount is shared on a
            // systemd host), so a Bidirectional mount of one (the CSI node plugin's, the
            // frontend host's) puts the mounts made under it in the node.
            for path in ["/var/lib/kubelet", "/var/lib/cairn"] {
                mount(
                    None::<&str>,
                    path,
                    None::<&str>,
                    MsFlags::MS_SHARED,
                    None::<&str>,
                )
                .map_err(|e| Error::Internal(format!("make-shared {path}: {e}")))?;
            }
            mount(
                Some(&dir.join(HOSTS_FILE)),
                "/etc/hosts",
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| Error::Internal(format!("bind /etc/hosts: {e}")))?;
            Ok(())
        })
        .join()
        .map_err(|_| Error::Internal("node mount setup panicked".into()))?
    }

    /// A veth pair: one end on the bridge, the other `eth0` in the node with its address.
    fn setup_link(&self) -> Result<()> {
        let (host, peer) = self.veth();
        let pid = self.ns.pid().to_string();
        let ns_path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        attach_veth(
            &self.bridge,
            (&host, &peer),
            (&pid, &ns_path),
            self.address,
            self.gateway,
        )?;
        Ok(())
    }

    /// SIGKILLs everything in the node (holder, pods, components), as a power cut would, then
    /// detaches the loop devices its FUSE frontends backed (the kernel keeps them otherwise).
    pub fn kill(&mut self) {
        self.kill_with(Default::default());
    }

    /// `kill`, also detaching the loop devices `recorded` before the node's processes were
    /// asked to exit (their frontends could still say which files they serve).
    fn kill_with(&mut self, mut recorded: Vec<loops::NodeLoop>) {
        if let Some(net) = self.ns.net_id() {
            for l in loops::record(&processes_in(&net), &self.dir) {
                if !recorded.contains(&l) {
                    recorded.push(l);
                }
            }
            if let Some(h) = &self.holder {
                let _ = kill(Pid::from_raw(h.id() as i32), Signal::SIGKILL);
            }
            kill_until_gone(&net, STOP_TIMEOUT);
            loops::detach(&self.name, &recorded);
        }
        self.reap();
    }

    /// The loop devices over the `disk` files of the node's running FUSE frontends.
    pub fn fuse_loops(&self) -> Vec<loops::NodeLoop> {
        self.ns
            .net_id()
            .map(|net| loops::record(&processes_in(&net), &self.dir))
            .unwrap_or_default()
    }

    /// Whether the node runs (started, not stopped or killed since).
    pub fn running(&self) -> bool {
        self.holder.is_some()
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// SIGSTOPs every process of the node (holder, pods, components), as a frozen machine:
    /// repeated (bounded) until every process in its network namespace is stopped, so one
    /// started meanwhile is stopped too. Idempotent; how many processes are stopped.
    pub fn pause(&mut self) -> Result<usize> {
        let net = self
            .ns
            .net_id()
            .filter(|_| self.running())
            .ok_or_else(|| Error::Internal(format!("node {} is not running", self.name)))?;
        let was = self.paused;
        self.paused = true;
        let deadline = std::time::Instant::now() + PAUSE_TIMEOUT;
        loop {
            let procs = processes_in(&net);
            let running: Vec<i32> = procs.iter().copied().filter(|p| !stopped(*p)).collect();
            if running.is_empty() {
                tracing::info!(node = %self.name, processes = procs.len(), already = was, "node paused");
                return Ok(procs.len());
            }
            if std::time::Instant::now() >= deadline {
                // Nothing is left half frozen: what was stopped runs again.
                if !was {
                    self.resume();
                }
                return Err(Error::Internal(format!(
                    "node {}: processes {running:?} not stopped after {PAUSE_TIMEOUT:?}",
                    self.name
                )));
            }
            for p in running {
                let _ = kill(Pid::from_raw(p), Signal::SIGSTOP);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGCONTs every process of the node. Idempotent (a node not paused is left alone);
    /// how many processes were continued.
    pub fn resume(&mut self) -> usize {
        if !std::mem::replace(&mut self.paused, false) {
            return 0;
        }
        let n = self
            .ns
            .net_id()
            .map_or(0, |net| signal_all(&net, Signal::SIGCONT));
        tracing::info!(node = %self.name, processes = n, "node resumed");
        n
    }

    /// SIGTERMs everything in the node, waits (bounded) for it to exit, then kills the rest.
    pub fn stop(&mut self) {
        // A stopped process acts on SIGTERM only once continued.
        self.resume();
        let net = self.ns.net_id();
        let recorded = net
            .as_deref()
            .map(|n| loops::record(&processes_in(n), &self.dir))
            .unwrap_or_default();
        if let Some(net) = net
            && signal_all(&net, Signal::SIGTERM) > 0
            && !wait_gone(&net, STOP_TIMEOUT)
        {
            tracing::warn!(node = %self.name, "processes did not exit in time; killing");
        }
        self.kill_with(recorded);
    }

    /// Stops the node and starts it again with the same name, address and directories.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start()
    }

    fn reap(&mut self) {
        if let Some(mut h) = self.holder.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
        let (host, _) = self.veth();
        if link_exists(&host) {
            let _ = ip(&["link", "del", &host]);
        }
        let _ = std::fs::remove_file(self.dir.join("holder.pid"));
        self.ns.0.store(0, Ordering::SeqCst);
        self.paused = false;
        tracing::info!(node = %self.name, "node stopped");
    }
}

/// Whether process `pid` is stopped (state `T` in `/proc/<pid>/stat`), gone (a zombie), or
/// will stop before it runs again: in an uninterruptible wait (`D`, such as an fsync on a FUSE
/// mount whose server is a stopped process of the same node) with SIGSTOP pending.
fn stopped(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the command name, which is in parentheses and may hold any byte.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    match state {
        None | Some("T" | "Z" | "X") => true,
        Some("D") => stop_pending(pid),
        Some(_) => false,
    }
}

/// Whether `pid` stops as soon as it leaves the kernel: SIGSTOP pending (its `ShdPnd` or
/// `SigPnd` mask in `/proc/<pid>/status`), or the group stop begun (a thread of it stopped).
fn stop_pending(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let thread_stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                st.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    == Some("T")
            })
        });
    let bit = 1u64 << (Signal::SIGSTOP as i32 - 1);
    thread_stopped
        || status.lines().any(|l| {
            l.strip_prefix("ShdPnd:")
                .or_else(|| l.strip_prefix("SigPnd:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                .is_some_and(|m| m & bit != 0)
        })
}

/// Makes `target` exist in this mount namespace without touching the host: the nearest
/// existing ancestor gets an overlay (upper layer under `overlay_dir`) the rest is made in.
fn ensure_dir(target: &Path, overlay_dir: &Path, overlaid: &mut Vec<PathBuf>) -> Result<()> {
    if target.is_dir() {
        return Ok(());
    }
    let mut base = target;
    while !base.exists() {
        base = base
            .parent()
            .ok_or_else(|| Error::Internal(format!("{}: no ancestor", target.display())))?;
    }
    if !overlaid.iter().any(|o| o == base) {
        let name = base.display().to_string().replace('/', "_");
        let (upper, work) = (
            overlay_dir.join(&name).join("upper"),
            overlay_dir.join(&name).join("work"),
        );
        for d in [&upper, &work] {
            std::fs::create_dir_all(d).map_err(Error::internal)?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            base.display(),
            upper.display(),
            work.display()
        );
        if opts.matches(',').count() != 2 || opts.contains(':') {
            return Err(Error::Internal(format!(
                "overlay options with ',' or ':' in a path: {opts}"
            )));
        }
        mount(
            Some("overlay"),
            base,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| Error::Internal(format!("overlay on {}: {e}", base.display())))?;
        overlaid.push(base.to_path_buf());
    }
    std::fs::create_dir_all(target).map_err(Error::internal)
}

/// The nodes of a cluster and their network; `shutdown` removes all of it.
#[derive(Debug)]
pub struct Nodes {
    pub network: Network,
    pub nodes: Vec<Node>,
    down: bool,
}

impl Nodes {
    /// Creates the network and starts `names` (node-k is `names[k-1]`); undoes it all on failure.
    pub fn start(data_dir: &Path, names: &[String]) -> Result<Nodes> {
        let network = Network::create(data_dir)?;
        let mut out = Nodes {
            network,
            nodes: Vec::new(),
            down: false,
        };
        for (i, name) in names.iter().enumerate() {
            let mut n = Node::new(&out.network, data_dir, name, i + 1);
            if let Err(e) = n.start() {
                out.shutdown();
                return Err(e);
            }
            out.nodes.push(n);
        }
        Ok(out)
    }

    pub fn get(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.nodes.iter_mut().find(|n| n.name == name)
    }

    /// Stops every node, then removes the network (mounts, bind, bridge).
    pub fn shutdown(&mut self) {
        if std::mem::replace(&mut self.down, true) {
            return;
        }
        for n in &mut self.nodes {
            n.stop();
        }
        self.network.destroy();
    }
}

/// A cluster dropped without `shutdown` (a test that panicked) still leaves no node behind.
impl Drop for Nodes {
    fn drop(&mut self) {
        if !self.down {
            for n in &mut self.nodes {
                n.kill();
            }
            self.shutdown();
        }
    }
}
