//! The container runtime: each container is a real process in its own session
//! and private mount namespace, pivoted into a per-container view of `/`.

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use nix::mount::{MntFlags, MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// One volume as the container sees it.
#[derive(Debug, Clone)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
    pub propagation: Propagation,
}

/// A volume mount's `mountPropagation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// `None`: the container sees the volume as it was when it started.
    #[default]
    Private,
    /// Mounts the node makes later below the volume appear in the container.
    HostToContainer,
    /// Also the container's mounts below the volume appear in the node (a CSI node
    /// plugin staging volumes); the node's mount there must be shared.
    Bidirectional,
}

impl Propagation {
    pub fn parse(mode: Option<&str>) -> Propagation {
        match mode {
            Some("HostToContainer") => Propagation::HostToContainer,
            Some("Bidirectional") => Propagation::Bidirectional,
            _ => Propagation::Private,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    pub log_path: PathBuf,
    /// An empty directory on the host that becomes the container's `/`.
    pub rootfs: PathBuf,
    /// The pod's hostname (its own UTS namespace, as in a real pod).
    pub hostname: String,
    /// The node the container runs on (joined before anything else), or the host's.
    pub node: Option<crate::node::Namespaces>,
}

/// The command a container without one runs: idle until told to stop.
pub const PLACEHOLDER: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

/// A step of the mount plan, run in the child between fork and exec.
#[derive(Debug)]
enum Op {
    /// Every mount of the container's copy of the node becomes private (no propagation).
    PrivateAll,
    /// One mount becomes a slave: it receives the node's mounts and sends none back.
    Slave(CString),
    Tmpfs(CString),
    Mkdir(CString),
    Touch(CString),
    Symlink(CString, CString),
    Bind(CString, CString, bool),
    ReadOnly(CString),
    /// Lazily detaches the copy of a host mount (gone already is fine).
    Detach(CString),
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// `path` as this process reaches it in the node whose `/` is `view`.
fn seen(view: &Path, path: &Path) -> PathBuf {
    view.join(path.strip_prefix("/").unwrap_or(path))
}

/// Replicates the node directory `dir`'s entries under `root + dir` (already a tmpfs).
fn replicate(root: &Path, view: &Path, dir: &Path, ops: &mut Vec<Op>) -> std::io::Result<()> {
    for e in std::fs::read_dir(seen(view, dir))? {
        let e = e?;
        let host = dir.join(e.file_name());
        let inside = root.join(host.strip_prefix("/").unwrap_or(&host));
        let ft = e.file_type()?;
        if ft.is_symlink() {
            ops.push(Op::Symlink(c(&std::fs::read_link(e.path())?), c(&inside)));
        } else if ft.is_dir() {
            ops.push(Op::Mkdir(c(&inside)));
            ops.push(Op::Bind(c(&host), c(&inside), true));
        } else {
            ops.push(Op::Touch(c(&inside)));
            ops.push(Op::Bind(c(&host), c(&inside), false));
        }
    }
    Ok(())
}

/// Host mounts a container must not hold a copy of: every mount below the top level
/// outside /dev, /proc and /sys (other pods' volumes, staging mounts, FUSE exports).
/// A copy in the container's private namespace keeps that filesystem alive after the
/// host unmounts it, so a volume staged before this container started could not be
/// unstaged (its loop device stays busy) until the container exits. A real runtime
/// starts from an image and binds only the declared mounts, so it never holds them.
pub(crate) fn hidden_host_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = cairn_csi::mount::parse_mountinfo(mountinfo)
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| {
            let mut comps = p.components().filter(|c| matches!(c, Component::Normal(_)));
            let top = comps.next();
            comps.next().is_some()
                && !matches!(
                    top.and_then(|t| t.as_os_str().to_str()),
                    Some("dev" | "proc" | "sys")
                )
        })
        .collect();
    // Parents sort before their children, so detaching them first leaves less to do.
    out.sort();
    out.dedup();
    out
}

/// Detaches the copies, made by replicating the host directory `under`, of hidden
/// host mounts, except one holding a declared mount's target. `hidden` leaves out the
/// mounts a Bidirectional volume shares with the node: a copy of those is a peer of the
/// node's, so detaching it would unmount the node's own (a staged volume).
fn hide(root: &Path, under: &Path, hidden: &[PathBuf], targets: &[PathBuf], ops: &mut Vec<Op>) {
    for h in hidden
        .iter()
        .filter(|h| h.starts_with(under) && *h != under)
    {
        if targets.iter().any(|t| t.starts_with(h)) {
            continue;
        }
        ops.push(Op::Detach(c(&root.join(h.strip_prefix("/").unwrap_or(h)))));
    }
}

/// Plans the container's root: a tmpfs holding binds of the host's top-level
/// entries (less other mounts below them), with each mount target created on
/// tmpfs (never on the host) and the volume bound over it.
fn plan(spec: &ContainerSpec) -> std::io::Result<Vec<Op>> {
    let root = &spec.rootfs;
    // The node's view (its mounts, its `/`) when the container runs on one.
    let (view, info) = match &spec.node {
        Some(n) => (n.root(), n.proc("mountinfo")),
        None => (PathBuf::from("/"), PathBuf::from("/proc/self/mountinfo")),
    };
    let info = std::fs::read_to_string(info)?;
    let (mut ops, shared) = propagation(spec, &info);
    let mut hidden = hidden_host_mounts(&info);
    hidden.retain(|h| !shared.iter().any(|s| h.starts_with(s)));
    let targets: Vec<PathBuf> = spec
        .mounts
        .iter()
        .map(|m| Path::new("/").join(&m.target))
        .collect();
    ops.push(Op::Tmpfs(c(root)));
    replicate(root, &view, Path::new("/"), &mut ops)?;
    hide(root, Path::new("/"), &hidden, &targets, &mut ops);
    // Directories (container paths) that live on a tmpfs of ours: safe to mkdir in.
    let mut owned: BTreeSet<PathBuf> = BTreeSet::from([PathBuf::from("/")]);
    let mut mounts = spec.mounts.clone();
    mounts.sort_by_key(|m| m.target.matches('/').count());
    for m in &mounts {
        let target: PathBuf = Path::new(&m.target)
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let mut cur = PathBuf::from("/");
        for comp in target.components() {
            let next = cur.join(comp);
            if !owned.contains(&next) && !seen(&view, &next).exists() {
                if !owned.contains(&cur) {
                    // Shadow the host directory with a tmpfs holding binds of its entries.
                    let inside = root.join(cur.strip_prefix("/").unwrap_or(&cur));
                    ops.push(Op::Tmpfs(c(&inside)));
                    replicate(root, &view, &cur, &mut ops)?;
                    hide(root, &cur, &hidden, &targets, &mut ops);
                    owned.insert(cur.clone());
                }
                ops.push(Op::Mkdir(c(
                    &root.join(next.strip_prefix("/").unwrap_or(&next))
                )));
                owned.insert(next.clone());
            }
            cur = next;
        }
        let inside = root.join(cur.strip_prefix("/").unwrap_or(&cur));
        ops.push(Op::Bind(c(&m.source), c(&inside), true));
        if m.read_only {
            ops.push(Op::ReadOnly(c(&inside)));
        }
    }
    Ok(ops)
}

/// How the container's copy of the node's mounts propagates, as the first steps of the
/// plan, and the node mounts left shared with it. Without `HostToContainer` or
/// `Bidirectional` volumes every mount is private. With them every mount becomes a slave
/// (what the node mounts later reaches the container, as containerd's `rslave`), except,
/// for a Bidirectional volume, the node mount holding its source and those below it,
/// which stay peers of the node's, so the bind of the source is one too (`rshared`).
fn propagation(spec: &ContainerSpec, mountinfo: &str) -> (Vec<Op>, Vec<PathBuf>) {
    if spec
        .mounts
        .iter()
        .all(|m| m.propagation == Propagation::Private)
    {
        return (vec![Op::PrivateAll], Vec::new());
    }
    let points: Vec<PathBuf> = cairn_csi::mount::parse_mountinfo(mountinfo)
        .into_iter()
        .map(|m| m.mount_point)
        .collect();
    let shared: Vec<PathBuf> = spec
        .mounts
        .iter()
        .filter(|m| m.propagation == Propagation::Bidirectional)
        .filter_map(|m| {
            points
                .iter()
                .filter(|p| m.source.starts_with(p))
                .max_by_key(|p| p.components().count())
                .cloned()
        })
        .filter(|p| p != Path::new("/"))
        .collect();
    let mut ops = Vec::new();
    for p in &points {
        if !shared.iter().any(|s| p.starts_with(s)) {
            ops.push(Op::Slave(c(p)));
        }
    }
    (ops, shared)
}

fn run_ops(ops: &[Op], root: &CString, workdir: &CString, hostname: &[u8]) -> nix::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)?;
    // SAFETY: a plain syscall on a buffer that outlives it.
    nix::errno::Errno::result(unsafe {
        nix::libc::sethostname(hostname.as_ptr().cast(), hostname.len())
    })?;
    for op in ops {
        match op {
            Op::PrivateAll => mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )?,
            Op::Slave(p) => match mount(
                None::<&str>,
                p.as_c_str(),
                None::<&str>,
                MsFlags::MS_SLAVE,
                None::<&str>,
            ) {
                // Covered by another mount, or gone: nothing to change there.
                Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(e),
            },
            Op::Tmpfs(p) => mount(
                Some("tmpfs"),
                p.as_c_str(),
                Some("tmpfs"),
                MsFlags::empty(),
                Some("mode=755"),
            )?,
            Op::Mkdir(p) => match nix::unistd::mkdir(
                p.as_c_str(),
                nix::sys::stat::Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(e),
            },
            Op::Touch(p) => {
                let fd = nix::fcntl::open(
                    p.as_c_str(),
                    nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY,
                    nix::sys::stat::Mode::from_bits_truncate(0o644),
                )?;
                drop(fd);
            }
            Op::Symlink(target, link) => match nix::unistd::symlinkat(
                target.as_c_str(),
                nix::fcntl::AT_FDCWD,
                link.as_c_str(),
            ) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(e),
            },
            Op::Bind(src, dst, rec) => {
                let flags = if *rec {
                    MsFlags::MS_BIND | MsFlags::MS_REC
                } else {
                    MsFlags::MS_BIND
                };
                mount(
                    Some(src.as_c_str()),
                    dst.as_c_str(),
                    None::<&str>,
                    flags,
                    None::<&str>,
                )?;
            }
            Op::ReadOnly(p) => mount(
                None::<&str>,
                p.as_c_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )?,
            Op::Detach(p) => match nix::mount::umount2(p.as_c_str(), MntFlags::MNT_DETACH) {
                // Not there: under a mount detached already, or not replicated.
                Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(e),
            },
        }
    }
    // pivot_root, not chroot: a chroot would leave the namespace's copy of the whole
    // host tree mounted (out of sight) for the container's lifetime, holding every
    // filesystem mounted on the host at start, as the hidden copies above would.
    let old_root = nix::fcntl::open(
        c"/",
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::chdir(root.as_c_str())?;
    nix::unistd::pivot_root(c".", c".")?;
    // The old root holds copies shared with the node (Bidirectional): made slaves first,
    // detaching it cannot unmount anything of the node's. As runc does, "." is the old
    // root reached through its own descriptor, never the new root below it.
    nix::unistd::fchdir(&old_root)?;
    mount(
        None::<&str>,
        c".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )?;
    nix::mount::umount2(c".", MntFlags::MNT_DETACH)?;
    drop(old_root);
    nix::unistd::chdir(workdir.as_c_str())?;
    Ok(())
}

/// Starts the container's process; it leads its own process group.
pub fn spawn(spec: &ContainerSpec) -> std::io::Result<tokio::process::Child> {
    std::fs::create_dir_all(&spec.rootfs)?;
    if let Some(dir) = spec.log_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)?;
    let ops = plan(spec)?;
    let node = spec.node.as_ref().map(|n| n.open()).transpose()?;
    let root = c(&spec.rootfs);
    let workdir =
        CString::new(spec.working_dir.clone().unwrap_or_else(|| "/".into())).unwrap_or_default();
    let hostname = spec.hostname.clone().into_bytes();
    let argv = if spec.argv.is_empty() {
        vec!["/bin/sh".to_string(), "-c".into(), PLACEHOLDER.into()]
    } else {
        spec.argv.clone()
    };
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(spec.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: the closure only makes syscalls on data prepared before fork
    // (no allocation, no locks), as pre_exec requires.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if let Some(n) = &node {
                n.join().map_err(std::io::Error::from)?;
            }
            run_ops(&ops, &root, &workdir, &hostname).map_err(std::io::Error::from)
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(false);
    cmd.spawn()
}

