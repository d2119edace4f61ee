//! The end-to-end fixture: a `cairn-harness` cluster with Cairn (`up --with-cairn`, the real
//! install or the harness's processes) in a temp dir, kubectl, cairnctl, bounded polling, and a
//! leak check after teardown. Which tests need the processes: docs/decisions/043.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_harness::cluster::CairnInstall;
use cairn_harness::components::{CairnLayout, Components, PROVISIONER, find_binary};
use cairn_harness::{Cluster, ClusterConfig};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// One cluster at a time: each runs 3 storaged, 4 cairn-csi and 4 provisioners.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// What a test body gets: where the cluster is and its Cairn processes.
pub struct Env {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub layout: CairnLayout,
    /// How Cairn runs: the manifests' pods, or the harness's processes (`components`).
    pub install: CairnInstall,
    /// Cairn's processes, with `CairnInstall::Processes` (else empty).
    pub components: Mutex<Components>,
}

/// `run_with` Cairn installed as a user installs it: `kubectl apply -k manifests/`, unless
/// `CAIRN_E2E_INSTALL=processes` asks for the harness's processes everywhere (to compare the
/// two, or to tell an install problem from a Cairn one).
pub async fn run<F, Fut>(body: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let install = match std::env::var("CAIRN_E2E_INSTALL").as_deref() {
        Ok("processes") => CairnInstall::Processes,
        Ok("manifests") | Err(_) => CairnInstall::Manifests,
        Ok(other) => panic!("CAIRN_E2E_INSTALL={other}: expected processes or manifests"),
    };
    run_with(install, body).await
}

/// `run_with` Cairn as processes of the harness, for the tests that stop, freeze, restart or
/// add one of them by name (docs/decisions/043).
pub async fn run_processes<F, Fut>(body: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    run_with(CairnInstall::Processes, body).await
}

/// Starts a 3-node cluster with Cairn installed the `install` way, runs `body`, then always
/// tears down and checks that no process, mount or loop device of the cluster is left. A
/// failure of `body` is re-raised after teardown, with the tails of the logs printed first.
pub async fn run_with<F, Fut>(install: CairnInstall, body: F)
where
    F: FnOnce(Arc<Env>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let _serial = SERIAL.lock().await;
    for bin in ["storaged", "cairn-csi", "cairn-provisioner", "cairnctl"] {
        assert!(
            find_binary(bin).is_some(),
            "{bin} not built: run `cargo build --workspace --bins` (or `cargo test --workspace`)"
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("cairn-e2e")
        .tempdir()
        .expect("tempdir");
    let data = tmp.path().join("data");
    let started = Instant::now();
    let mut cluster = Cluster::start(ClusterConfig {
        with_cairn: true,
        cairn_install: install,
        ..ClusterConfig::new(&data, 3)
    })
    .await
    .unwrap_or_else(|e| {
        dump_logs(&data);
        panic!("cluster with Cairn ({install:?}) starts: {e:?}")
    });
    eprintln!(
        "cluster with Cairn ({install:?}) up in {:?}",
        started.elapsed()
    );
    let env = Arc::new(Env {
        dir: data.clone(),
        kubeconfig: cluster.kubeconfig.clone(),
        layout: cluster.cairn.clone().expect("cairn layout"),
        install,
        components: Mutex::new(std::mem::take(&mut cluster.components)),
    });
    let result = tokio::spawn(body(env.clone())).await;
    if result.is_err() {
        dump_logs(&data);
    }
    cluster.components = std::mem::take(&mut *env.components.lock().await);
    cluster.shutdown().await;
    let leaks = leaks(tmp.path());
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
    assert!(leaks.is_empty(), "left behind after teardown: {leaks:#?}");
}

/// Container logs on every node: `DIR/nodes/<node>/kubelet/pods/<uid>/logs/<container>.log`.
fn container_logs(data: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let dirs = |p: PathBuf| {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect::<Vec<_>>()
    };
    for node in dirs(data.join("nodes")) {
        for pod in dirs(node.join("kubelet/pods")) {
            out.extend(dirs(pod.join("logs")));
        }
    }
    out.sort();
    out
}

/// Prints the tails of the component logs (processes) and container logs (pods).
fn dump_logs(data: &Path) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.extend(container_logs(data));
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        eprintln!("===== {} =====\n{tail}", path.display());
    }
}

/// Mounts, loop devices and processes that still refer to `dir`.
pub fn leaks(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    let mut out = Vec::new();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    out.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&d))
            .map(|l| format!("mount: {l}")),
    );
    if let Ok(o) = std::process::Command::new("losetup")
        .args(["-l", "-n", "-O", "NAME,BACK-FILE"])
        .output()
    {
        out.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains(&d))
                .map(|l| format!("loop: {l}")),
        );
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmd.contains(&d) {
                out.push(format!(
                    "process {}: {cmd}",
                    e.file_name().to_string_lossy()
                ));
            }
        }
    }
    out
}

/// Polls `f` every 250ms until it returns Some, or panics after `limit` naming `what`.
pub async fn poll<T, Fut>(what: &str, limit: Duration, mut f: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

async fn command(bin: &Path, args: &[&str], stdin: Option<&str>) -> Out {
    let mut child = tokio::process::Command::new(bin)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("stdin");
        w.write_all(input.as_bytes()).await.expect("write stdin");
        drop(w);
    }
    let o = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} hung", bin.display()))
        .expect("wait");
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

impl Env {
    pub async fn kubectl(&self, args: &[&str]) -> Out {
        let kc = format!("--kubeconfig={}", self.kubeconfig.display());
        let mut all = vec![kc.as_str()];
        all.extend_from_slice(args);
        command(Path::new("kubectl"), &all, None).await
    }

