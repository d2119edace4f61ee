//! A restart of storaged's container or pod, in a cluster installed from `manifests/`, under
//! ext4 on a mounted 3-replica claim: the frontend host keeps the FUSE frontend (decision 064).

mod common;

use std::time::Duration;

use cairn_harness::chaos_pods::nemesis::{self, NodeFault};
use cairn_harness::chaos_pods::writer::{self, AckLog};
use cairn_harness::install::NAMESPACE;
use cairn_harness::kubelet::runtime;
use common::*;
use serde_json::Value;

/// The node the writer runs on, whose storaged is restarted.
const NODE: &str = "node-1";
/// Acknowledged records the writer must add after each restart (the volume serves again).
const PROGRESS: usize = 20;
const LIMIT: Duration = Duration::from_secs(120);
/// The longest the writer may wait for one write + fsync across a restart (issue 19).
const MAX_STALL: f64 = 10.0;

/// The pod of Cairn component `app` on `node`.
async fn pod_on(t: &TestCluster, app: &str, node: &str) -> Option<Value> {
    let sel = format!("app.kubernetes.io/name={app}");
    let pods = get_json(t, &["get", "pods", "-n", NAMESPACE, "-l", &sel]).await?;
    pods["items"]
        .as_array()?
        .iter()
        .find(|p| p["spec"]["nodeName"] == node && p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
}

/// The storaged container's pid on `node` while it runs (its pod's uid, the pid).
async fn storaged_pid(t: &TestCluster) -> Option<(String, u32)> {
    let pod = pod_on(t, "cairn-storaged", NODE).await?;
    let uid = pod["metadata"]["uid"].as_str()?.to_string();
    let pid = runtime::running(&uid, "storaged")?.pid;
    Some((uid, pid))
}

/// A process's argv, NUL-split (empty once it is gone).
fn argv(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The parent pid of `pid`.
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A process's resident memory in KiB (`VmRSS`), 0 once it is gone.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The `storaged frontend` processes serving `volume`.
fn frontends_of(volume: &str) -> Vec<u32> {
    processes_with(volume)
        .into_iter()
        .filter(|p| {
            let a = argv(*p);
            a.get(1).map(String::as_str) == Some("frontend")
                && a.windows(2).any(|w| w[0] == "--volume" && w[1] == volume)
        })
        .collect()
}

struct Writer {
    uid: String,
    log: std::path::PathBuf,
}

impl Writer {
    fn read(&self) -> AckLog {
        AckLog::read(&self.log)
    }

    /// `/data/REL` as the writer's container sees it (through its mount).
    fn path(&self, rel: &str) -> String {
        let pid = runtime::running(&self.uid, "writer")
            .expect("the writer runs")
            .pid;
        format!("/proc/{pid}/root/data/{rel}")
    }

    /// Panics with the writer's own words if a write or fsync failed, or it started again.
    fn no_error(&self, when: &str) -> AckLog {
        let l = self.read();
        assert!(
            l.errors.is_empty(),
            "{when}: the writer saw an I/O error: {:?}",
            l.errors
        );
        assert!(l.starts.len() <= 1, "{when}: the writer started again");
        l
    }

    /// Waits until the writer acknowledged `more` records more than it had, failing at once
    /// on an error.
    async fn progress(&self, what: &str, more: usize) -> AckLog {
        let base = self.read().acks.len();
        eventually(what, LIMIT, || async {
            let l = self.no_error(what);
            (l.acks.len() >= base + more).then_some(l)
        })
        .await
    }
}

/// The longest wait of one write + fsync that ended after `from` (the fault) and by `to`.
fn stall(log: &AckLog, from: f64, to: f64) -> f64 {
    log.latencies()
        .into_iter()
        .filter(|(t, _)| *t > from && *t <= to)
        .map(|(_, l)| l)
        .fold(0.0, f64::max)
}

/// Whether the pod's container `name` runs since `from` (a unix time) and is ready.
fn running_ready_since(pod: &Value, name: &str, from: f64) -> bool {
    let Some(c) = pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
    else {
        return false;
    };
    // Statuses carry whole seconds.
    let since = c["state"]["running"]["startedAt"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .is_some_and(|t| t.timestamp() as f64 >= from.floor());
    since && c["ready"] == true && ready(pod)
}

/// Waits until `NODE`'s storaged runs another process than `old` (a container started after
/// `from`) and is Ready; how long after `from` that was.
async fn storaged_back(t: &TestCluster, old: u32, from: f64) -> f64 {
    eventually("storaged running again, Ready", LIMIT, || async {
        let pod = pod_on(t, "cairn-storaged", NODE).await?;
        let (_, pid) = storaged_pid(t).await?;
        (pid != old && running_ready_since(&pod, "storaged", from)).then(unix_now)
    })
    .await
        - from
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storaged_restart_in_the_cluster_only_stalls_a_mounted_volume() {
    let started = std::time::Instant::now();
    let mut t = start_install(&[]).await;
    let data = t.dir.path().join("data");
    let index = t.c().machines.as_ref().expect("nodes").network.index;
    for node in ["node-1", "node-2", "node-3"] {
        let host = pod_on(&t, "cairn-frontend-host", node).await;
        assert!(
            host.as_ref().is_some_and(ready),
            "the frontend host on {node}: {host:?}"
        );
    }
    let (uid, log) = start_writer(&t, NODE, LIMIT).await;
    let w = Writer { log, uid };
    w.progress("the writer's first acks", PROGRESS).await;
    let handle = only_volume(&t).await;
    let frontend = match frontends_of(&handle)[..] {
        [pid] => pid,
        ref other => panic!("one frontend serves {handle}: {other:?}"),
    };
    // One loop device over the frontend's `disk` file, the one ext4 is on; a restarted storaged
    // adopts it (a second one would leak, and unstaging would detach the wrong one).
    let loops = fuse_loops(&t, NODE);
    assert_eq!(loops.len(), 1, "one loop device on {NODE}: {loops:?}");
    let parent = ppid(frontend).unwrap_or(0);
    eprintln!(
        "the frontend of {handle}: pid {frontend} ({} KiB resident), started by {:?} ({} KiB)",
        rss_kib(frontend),
        argv(parent),
        rss_kib(parent)
    );

    // (a) storaged's process dies (kill -9, as a crash or an OOM kill): the kubelet restarts
    // its container; (b) its pod is deleted: the DaemonSet creates another.
    for fault in ["container kill -9", "kubectl delete pod"] {
        let (_, old) = storaged_pid(&t).await.expect("storaged runs on the node");
        let from = unix_now();
        if fault == "kubectl delete pod" {
            let name = pod_on(&t, "cairn-storaged", NODE).await.unwrap()["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string();
            t.must(&["delete", "pod", "-n", NAMESPACE, &name, "--wait=false"])
                .await;
        } else {
            let c = t.cluster.as_mut().expect("the cluster runs");
            nemesis::inject(c, NodeFault::StoragedKill, NODE)
                .await
                .unwrap();
        }
        let back = storaged_back(&t, old, from).await;
        let log = w
            .progress(&format!("acks after the {fault}"), PROGRESS)
            .await;
        let worst = stall(&log, from, unix_now());
        eprintln!(
            "{fault}: storaged Ready again {back:.1}s later; the writer's longest write+fsync \
             {worst:.3}s; {} records acknowledged so far",
            log.acks.len()
        );
        assert!(worst < MAX_STALL, "{fault}: the writer stalled {worst:.3}s");
        assert_eq!(
            frontends_of(&handle),
            [frontend],
            "{fault}: the volume's frontend is the same process"
        );
        assert_eq!(
            fuse_loops(&t, NODE),
            loops,
            "{fault}: the volume's loop device is the same, and the only one"
        );
    }
    eprintln!(
        "the frontend after the writes: {} KiB resident",
        rss_kib(frontend)
    );

    // Every acknowledged record reads back, from the volume (direct I/O: not the page cache).
    std::fs::write(w.path("stop"), b"").unwrap();
    let log = eventually("the writer stopped", LIMIT, || async {
        let l = w.no_error("stopping");
        l.stopped.is_some().then_some(l)
    })
    .await;
    let out = std::process::Command::new("dd")
        .arg(format!("if={}", w.path("log")))
        .args(["iflag=direct", "bs=1M", "status=none"])
        .output()
        .expect("dd runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = writer::check(&out.stdout, &log);
    assert!(
        check.lost.is_empty(),
        "acknowledged but lost: {:?}",
        check.lost
    );
    assert_eq!(check.disordered, 0);
    assert_eq!(
        Some(check.intact),
        log.stopped,
        "the file holds every record"
    );
    eprintln!("{} records read back", check.intact);

    delete_writer(&t, LIMIT).await;
    shutdown_leaves_nothing(t, &data, index).await;
    let left = still_attached(&loops);
    assert!(left.is_empty(), "loop devices left attached: {left:?}");
    eprintln!("storaged_restart_in_cluster took {:?}", started.elapsed());
}