/// Signals a container's whole process group.
pub fn signal(pid: u32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pid as i32), sig);
}

/// A running container, as `kubectl exec` needs it: the process whose mount namespace
/// (root and volumes) a command joins, and the container's environment and directory.
#[derive(Debug, Clone)]
pub struct Running {
    pub pid: u32,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// The container's mount namespace (`mnt:[inode]`), read when it started.
    pub mnt_ns: Option<String>,
    /// That namespace held open until `forget` has killed what is left in it: once its last
    /// process is gone the kernel could give its inode to a container starting meanwhile,
    /// which `forget` would then kill.
    _mnt_ns_hold: Option<std::sync::Arc<std::fs::File>>,
}

type RunningKey = (String, String);

/// Running containers of every kubelet in this process, by (pod uid, container name).
static RUNNING: std::sync::LazyLock<std::sync::Mutex<HashMap<RunningKey, Running>>> =
    std::sync::LazyLock::new(Default::default);

fn running_map() -> std::sync::MutexGuard<'static, HashMap<RunningKey, Running>> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records a started container until `forget` with the same pid.
pub fn remember(pod_uid: &str, container: &str, pid: u32, spec: &ContainerSpec) {
    let r = Running {
        pid,
        env: spec.env.clone(),
        working_dir: spec.working_dir.clone(),
        mnt_ns: mnt_ns_of(&pid.to_string()),
        _mnt_ns_hold: std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
            .ok()
            .map(std::sync::Arc::new),
    };
    running_map().insert((pod_uid.to_string(), container.to_string()), r);
}

