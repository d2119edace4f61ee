//! `cairn-harness chaos --workload pods`: a harness cluster with Cairn installed, writer pods
//! appending fsynced records to Cairn volumes, whole-node faults from a seed, then the verdict.

pub mod nemesis;
pub mod verdict;
pub mod writer;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_chaos::report::RunReport;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::cluster::{CairnInstall, Cluster, ClusterConfig, kubelet_root};
use crate::error::{Error, Result};
use crate::kubelet::{Kubelet, runtime};
use crate::resources;
use nemesis::{NodeFault, Schedule};
use verdict::{FaultWindow, WriterResult};
use writer::AckLog;

/// The writer pods' label (`app=` this).
const APP: &str = "cairn-chaos-writer";
/// How long a node and the writers may take to be back after a heal, and other waits.
const RECOVERY_LIMIT: Duration = Duration::from_secs(180);

#[derive(Clone, Debug)]
pub struct PodsConfig {
    pub data_dir: PathBuf,
    pub nodes: usize,
    /// Writer pods, each with its own `cairn-replicated` claim, spread over the nodes.
    pub writers: usize,
    /// No fault starts after this much time of faults.
    pub duration: Duration,
    pub seed: u64,
    pub faults: Vec<NodeFault>,
    /// Turns true to end the run early (a signal): the active fault is healed, then the check.
    pub stop: Option<watch::Receiver<bool>>,
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct PodsOutcome {
    pub report: RunReport,
    pub writers: Vec<WriterResult>,
    pub faults: Vec<FaultWindow>,
    /// The unix time the first fault's schedule began (the plot's origin).
    pub t0: f64,
    pub took: Duration,
}

impl PodsOutcome {
    /// Nothing lost and no writer failed.
    pub fn clean(&self) -> bool {
        self.report.lost == 0 && !self.writers.iter().any(WriterResult::failed)
    }

    pub fn table(&self) -> String {
        verdict::table(
            &self.report,
            &self.writers,
            &self.faults,
            self.took.as_secs_f64(),
        )
    }

