//! Whole-node faults under an fs workload through a pod, CSI and a real ext4 on a 3-replica
//! Cairn volume: every record acknowledged after its fsync is in the file, intact and in order.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use cairn_harness::chaos_pods::writer::{AckLog, RECORD, record};
use cairn_harness::install::NAMESPACE;
use cairn_harness::kubelet::runtime;
use cairn_harness::registry::now;
use cairn_proto::cairn::v1 as pb;
use common::*;
use serde_json::{Value, json};

/// The node the writer runs on; the faults of the first part hit the other two.
const WRITER_NODE: &str = "node-1";
/// Acknowledged records the writer must add after each fault (the volume keeps serving).
const PROGRESS: usize = 20;
const LIMIT: Duration = Duration::from_secs(120);
/// The least time a fault lasts (it lasts until the writer made `PROGRESS` too).
const FAULT_MIN: Duration = Duration::from_secs(4);

/// What the writer printed, in order: its acks (sequence, time), starts, and its stop.
#[derive(Debug, Default)]
struct Log {
    acks: Vec<(u64, f64)>,
    /// Each start: (the sequence it goes on from, how many acks came before it).
    starts: Vec<(u64, usize)>,
    stopped: Option<u64>,
}

impl Log {
    fn acked(&self) -> usize {
        self.acks.len()
    }

    /// The highest sequence acknowledged before `t` (none: nothing yet).
    fn max_acked_before(&self, t: f64) -> Option<u64> {
        self.acks.iter().filter(|a| a.1 < t).map(|a| a.0).max()
    }

    /// Each start goes on past every record acknowledged before it (none was lost), and
    /// acks count up by one from there.
    fn check_order(&self) {
        assert_eq!(self.starts.first(), Some(&(0, 0)), "the first start");
        for (k, (from, pos)) in self.starts.iter().enumerate() {
            if let Some(max) = self.acks[..*pos].iter().map(|a| a.0).max() {
                assert!(
                    *from > max,
                    "start {k} from record {from}: records up to {max} were acknowledged"
                );
            }
            let end = self.starts.get(k + 1).map_or(self.acks.len(), |s| s.1);
            for (i, (n, _)) in self.acks[*pos..end].iter().enumerate() {
                assert_eq!(*n, from + i as u64, "ack {} after start {k}", pos + i);
            }
        }
    }

    /// The longest time without an ack within [from, to] (gaps clipped to it): the stall.
    fn stall(&self, from: f64, to: f64) -> f64 {
        let mut times: Vec<f64> = self.acks.iter().map(|a| a.1).collect();
        times.sort_by(f64::total_cmp);
        let mut prev = times.iter().copied().rfind(|t| *t <= from).unwrap_or(from);
        let mut worst: f64 = 0.0;
        for t in times.into_iter().filter(|t| *t > from) {
            worst = worst.max(t.min(to) - prev.max(from));
            if t >= to {
                break;
            }
            prev = t;
        }
        worst
    }
}

struct Writer {
    uid: String,
    log: PathBuf,
}

impl Writer {
    fn read(&self) -> Log {
        let a = AckLog::read(&self.log);
        Log {
            acks: a.acks,
            starts: a.starts.iter().map(|s| (s.0, s.2)).collect(),
            stopped: a.stopped,
        }
    }

    /// The writer's file as its container sees it (`/data/log` through its mount).
    fn container_path(&self, rel: &str) -> Option<PathBuf> {
        runtime::running(&self.uid, "writer")
            .map(|r| PathBuf::from(format!("/proc/{}/root/data/{rel}", r.pid)))
    }

    /// Waits until the writer acknowledged `more` records more than it had.
    async fn progress(&self, what: &str, more: usize) -> Log {
        self.progress_for(what, more, Duration::ZERO).await
    }

    /// Waits until the writer acknowledged `more` records more than it had, and `at_least`
    /// passed: how long a fault lasts.
    async fn progress_for(&self, what: &str, more: usize, at_least: Duration) -> Log {
        let base = self.read().acked();
        let from = std::time::Instant::now();
        eventually(what, LIMIT + at_least, || async {
            let l = self.read();
            (l.acked() >= base + more && from.elapsed() >= at_least).then_some(l)
        })
        .await
    }
}