fn mnt_ns_of(pid: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

/// Called once a container's main process has exited: forgets it, and kills what is
/// still running in its mount namespace (processes it left behind, `kubectl exec`
/// sessions). A container runtime does the same: when a container's init exits, the
/// kernel kills the rest of its PID namespace.
pub fn forget(pod_uid: &str, container: &str, pid: u32) {
    let gone = {
        let mut m = running_map();
        let key = (pod_uid.to_string(), container.to_string());
        if m.get(&key).is_some_and(|r| r.pid == pid) {
            m.remove(&key)
        } else {
            None
        }
    };
    // `gone` (and its hold on the namespace) lives until the kill is done.
    if let Some(ns) = gone.as_ref().and_then(|r| r.mnt_ns.as_deref()) {
        kill_namespace(ns);
    }
    drop(gone);
}

/// SIGKILLs every process in mount namespace `ns`, unless it is this process's own or
/// PID 1's (the host's): containers always have one of their own.
fn kill_namespace(ns: &str) {
    if mnt_ns_of("self").as_deref() == Some(ns) || mnt_ns_of("1").as_deref() == Some(ns) {
        return;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let name = p.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<i32>() else {
            continue;
        };
        if mnt_ns_of(&name).as_deref() == Some(ns) {
            tracing::info!(pid, ns, "killing a process left in an exited container");
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

pub fn running(pod_uid: &str, container: &str) -> Option<Running> {
    running_map()
        .get(&(pod_uid.to_string(), container.to_string()))
        .cloned()
}

/// Starts `argv` inside the running container `target` (its mount namespace, so its
/// root and volumes; its environment and working directory), in a session of its own.
pub fn exec_in(target: &Running, argv: &[String]) -> std::io::Result<tokio::process::Child> {
    let Some(program) = argv.first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "you must specify at least one command for the container",
        ));
    };
    let ns = std::fs::File::open(format!("/proc/{}/ns/mnt", target.pid))?;
    let uts = std::fs::File::open(format!("/proc/{}/ns/uts", target.pid))?;
    let net = std::fs::File::open(format!("/proc/{}/ns/net", target.pid))?;
    let (ns_fd, uts_fd, net_fd) = (
        std::os::fd::AsRawFd::as_raw_fd(&ns),
        std::os::fd::AsRawFd::as_raw_fd(&uts),
        std::os::fd::AsRawFd::as_raw_fd(&net),
    );
    let workdir =
        CString::new(target.working_dir.clone().unwrap_or_else(|| "/".into())).unwrap_or_default();
    let mut cmd = std::process::Command::new(program);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(target.env.iter().cloned())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only syscalls on data prepared before fork, as pre_exec requires; `ns`
    // stays open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            let net = std::os::fd::BorrowedFd::borrow_raw(net_fd);
            nix::sched::setns(net, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            let uts = std::os::fd::BorrowedFd::borrow_raw(uts_fd);
            nix::sched::setns(uts, CloneFlags::CLONE_NEWUTS).map_err(std::io::Error::from)?;
            let fd = std::os::fd::BorrowedFd::borrow_raw(ns_fd);
            nix::sched::setns(fd, CloneFlags::CLONE_NEWNS).map_err(std::io::Error::from)?;
            nix::unistd::chdir(workdir.as_c_str()).map_err(std::io::Error::from)
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let child = cmd.spawn();
    drop((ns, uts, net));
    child
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn volumes_appear_at_absolute_paths_without_touching_the_host() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        let target = format!("/cairn-test-{}/data", std::process::id());
        assert!(!Path::new(&target).exists());
        let spec = ContainerSpec {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("echo hi > {target}/f && echo $GREETING"),
            ],
            env: vec![
                ("GREETING".into(), "hello".into()),
                ("PATH".into(), "/usr/bin:/bin".into()),
            ],
            working_dir: None,
            mounts: vec![Mount {
                source: vol.clone(),
                target: target.clone(),
                read_only: false,
                propagation: Propagation::Private,
            }],
            log_path: tmp.path().join("log"),
            rootfs: tmp.path().join("rootfs"),
            hostname: "test-pod".into(),
            node: None,
        };
        let status = spawn(&spec).unwrap().wait().await.unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read_to_string(vol.join("f")).unwrap(), "hi\n");
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("log")).unwrap(),
            "hello\n"
        );
        assert!(
            !Path::new(&target).exists(),
            "the host must not see the mount target"
        );
    }

    #[test]
    fn mountinfo_paths_are_unescaped_and_only_nested_host_mounts_are_hidden() {
        let info = "\
22 1 8:1 / / rw - ext4 /dev/vda rw
23 22 0:5 / /dev rw - devtmpfs udev rw
24 23 0:6 / /dev/pts rw - devpts devpts rw
25 22 0:7 / /sys/fs/cgroup rw - cgroup2 cgroup rw
26 22 0:8 / /run rw - tmpfs tmpfs rw
27 22 7:1 / /tmp/k/plugins/staging\\040dir rw - ext4 /dev/loop1 rw
28 22 0:9 / /run/user/0 rw - tmpfs tmpfs rw
";
        assert_eq!(
            hidden_host_mounts(info),
            vec![
                PathBuf::from("/run/user/0"),
                PathBuf::from("/tmp/k/plugins/staging dir")
            ]
        );
    }

    /// A volume staged on the host before a container starts must not be held by that
    /// container: once the host unmounts it and detaches its loop device, the device
    /// goes while the container still runs (else the volume could not be unstaged).
    #[tokio::test]
    async fn containers_do_not_pin_filesystems_mounted_on_the_host() {
        let sh = |cmd: String| {
            let o = std::process::Command::new("sh")
                .args(["-c", &cmd])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        };
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        sh(format!("mkfs.ext4 -q -F {}", img.display()));
        let dev = sh(format!("losetup -f --show {}", img.display()));
        let other = tmp.path().join("other-pod-volume");
        std::fs::create_dir_all(&other).unwrap();
        sh(format!("mount {dev} {}", other.display()));
        let log = tmp.path().join("log");
        let spec = ContainerSpec {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo up; exec sleep 60".into(),
            ],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            working_dir: None,
            mounts: vec![],
            log_path: log.clone(),
            rootfs: tmp.path().join("rootfs"),
            hostname: "test-pod".into(),
            node: None,
        };
        let mut child = spawn(&spec).unwrap();
        let pid = child.id().unwrap();
        let bound = |d: &str| {
            sh("losetup -l -n -O NAME".into())
                .lines()
                .any(|l| l.trim() == d)
        };
        let mut started = false;
        for _ in 0..200 {
            started = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("up");
            if started {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        sh(format!("umount {}", other.display()));
        sh(format!("losetup -d {dev}"));
        let mut released = false;
        for _ in 0..100 {
            released = !bound(&dev);
            if released {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        signal(pid, Signal::SIGKILL);
        let _ = child.wait().await;
        assert!(started, "the container did not start");
        assert!(released, "{dev} stayed in use while the container ran");
    }

    #[tokio::test]
    async fn read_only_mounts_refuse_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        let spec = ContainerSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), "echo x > /ro/f".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            working_dir: None,
            mounts: vec![Mount {
                source: vol.clone(),
                target: "/ro".into(),
                read_only: true,
                propagation: Propagation::Private,
            }],
            log_path: tmp.path().join("log"),
            rootfs: tmp.path().join("rootfs"),
            hostname: "test-pod".into(),
            node: None,
        };
        let status = spawn(&spec).unwrap().wait().await.unwrap();
        assert!(!status.success());
        assert!(!vol.join("f").exists());
    }
}
