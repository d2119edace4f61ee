//! The fs-log writer pod of the node-fault and storaged-restart tests: its claim and pod on
//! one node, bound, its log's path, and both deleted at the end (the PV gone too).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_harness::chaos_pods::writer::WRITER;
use cairn_harness::cluster::kubelet_root;
use cairn_harness::kubelet::Kubelet;
#[allow(unused_imports)] // for the tests' use
pub use cairn_harness::node::loops::{NodeLoop, still_attached};
use serde_json::{Value, json};

use super::{TestCluster, eventually};

/// A 256 MiB `cairn-replicated` claim `fs-log` and the pod `writer` on `node` writing to it.
pub fn writer_manifests(node: &str) -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "fs-log"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "cairn-replicated",
                "resources": {"requests": {"storage": "256Mi"}}}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "writer"},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                "containers": [{"name": "writer", "image": "busybox",
                    "command": ["python3", "-c", WRITER],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "fs-log"}}]}}),
    ]
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `kubectl get ARGS -o json`, parsed; none if kubectl fails.
pub async fn get_json(t: &TestCluster, args: &[&str]) -> Option<Value> {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = t.kubectl(&a).await;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Whether an object (pod, node) has condition `Ready` true.
pub fn ready(obj: &Value) -> bool {
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Applies the writer's manifests, waits (`limit`) until its pod is bound to `node`: the
/// pod's uid and the path of its container's log (the writer's acks).
pub async fn start_writer(t: &TestCluster, node: &str, limit: Duration) -> (String, PathBuf) {
    for m in writer_manifests(node) {
        t.must_stdin(&["apply", "-f", "-"], &m.to_string()).await;
    }
    let uid = eventually("the writer pod is bound", limit, || async {
        let p = get_json(t, &["get", "pod", "writer"]).await?;
        (p["spec"]["nodeName"] == node)
            .then(|| p["metadata"]["uid"].as_str().map(String::from))
            .flatten()
    })
    .await;
    let data = t.dir.path().join("data");
    let log = Kubelet::log_path(&kubelet_root(&data, node), &uid, "writer");
    (uid, log)
}

/// The volume handle of the (only) PV: the Cairn volume's name.
pub async fn only_volume(t: &TestCluster) -> String {
    t.must(&[
        "get",
        "pv",
        "-o",
        "jsonpath={.items[0].spec.csi.volumeHandle}",
    ])
    .await
}

/// Deletes the writer pod, then its claim, and waits (`limit` each) until both and the PV
/// are gone.
pub async fn delete_writer(t: &TestCluster, limit: Duration) {
    t.must(&["delete", "pod", "writer", "--wait=false"]).await;
    eventually("the writer pod deleted", limit, || async {
        let o = t.must(&["get", "pods", "-o", "name"]).await;
        o.trim().is_empty().then_some(())
    })
    .await;
    t.must(&["delete", "pvc", "fs-log"]).await;
    eventually("the PV deleted", limit, || async {
        let o = t.must(&["get", "pv", "-o", "name"]).await;
        o.trim().is_empty().then_some(())
    })
    .await;
}

/// The loop devices over the `disk` files of `node`'s running FUSE frontends.
pub fn fuse_loops(t: &TestCluster, node: &str) -> Vec<NodeLoop> {
    t.c()
        .machines
        .as_ref()
        .and_then(|m| m.get(node))
        .map(|n| n.fuse_loops())
        .unwrap_or_default()
}