    /// kubectl that must succeed; returns stdout.
    pub async fn must(&self, args: &[&str]) -> String {
        let o = self.kubectl(args).await;
        assert!(o.ok, "kubectl {args:?} failed: {}", o.stderr);
        o.stdout
    }

    /// `kubectl apply -f -` of `yaml`.
    pub async fn apply(&self, yaml: &str) {
        let kc = format!("--kubeconfig={}", self.kubeconfig.display());
        let o = command(Path::new("kubectl"), &[&kc, "apply", "-f", "-"], Some(yaml)).await;
        assert!(o.ok, "kubectl apply failed: {}\n{yaml}", o.stderr);
    }

    /// The object as JSON, or None when it does not exist.
    pub async fn get(&self, kind: &str, name: &str) -> Option<Value> {
        let o = self.kubectl(&["get", kind, name, "-o", "json"]).await;
        if !o.ok {
            assert!(
                o.stderr.contains("NotFound") || o.stderr.contains("not found"),
                "kubectl get {kind} {name}: {}",
                o.stderr
            );
            return None;
        }
        Some(serde_json::from_str(&o.stdout).expect("json"))
    }

    /// The items of a list.
    pub async fn list(&self, kind: &str, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["get", kind, "-o", "json"];
        args.extend_from_slice(extra);
        let v: Value = serde_json::from_str(&self.must(&args).await).expect("json");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    pub async fn phase(&self, kind: &str, name: &str) -> Option<String> {
        self.get(kind, name)
            .await
            .and_then(|v| v["status"]["phase"].as_str().map(str::to_string))
    }

    /// Waits for `kind/name` to reach `phase`.
    pub async fn wait_phase(&self, kind: &str, name: &str, phase: &str, limit: Duration) -> Value {
        poll(&format!("{kind}/{name} {phase}"), limit, || async {
            self.get(kind, name)
                .await
                .filter(|v| v["status"]["phase"] == phase)
        })
        .await
    }

    /// Waits until `kind/name` no longer exists.
    pub async fn wait_gone(&self, kind: &str, name: &str, limit: Duration) {
        poll(&format!("{kind}/{name} deleted"), limit, || async {
            self.get(kind, name).await.is_none().then_some(())
        })
        .await
    }

    /// The container log of a pod.
    pub async fn logs(&self, pod: &str) -> String {
        self.kubectl(&["logs", pod]).await.stdout
    }

    /// cairnctl against the cluster's storaged, which must succeed; returns stdout.
    pub async fn cairnctl(&self, args: &[&str]) -> String {
        let bin = find_binary("cairnctl").expect("cairnctl");
        let ep = format!("--endpoint={}", self.layout.storaged.join(","));
        // The harness runs storaged with mutual TLS and issues an `admin` certificate.
        let tls = format!("--tls-dir={}", self.layout.tls_dir("admin").display());
        let mut all = vec![ep.as_str(), tls.as_str(), "-o", "json"];
        all.extend_from_slice(args);
        let o = command(&bin, &all, None).await;
        assert!(o.ok, "cairnctl {args:?}: {}", o.stderr);
        o.stdout
    }

    /// storaged's volumes, through `cairnctl -o json volume ls`.
    pub async fn volumes(&self) -> Vec<Value> {
        serde_json::from_str::<Value>(&self.cairnctl(&["volume", "ls"]).await)
            .expect("json")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn volume_names(&self) -> BTreeSet<String> {
        self.volumes()
            .await
            .iter()
            .filter_map(|v| v["name"].as_str().map(str::to_string))
            .collect()
    }

    /// The CSI volume handles of the PVs of our driver.
    pub async fn pv_handles(&self) -> BTreeSet<String> {
        self.list("pv", &[])
            .await
            .iter()
            .filter(|pv| pv["spec"]["csi"]["driver"] == "csi.cairn.dev")
            .filter_map(|pv| {
                pv["spec"]["csi"]["volumeHandle"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    }

    /// The volume name of a bound claim.
    pub async fn bound_pv(&self, pvc: &str, limit: Duration) -> String {
        let v = self.wait_phase("pvc", pvc, "Bound", limit).await;
        v["spec"]["volumeName"]
            .as_str()
            .expect("volumeName")
            .to_string()
    }

    /// The full text of a component's log (`CairnInstall::Processes`).
    pub fn component_log(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(file)).unwrap_or_default()
    }

    /// What the controller-role provisioner logged: its process's log, or the logs of the
    /// `cairn-provisioner` containers of every controller pod (each replica, each restart).
    pub fn provisioner_log(&self) -> String {
        match self.install {
            CairnInstall::Processes => self.component_log(&format!("{PROVISIONER}.log")),
            CairnInstall::Manifests => container_logs(&self.dir)
                .iter()
                .filter(|p| p.file_name().is_some_and(|n| n == "cairn-provisioner.log"))
                .map(|p| std::fs::read_to_string(p).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// A PVC manifest.
pub fn pvc(name: &str, class: &str, size: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {name}\nspec:\n  storageClassName: {class}\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: {size}\n"
    )
}

/// A pod running `sh -c script` with `claim` at /data, optionally pinned to `node`.
pub fn pod(name: &str, claim: &str, node: Option<&str>, restart: &str, script: &str) -> String {
    let selector = node
        .map(|n| format!("  nodeSelector:\n    kubernetes.io/hostname: {n}\n"))
        .unwrap_or_default();
    let script = serde_json::to_string(script).expect("quote");
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{selector}  restartPolicy: {restart}\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: main\n    image: busybox\n    command: [\"sh\", \"-c\", {script}]\n    volumeMounts:\n    - name: data\n      mountPath: /data\n  volumes:\n  - name: data\n    persistentVolumeClaim:\n      claimName: {claim}\n"
    )
}