/// The volume as storaged reports it (members asked), through any node that answers.
async fn volume(t: &TestCluster, name: &str) -> Option<pb::Volume> {
    let layout = t.c().cairn.as_ref()?;
    let sec = cairn_client::Security::from_flags(Some(&layout.tls_dir("admin")), false).ok()?;
    for a in &layout.storaged {
        let Ok(ep) = sec.endpoint(a) else { continue };
        let ep = ep
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5));
        let Ok(ch) = ep.connect().await else { continue };
        let mut v = pb::volume_service_client::VolumeServiceClient::new(ch);
        let req = pb::GetVolumeRequest { name: name.into() };
        if let Ok(r) = v.get_volume(req).await {
            return r.into_inner().volume;
        }
    }
    None
}

/// The volume is healthy and `node`'s replica is a leader or an up-to-date follower.
async fn caught_up(t: &TestCluster, name: &str, node: &str) -> Option<pb::Volume> {
    let v = volume(t, name).await?;
    let member = v.members.iter().find(|m| m.node_name == node)?;
    let current = matches!(
        member.state(),
        pb::ReplicaState::Leader | pb::ReplicaState::Follower
    );
    (v.health() == pb::VolumeHealth::Healthy && v.members.len() == 3 && current).then_some(v)
}

/// The node registered again after `since` (its Ready condition posted then) and its
/// storaged and node plugin pods run containers started after `since`, Ready.
async fn node_back(t: &TestCluster, node: &str, since: &str) {
    eventually(&format!("{node} registered again"), LIMIT, || async {
        let n = get_json(t, &["get", "node", node]).await?;
        let hb = n["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?["lastHeartbeatTime"]
            .as_str()?
            .to_string();
        (ready(&n) && hb.as_str() >= since).then_some(())
    })
    .await;
    for app in ["cairn-storaged", "cairn-csi-node"] {
        eventually(&format!("{app} running again on {node}"), LIMIT, || async {
            let sel = format!("app.kubernetes.io/name={app}");
            let pods = get_json(t, &["get", "pods", "-n", NAMESPACE, "-l", &sel]).await?;
            let pod = pods["items"]
                .as_array()?
                .iter()
                .find(|p| p["spec"]["nodeName"] == node)?
                .clone();
            let fresh = pod["status"]["containerStatuses"]
                .as_array()?
                .iter()
                .all(|c| {
                    c["state"]["running"]["startedAt"]
                        .as_str()
                        .is_some_and(|s| s >= since)
                });
            (fresh && ready(&pod)).then_some(())
        })
        .await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Kill,
    Pause,
}

fn cluster(t: &mut TestCluster) -> &mut cairn_harness::Cluster {
    t.cluster.as_mut().expect("the cluster runs")
}

/// Applies `fault` to `node` for `FAULT_MIN` at least: on another node than the writer's,
/// until the writer acknowledged `PROGRESS` records more (the volume keeps serving); on the
/// writer's, until the volume has a leader elsewhere. Then heals it and waits until the node
/// is back (registered, its storaged and node plugin running), its replica caught up, and the
/// writer acknowledged `PROGRESS` records more.
async fn inject(t: &mut TestCluster, w: &Writer, volume: &str, fault: Fault, node: &str) -> Window {
    let since = now();
    let start = unix_now();
    match fault {
        Fault::Kill => cluster(t).kill_node(node).await.unwrap(),
        Fault::Pause => {
            let stopped = cluster(t).pause_node(node).await.unwrap();
            assert!(stopped > 1, "{node} paused {stopped} processes");
            let again = cluster(t).pause_node(node).await.unwrap();
            assert_eq!(again, stopped, "a second pause changes nothing");
        }
    }
    let what = format!("{fault:?} of {node} lasted");
    if node == WRITER_NODE {
        let from = std::time::Instant::now();
        eventually(&what, LIMIT, || async {
            let v = self::volume(t, volume).await?;
            let leader = v.members.iter().find(|m| m.node_id == v.leader_node_id)?;
            (leader.node_name != node && from.elapsed() >= FAULT_MIN).then_some(())
        })
        .await;
    } else {
        w.progress_for(&what, PROGRESS, FAULT_MIN).await;
    }
    let healed = unix_now();
    match fault {
        Fault::Kill => {
            cluster(t).start_node(node).await.unwrap();
            node_back(t, node, &since).await;
            eprintln!(
                "{node} started: registered, storaged and node plugin Ready {:.1}s later",
                unix_now() - healed
            );
        }
        Fault::Pause => assert!(cluster(t).resume_node(node).await.unwrap() > 1),
    }
    eventually(&format!("{node}'s replica caught up"), LIMIT, || {
        caught_up(t, volume, node)
    })
    .await;
    let caught = unix_now() - healed;
    let l = w
        .progress(&format!("acks after the {what}"), PROGRESS)
        .await;
    let resumed = l.acks.iter().map(|a| a.1).find(|t| *t > healed);
    eprintln!(
        "{fault:?} {node} healed: replica caught up {caught:.1}s later, the writer's next ack \
         {:.1}s later",
        resumed.map_or(f64::NAN, |r| r - healed)
    );
    Window {
        fault: format!("{fault:?} {node}"),
        start,
        healed,
        recovered: unix_now(),
    }
}

/// One whole-node fault's window, for the report.
struct Window {
    fault: String,
    start: f64,
    healed: f64,
    recovered: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_fsynced_records_survive_whole_node_faults() {
    if let Ok(path) = std::env::var("CAIRN_TEST_LOG") {
        let file = std::fs::File::create(path).unwrap();
        let _ = tracing_subscriber::fmt()
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .try_init();
    }
    let started = std::time::Instant::now();
    let mut t = start_install(&[]).await;
    let data = t.dir.path().join("data");
    let index = t.c().machines.as_ref().expect("nodes").network.index;
    let (uid, log) = start_writer(&t, WRITER_NODE, LIMIT).await;
    let w = Writer { log, uid };
    w.progress("the writer's first acks", PROGRESS).await;
    let handle = only_volume(&t).await;
    let v = eventually("the volume healthy", LIMIT, || {
        caught_up(&t, &handle, "node-2")
    })
    .await;
    let replicas: Vec<&str> = v.members.iter().map(|m| m.node_name.as_str()).collect();
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    let mut windows = Vec::new();
    // Two other nodes: one killed whole (kubelet, storaged, node plugin at once) then started,
    // one paused then resumed; then the writer's own node killed and started.
    // The writer's node's loop device: its kill leaves it to the harness to detach.
    let mut loops = Vec::new();
    for (fault, node) in [
        (Fault::Kill, "node-2"),
        (Fault::Pause, "node-3"),
        (Fault::Kill, WRITER_NODE),
    ] {
        if node == WRITER_NODE {
            loops = fuse_loops(&t, node);
            assert_eq!(loops.len(), 1, "one loop device on {node}: {loops:?}");
        }
        windows.push(inject(&mut t, &w, &handle, fault, node).await);
    }
    loops.extend(fuse_loops(&t, WRITER_NODE));

    // The writer stops; every acknowledged record is in the file, in order and intact.
    let stop = w.container_path("stop").expect("the writer runs");
    std::fs::write(&stop, b"").unwrap();
    let log = eventually("the writer stopped", LIMIT, || async {
        let l = w.read();
        l.stopped.is_some().then_some(l)
    })
    .await;
    let file = std::fs::read(w.container_path("log").expect("the writer runs")).unwrap();
    let count = log.stopped.unwrap();
    assert_eq!(file.len(), count as usize * RECORD, "the file's length");
    for (n, rec) in file.chunks(RECORD).enumerate() {
        assert_eq!(rec, record(n as u64), "record {n}");
    }
    let max_ack = log.acks.iter().map(|a| a.0).max().unwrap();
    assert_eq!(
        max_ack + 1,
        count,
        "the last acknowledged record is the last"
    );
    log.check_order();
    assert_eq!(
        log.starts.len(),
        2,
        "the writer started again once: {:?}",
        log.starts
    );

    let (first, faulted) = (log.acks[0].1, windows[0].start);
    let before = log.stall(first, faulted);
    let rate = log.acks.iter().filter(|a| a.1 < faulted).count() as f64 / (faulted - first);
    eprintln!(
        "{} records acknowledged; before any fault {rate:.0} records/s, longest gap between \
         acks {before:.3}s",
        log.acked()
    );
    for wd in &windows {
        eprintln!(
            "{}: the writer stalled at most {:.3}s (fault {:.1}s, recovered {:.1}s after healing)",
            wd.fault,
            log.stall(wd.start, wd.recovered),
            wd.healed - wd.start,
            wd.recovered - wd.healed,
        );
        assert!(log.max_acked_before(wd.recovered) > log.max_acked_before(wd.start));
    }

    delete_writer(&t, LIMIT).await;
    shutdown_leaves_nothing(t, &data, index).await;
    let left = still_attached(&loops);
    assert!(left.is_empty(), "loop devices left attached: {left:?}");
    eprintln!("node_faults took {:?}", started.elapsed());
}

/// The state letter of process `pid` (`/proc/<pid>/stat`), `None` once it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A node's pause stops every process in it (and only those), a second pause changes
/// nothing, resume continues them; a paused node is killed and started again like any other.
#[test]
fn a_paused_node_stops_its_processes_until_resumed() {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-harness-test")
        .tempdir()
        .unwrap();
    let data = tmp.path().join("data");
    let names = ["node-1".to_string(), "node-2".to_string()];
    let mut nodes = cairn_harness::node::Nodes::start(&data, &names).expect("nodes");
    let index = nodes.network.index;
    let spawn_in = |node: usize| {
        let net = nodes.nodes[node].namespaces().proc("ns/net");
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", net.display()))
            .args(["sleep", "600"])
            .spawn()
            .expect("nsenter")
    };
    let (mut inside, mut outside) = (spawn_in(0), spawn_in(1));
    let (pin, pout) = (inside.id(), outside.id());
    eventually_blocking("sleep runs in both nodes", || {
        [pin, pout].iter().all(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.starts_with("sleep"))
        })
    });
    let node = &mut nodes.nodes[0];
    let stopped = node.pause().expect("pause");
    assert!(stopped >= 2, "holder and sleep: {stopped}");
    assert_eq!(proc_state(pin), Some('T'), "the node's process is stopped");
    assert_ne!(proc_state(pout), Some('T'), "another node's process runs");
    assert_eq!(node.pause().expect("pause again"), stopped);
    assert!(node.paused());
    assert_eq!(node.resume(), stopped);
    assert_eq!(node.resume(), 0, "a second resume changes nothing");
    eventually_blocking("the node's process runs again", || {
        proc_state(pin).is_some_and(|s| s != 'T')
    });
    node.pause().expect("pause");
    node.kill();
    assert!(!node.paused() && !node.running());
    let _ = inside.wait();
    node.start().expect("a killed paused node starts again");
    assert!(node.running() && !node.paused());
    nodes.shutdown();
    let _ = outside.wait();
    let left = leftovers(&data, index);
    assert!(left.is_empty(), "left after teardown: {left:#?}");
}

/// Polls `f` every 20 ms, failing after 10 s.
fn eventually_blocking(what: &str, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Ready condition of `obj` (a Node or a Pod as JSON).
fn ready_status(obj: &Value) -> Option<String> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?["status"]
        .as_str()
        .map(String::from)
}

/// `obj`'s conditions with Ready set to `status`, as a merge patch of its status.
fn with_ready(obj: &Value, status: &str) -> Value {
    let mut conds = obj["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for c in conds.iter_mut().filter(|c| c["type"] == "Ready") {
        c["status"] = json!(status);
    }
    json!({"status": {"conditions": conds}})
}

/// After a whole-node fault the node lifecycle controller may write from a view taken before
/// the node came back: the node Unknown, its pods not ready, over what the new kubelet posted.
/// As upstream's kubelet (status loop, status manager), the kubelet posts both again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kubelet_posts_again_the_node_and_pod_status_another_writer_overwrote() {
    use k8s_openapi::api::core::v1::{Node, Pod};
    let t = TestCluster::start_with(|c| cairn_harness::ClusterConfig {
        nodes: 1,
        // The kubelet renews its lease (and checks its node status) every 2 s.
        node_monitor_grace_period: Duration::from_secs(8),
        ..c
    })
    .await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "idle"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "600"]}]}});
    t.must_stdin(&["apply", "-f", "-"], &pod.to_string()).await;
    let client = t.c().client();
    let get = |kind: &str, name: &str| {
        use cairn_harness::resources::{NODES, PODS};
        let reg = client.registry();
        match kind {
            "node" => reg.get(&NODES, None, name),
            _ => reg.get(&PODS, Some("default"), name),
        }
        .ok()
    };
    let limit = Duration::from_secs(30);
    eventually("the pod Ready", limit, || async {
        let p = get("pod", "idle")?;
        (ready_status(&p).as_deref() == Some("True")).then_some(())
    })
    .await;
    let node = get("node", "node-1").expect("node-1");
    assert_eq!(ready_status(&node).as_deref(), Some("True"));

    // The pod marked not ready (the controller's MarkPodsNotReady): Ready again.
    let p = get("pod", "idle").expect("the pod");
    client
        .patch_status::<Pod>(Some("default"), "idle", &with_ready(&p, "False"))
        .expect("mark the pod not ready");
    let at = std::time::Instant::now();
    eventually("the pod Ready again", limit, || async {
        let p = get("pod", "idle")?;
        (ready_status(&p).as_deref() == Some("True")).then_some(())
    })
    .await;
    eprintln!("the pod's status posted again after {:?}", at.elapsed());

    // The node set Unknown (the controller's view of a lost node): Ready again.
    client
        .patch_status::<Node>(None, "node-1", &with_ready(&node, "Unknown"))
        .expect("mark the node unknown");
    let at = std::time::Instant::now();
    eventually("the node Ready again", limit, || async {
        let n = get("node", "node-1")?;
        (ready_status(&n).as_deref() == Some("True")).then_some(())
    })
    .await;
    eprintln!("the node's status posted again after {:?}", at.elapsed());
    // And its pod too, which the controller marked not ready when it saw the node Unknown.
    eventually("the pod Ready after the node", limit, || async {
        let p = get("pod", "idle")?;
        (ready_status(&p).as_deref() == Some("True")).then_some(())
    })
    .await;
    t.must(&["delete", "pod", "idle", "--wait=true"]).await;
    t.shutdown().await;
}