    pub fn plot(&self) -> String {
        let title = format!(
            "cairn-harness chaos --workload pods, seed {}: fsynced appends through pods",
            self.report.seed
        );
        verdict::plot(&self.writers, &self.faults, self.t0, &title)
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One writer pod: its name, node, uid once bound, and its container log.
#[derive(Clone, Debug)]
struct Writer {
    pod: String,
    claim: String,
    node: String,
    uid: String,
    log: PathBuf,
}

impl Writer {
    fn read(&self) -> AckLog {
        AckLog::read(&self.log)
    }

    /// A path under the writer's `/data` as its running container sees it.
    fn data_path(&self, rel: &str) -> Option<PathBuf> {
        runtime::running(&self.uid, "writer")
            .map(|r| PathBuf::from(format!("/proc/{}/root/data/{rel}", r.pid)))
    }
}

/// What the progress line shows besides the acks.
#[derive(Default)]
struct Status {
    faults: usize,
    active: Option<String>,
    logs: Vec<PathBuf>,
}

/// Prints `elapsed, acks, faults, fault active, errors` each second (a rewritten line on a
/// terminal, every 10 s otherwise) until aborted.
fn progress(status: Arc<Mutex<Status>>, started: Instant) -> tokio::task::JoinHandle<()> {
    let tty = std::io::stderr().is_terminal();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n = 0u64;
        loop {
            tick.tick().await;
            n += 1;
            if !tty && !n.is_multiple_of(10) {
                continue;
            }
            let (faults, active, logs) = {
                let s = status.lock().unwrap_or_else(|p| p.into_inner());
                (s.faults, s.active.clone(), s.logs.clone())
            };
            let (mut acks, mut errors) = (0, 0);
            for l in &logs {
                let log = AckLog::read(l);
                acks += log.acks.len();
                errors += log.errors.len();
            }
            let line = format!(
                "[{:>5.0}s] acks {acks}  faults {faults}  active {}  errors {errors}",
                started.elapsed().as_secs_f64(),
                active.as_deref().unwrap_or("-"),
            );
            match tty {
                true => eprint!("\r{line:<78}"),
                false => eprintln!("{line}"),
            }
        }
    })
}

/// Polls `f` every 200 ms until it returns Some; an error after `limit`.
async fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() >= limit {
            return Err(Error::Internal(format!(
                "timed out after {limit:?}: {what}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The real `kubectl` against the cluster, with `input` on stdin; its stdout.
async fn kubectl(kubeconfig: &Path, args: &[&str], input: Option<&str>) -> Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Internal(format!("kubectl: {e} (install kubectl)")))?;
    let mut stdin = child.stdin.take().expect("piped");
    if let Some(i) = input {
        stdin
            .write_all(i.as_bytes())
            .await
            .map_err(Error::internal)?;
    }
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .map_err(|_| Error::Internal(format!("kubectl {args:?} timed out")))?
        .map_err(Error::internal)?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(Error::Internal(format!(
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Writer `i`'s claim and pod, on node `node`.
fn manifests(i: usize, node: &str) -> [Value; 2] {
    [
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": format!("chaos-log-{i}"), "labels": {"app": APP}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "cairn-replicated",
                "resources": {"requests": {"storage": "256Mi"}}}}),
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("chaos-writer-{i}"), "labels": {"app": APP}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                "containers": [{"name": "writer", "image": "busybox",
                    "command": ["python3", "-c", writer::WRITER],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "volumes": [{"name": "data",
                    "persistentVolumeClaim": {"claimName": format!("chaos-log-{i}")}}]}}),
    ]
}

fn pod_uid(cluster: &Cluster, name: &str) -> Option<String> {
    cluster
        .client()
        .list_values(&resources::PODS)
        .into_iter()
        .find(|p| p["metadata"]["namespace"] == "default" && p["metadata"]["name"] == name)
        .and_then(|p| p["metadata"]["uid"].as_str().map(String::from))
}

/// Brings up the cluster (Cairn installed from the manifests, as `up --with-cairn` does), runs
/// the writers and the faults, checks every file, and tears it all down, also on an error.
pub async fn run(cfg: PodsConfig) -> Result<PodsOutcome> {
    let started = Instant::now();
    if cfg.nodes < 3 {
        return Err(Error::BadRequest(
            "--nodes: at least 3 (claims have 3 replicas)".into(),
        ));
    }
    let mut cluster = Cluster::start(ClusterConfig {
        with_cairn: true,
        cairn_install: CairnInstall::Manifests,
        ..ClusterConfig::new(&cfg.data_dir, cfg.nodes)
    })
    .await?;
    tracing::info!(
        took_s = started.elapsed().as_secs_f64(),
        "cluster up with Cairn"
    );
    let status = Arc::new(Mutex::new(Status::default()));
    let ticker = progress(status.clone(), started);
    let mut writers = Vec::new();
    let result = body(&cfg, &mut cluster, &status, &mut writers).await;
    ticker.abort();
    eprintln!();
    teardown(&cluster, &writers).await;
    cluster.shutdown().await;
    let (writers, faults, t0) = result?;
    let report = verdict::report(cfg.seed, &writers, &faults);
    Ok(PodsOutcome {
        report,
        writers,
        faults,
        t0,
        took: started.elapsed(),
    })
}

type Found = (Vec<WriterResult>, Vec<FaultWindow>, f64);

async fn body(
    cfg: &PodsConfig,
    cluster: &mut Cluster,
    status: &Mutex<Status>,
    writers: &mut Vec<Writer>,
) -> Result<Found> {
    let kubeconfig = cluster.kubeconfig.clone();
    for i in 0..cfg.writers {
        let node = cluster.nodes[i % cluster.nodes.len()].clone();
        for m in manifests(i, &node) {
            kubectl(&kubeconfig, &["apply", "-f", "-"], Some(&m.to_string())).await?;
        }
        let pod = format!("chaos-writer-{i}");
        let uid = until(&format!("{pod} created"), RECOVERY_LIMIT, || {
            pod_uid(cluster, &pod)
        })
        .await?;
        let log = Kubelet::log_path(&kubelet_root(&cfg.data_dir, &node), &uid, "writer");
        status.lock().expect("status").logs.push(log.clone());
        writers.push(Writer {
            pod,
            claim: format!("chaos-log-{i}"),
            node,
            uid,
            log,
        });
    }
    for w in writers.iter() {
        until(&format!("{}'s first acks", w.pod), RECOVERY_LIMIT, || {
            (w.read().acks.len() >= 10).then_some(())
        })
        .await?;
    }
    let faults = inject_all(cfg, cluster, status, writers).await?;
    let t0 = faults.first().map_or_else(unix_now, |f| f.start);
    // The writers stop; each file read through its pod's mount and checked.
    for w in writers.iter() {
        let stop = w
            .data_path("stop")
            .ok_or_else(|| Error::Internal(format!("{} is not running", w.pod)))?;
        std::fs::write(&stop, b"").map_err(Error::internal)?;
    }
    let mut out = Vec::new();
    for w in writers.iter() {
        let log = until(&format!("{} stopped", w.pod), RECOVERY_LIMIT, || {
            let l = w.read();
            l.stopped.is_some().then_some(l)
        })
        .await?;
        let path = w
            .data_path("log")
            .ok_or_else(|| Error::Internal(format!("{} is not running", w.pod)))?;
        let file = std::fs::read(&path).map_err(Error::internal)?;
        let check = writer::check(&file, &log);
        tracing::info!(pod = %w.pod, acks = log.acks.len(), intact = check.intact, lost = check.lost.len(), "writer checked");
        out.push(WriterResult {
            pod: w.pod.clone(),
            node: w.node.clone(),
            log,
            check,
        });
    }
    Ok((out, faults, t0))
}

/// Waits `d` or until the stop signal; whether the run is stopping.
async fn wait_or_stop(d: Duration, stop: &mut Option<watch::Receiver<bool>>) -> bool {
    match stop {
        Some(rx) => tokio::time::timeout(d, rx.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok()),
        None => {
            tokio::time::sleep(d).await;
            false
        }
    }
}

/// The fault schedule until `duration`: each fault injected, held, healed, then a wait until
/// its node is back and every writer acknowledged again (so at most one node is ever broken).
async fn inject_all(
    cfg: &PodsConfig,
    cluster: &mut Cluster,
    status: &Mutex<Status>,
    writers: &[Writer],
) -> Result<Vec<FaultWindow>> {
    let mut stop = cfg.stop.clone();
    let mut windows = Vec::new();
    let began = Instant::now();
    for step in Schedule::new(cfg.seed, &cfg.faults, cluster.nodes.len()) {
        if began.elapsed() >= cfg.duration || wait_or_stop(step.gap, &mut stop).await {
            break;
        }
        let node = cluster.nodes[step.node].clone();
        let since =
            chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0).unwrap_or_default();
        let start = unix_now();
        status.lock().expect("status").active = Some(format!("{} {node}", step.kind.name()));
        tracing::info!(kind = step.kind.name(), %node, hold_ms = step.hold.as_millis() as u64, "fault");
        if let Err(e) = nemesis::inject(cluster, step.kind, &node).await {
            // Whatever part of the fault took effect is undone before the run ends.
            if let Err(h) = nemesis::heal(cluster, step.kind, &node).await {
                tracing::warn!(%node, error = %h, "healing a fault that failed");
            }
            return Err(e);
        }
        wait_or_stop(step.hold, &mut stop).await;
        nemesis::heal(cluster, step.kind, &node).await?;
        let end = unix_now();
        {
            let mut s = status.lock().expect("status");
            s.faults += 1;
            s.active = Some(format!("recovery of {node}"));
        }
        let what = format!("{node} back after {}", step.kind.name());
        until(&what, RECOVERY_LIMIT, || {
            let back = nemesis::recovered(cluster, step.kind, &node, since);
            let acked = writers
                .iter()
                .all(|w| w.read().acks.last().is_some_and(|a| a.1 > end));
            (back && acked).then_some(())
        })
        .await?;
        status.lock().expect("status").active = None;
        windows.push(FaultWindow {
            kind: step.kind,
            node,
            start,
            end,
            recovered: unix_now(),
        });
    }
    Ok(windows)
}

/// Deletes the writers and their claims and waits (bounded) until their volumes are gone.
async fn teardown(cluster: &Cluster, writers: &[Writer]) {
    let kc = &cluster.kubeconfig;
    let sel = format!("app={APP}");
    for what in ["pod", "pvc"] {
        if let Err(e) = kubectl(kc, &["delete", what, "-l", &sel, "--wait=false"], None).await {
            tracing::warn!(error = %e, "teardown: delete {what}");
        }
    }
    let claims: Vec<&str> = writers.iter().map(|w| w.claim.as_str()).collect();
    let gone = until("the writers' volumes deleted", RECOVERY_LIMIT, || {
        let pvs = cluster.client().list_values(&resources::PVS);
        (!pvs.iter().any(|pv| {
            pv["spec"]["claimRef"]["name"]
                .as_str()
                .is_some_and(|c| claims.contains(&c))
        }))
        .then_some(())
    })
    .await;
    if let Err(e) = gone {
        tracing::warn!(error = %e, "teardown");
    }
}
