//! Shared helpers for the harness's integration tests: a cluster in a temp
//! dir, the real kubectl, bounded polling, and stray process/mount checks.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_harness::{Cluster, ClusterConfig};

mod writer_pod;
#[allow(unused_imports)] // not every test uses the writer pod
pub use writer_pod::*;

pub const KUBECTL: &str = "/usr/bin/kubectl";

pub struct TestCluster {
    pub cluster: Option<Cluster>,
    pub dir: tempfile::TempDir,
}

impl TestCluster {
    pub async fn start(nodes: usize) -> TestCluster {
        Self::start_with(|c| ClusterConfig { nodes, ..c }).await
    }

    pub async fn start_with(f: impl FnOnce(ClusterConfig) -> ClusterConfig) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("cairn-harness-test")
            .tempdir()
            .unwrap();
        let cluster = Cluster::start(f(ClusterConfig::new(dir.path().join("data"), 0)))
            .await
            .unwrap();
        TestCluster {
            cluster: Some(cluster),
            dir,
        }
    }

    pub async fn kube(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        kube::Client::try_from(cfg).unwrap()
    }

    pub fn c(&self) -> &Cluster {
        self.cluster.as_ref().unwrap()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.c().kubeconfig.clone()
    }

    pub async fn kubectl(&self, args: &[&str]) -> Output {
        kubectl(&self.kubeconfig(), args, None).await
    }

    pub async fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        kubectl(&self.kubeconfig(), args, Some(input)).await
    }

    /// kubectl that must succeed; returns stdout.
    pub async fn must(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// kubectl with `input` on stdin that must succeed; returns stdout.
    pub async fn must_stdin(&self, args: &[&str], input: &str) -> String {
        let out = self.kubectl_stdin(args, input).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub async fn shutdown(mut self) {
        if let Some(c) = self.cluster.take() {
            c.shutdown().await;
        }
    }
}

/// `up --with-cairn` as a user installs it (`kubectl apply -k manifests/`) on 3 nodes, with
/// `images` (`NAME=DIR`) mapped besides the defaults; says how long it took.
pub async fn start_install(images: &[String]) -> TestCluster {
    use cairn_harness::cluster::CairnInstall;
    use cairn_harness::kubelet::images::ImageMap;
    for bin in ["storaged", "cairn-csi", "cairn-provisioner"] {
        assert!(
            cairn_harness::components::find_binary(bin).is_some(),
            "{bin} not built: run `cargo build --workspace` first"
        );
    }
    let mut map = ImageMap::with_defaults();
    for flag in images {
        map.add_flag(flag)
            .unwrap_or_else(|e| panic!("map the image {flag}: {e}"));
    }
    let started = Instant::now();
    let t = TestCluster::start_with(|c| ClusterConfig {
        nodes: 3,
        with_cairn: true,
        cairn_install: CairnInstall::Manifests,
        images: std::sync::Arc::new(map),
        ..c
    })
    .await;
    eprintln!("up --with-cairn (manifests) took {:?}", started.elapsed());
    t
}

/// An API-server-only cluster on `data`; another one on the same `data` finds its objects.
pub async fn api_only_at(data: &Path) -> Cluster {
    Cluster::start(ClusterConfig {
        api_only: true,
        ..ClusterConfig::new(data, 0)
    })
    .await
    .unwrap()
}

pub async fn kubectl(kubeconfig: &Path, args: &[&str], input: Option<&str>) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(KUBECTL);
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(i) = input {
        stdin.write_all(i.as_bytes()).await.unwrap();
    }
    drop(stdin);
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("kubectl finished in time")
        .unwrap()
}

/// Polls `f` every 200ms until it returns Some, failing after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
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
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// PIDs of processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let hit = ["cmdline", "environ"].iter().any(|f| {
            std::fs::read(e.path().join(f))
                .is_ok_and(|b| String::from_utf8_lossy(&b).contains(marker))
        });
        if hit {
            out.push(pid);
        }
    }
    out
}

/// Host mounts (in our own mount namespace) under `dir`, except the bind of `data/nodes`
/// on itself that the harness keeps while its nodes run (see `cairn_harness::node`).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_string_lossy().to_string();
    let nodes = dir.join("data").join("nodes").to_string_lossy().to_string();
    info.lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| m.starts_with(&d) && m != nodes)
        })
        .map(String::from)
        .collect()
}

/// Network links, mounts and processes of a cluster on `data` with bridge index `index`:
/// its bridge and veths, mounts under it, node holders and any process naming it.
pub fn leftovers(data: &Path, index: u8) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| *n == format!("cairnbr{index}") || n.starts_with(&format!("cb{index}h")))
        .map(|n| format!("link {n}"))
        .collect();
    out.extend(mounts_under(data).into_iter().map(|m| format!("mount {m}")));
    let mut pids = processes_with(&format!("cairn-node:{}", data.display()));
    pids.extend(processes_with(&data.display().to_string()));
    pids.sort();
    pids.dedup();
    out.extend(pids.into_iter().map(|p| format!("process {p}")));
    out
}

/// Stops the cluster and checks that nothing of it is left (after checking that the check
/// sees the live one).
pub async fn shutdown_leaves_nothing(t: TestCluster, data: &Path, index: u8) {
    assert!(
        !leftovers(data, index).is_empty(),
        "the check sees a live cluster"
    );
    t.shutdown().await;
    let left = leftovers(data, index);
    assert!(left.is_empty(), "left after teardown: {left:#?}");
}

/// A child process ended (SIGTERM, then SIGKILL after 10 s) when dropped.
pub struct Proc(Mutex<Child>);

impl Proc {
    pub fn spawn(cmd: &mut Command, log: &Path) -> Proc {
        let out = std::fs::File::create(log).unwrap();
        Proc(Mutex::new(
            cmd.stdout(out.try_clone().unwrap())
                .stderr(out)
                .stdin(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")),
        ))
    }

    pub fn id(&self) -> u32 {
        self.child().id()
    }

    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// SIGTERM, then SIGKILL after 10 s; the exit status.
    pub fn stop(&self) -> Option<std::process::ExitStatus> {
        use nix::sys::signal::{Signal, kill};
        let pid = nix::unistd::Pid::from_raw(self.child().id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        for _ in 0..200 {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut child = self.child();
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.stop();
        }
    }
}