/// The `app=agent` pod on `node`.
async fn agent_on(t: &TestCluster, node: &str) -> Option<Value> {
    let pods = get_json(t, &["get", "pods", "-l", "app=agent"]).await?;
    pods["items"]
        .as_array()?
        .iter()
        .find(|p| p["spec"]["nodeName"] == node)
        .cloned()
}

/// A node killed for longer than the grace period goes unreachable (NoSchedule and NoExecute
/// taints). Its DaemonSet pod stays (upstream keeps a daemon pod while it tolerates its node's
/// NoExecute taints; only a new one needs a node that admits it), and once the node is started
/// again that same pod runs new containers, Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_daemon_pod_of_an_unreachable_node_stays_and_runs_again_after_its_start() {
    let mut t = TestCluster::start_with(|c| cairn_harness::ClusterConfig {
        nodes: 2,
        node_monitor_grace_period: Duration::from_secs(3),
        ..c
    })
    .await;
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "600"]}]}}}});
    t.must_stdin(&["apply", "-f", "-"], &ds.to_string()).await;
    let limit = Duration::from_secs(60);
    let before = eventually("the daemon pod on node-2 Ready", limit, || async {
        agent_on(&t, "node-2").await.filter(ready)
    })
    .await;
    let uid = before["metadata"]["uid"].clone();
    let since = now();
    cluster(&mut t).kill_node("node-2").await.unwrap();
    // The DaemonSet controller's status counts node-2 as no longer admitting a new daemon pod
    // (tainted unreachable) but still having one: it has acted on the taint.
    eventually(
        "node-2 unreachable in the DaemonSet's status",
        limit,
        || async {
            let d = get_json(&t, &["get", "daemonset", "agent"]).await?;
            let s = &d["status"];
            (s["desiredNumberScheduled"] == 1 && s["numberMisscheduled"] == 1).then_some(())
        },
    )
    .await;
    let during = agent_on(&t, "node-2")
        .await
        .expect("the daemon pod of node-2 is kept");
    assert_eq!(during["metadata"]["uid"], uid, "the same pod");
    assert!(
        during["metadata"]["deletionTimestamp"].is_null(),
        "the daemon pod of an unreachable node is not deleted: {during}"
    );
    cluster(&mut t).start_node("node-2").await.unwrap();
    eventually(
        "the daemon pod of node-2 running again, Ready",
        limit,
        || async {
            let p = agent_on(&t, "node-2").await?;
            let fresh = p["status"]["containerStatuses"]
                .as_array()?
                .iter()
                .all(|c| {
                    c["state"]["running"]["startedAt"]
                        .as_str()
                        .is_some_and(|s| s >= since.as_str())
                });
            (p["metadata"]["uid"] == uid && fresh && ready(&p)).then_some(())
        },
    )
    .await;
    t.must(&["delete", "daemonset", "agent"]).await;
    eventually("the daemon pods deleted", limit, || async {
        let o = t.must(&["get", "pods", "-o", "name"]).await;
        o.trim().is_empty().then_some(())
    })
    .await;
    t.shutdown().await;
}
