//! `up --with-cairn` is `kubectl apply -k manifests/` on 3 namespaced nodes: storaged bound to
//! each node's address, node plugins in CSINode, the controller; volumes, restarts, teardown.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_harness::Cluster;
use cairn_harness::components::DRIVER;
use cairn_harness::install::NAMESPACE;
use cairn_proto::cairn::v1 as pb;
use common::*;
use serde_json::Value;

/// The upstream registrar binary (as in upstream_registrar.rs): when set, the manifests'
/// node-driver-registrar sidecar runs it; unset (CI), the sidecar is left out as unmapped.
const REGISTRAR_ENV: &str = "CAIRN_UPSTREAM_REGISTRAR";
const REGISTRAR_IMAGE: &str = "registry.k8s.io/sig-storage/csi-node-driver-registrar";
const REGISTRAR: &str = "node-driver-registrar";

/// The directory to map the registrar image to, when `REGISTRAR_ENV` names the binary.
fn registrar_dir() -> Option<PathBuf> {
    let bin = PathBuf::from(std::env::var_os(REGISTRAR_ENV)?);
    assert!(
        bin.is_file() && bin.file_name() == Some("csi-node-driver-registrar".as_ref()),
        "{REGISTRAR_ENV}={} must be a file named csi-node-driver-registrar (an image runs the \
         executable named like its repository)",
        bin.display()
    );
    bin.parent().map(Path::to_path_buf)
}

/// The node plugin pods: (name, node, the registrar container's restartCount if it runs).
async fn csi_node_pods(t: &TestCluster) -> Vec<(String, String, Option<i64>)> {
    let pods = pods_of(t, "cairn-csi-node").await;
    let mut out: Vec<_> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let restarts = p["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == REGISTRAR)
                .and_then(|c| c["restartCount"].as_i64());
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                restarts,
            )
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// Each node's registrar restarts, once every registrar was told it is registered.
async fn registrar_restarts(t: &TestCluster) -> BTreeMap<String, i64> {
    eventually(
        "every node's registrar told PluginRegistered:true by the kubelet",
        Duration::from_secs(240),
        || async {
            let pods = csi_node_pods(t).await;
            let mut out = BTreeMap::new();
            for (pod, node, restarts) in pods {
                let log = t
                    .kubectl(&["logs", "-n", NAMESPACE, &pod, "-c", REGISTRAR])
                    .await;
                let log = String::from_utf8_lossy(&log.stdout).into_owned();
                if !log.contains("PluginRegistered:true") {
                    return None;
                }
                out.insert(node, restarts?);
            }
            (out.len() == 3).then_some(out)
        },
    )
    .await
}

/// storaged's catalogue as `admin` sees it: (name, id, address).
async fn catalogue(c: &Cluster) -> Vec<(String, u64, String)> {
    let layout = c.cairn.as_ref().expect("cairn layout");
    let Ok(sec) = cairn_client::Security::from_flags(Some(&layout.tls_dir("admin")), false) else {
        return Vec::new();
    };
    for a in &layout.storaged {
        let Ok(ep) = sec.endpoint(a) else { continue };
        let Ok(ch) = ep.connect_timeout(Duration::from_secs(2)).connect().await else {
            continue;
        };
        let mut v = pb::volume_service_client::VolumeServiceClient::new(ch);
        if let Ok(r) = v.list_nodes(pb::ListNodesRequest {}).await {
            let mut out: Vec<_> = r
                .into_inner()
                .nodes
                .into_iter()
                .map(|n| (n.name, n.id, n.addr))
                .collect();
            out.sort();
            return out;
        }
    }
    Vec::new()
}

async fn json(t: &TestCluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&t.must(&a).await).expect("kubectl json")
}

/// The pods of the app `name` in Cairn's namespace, as `kubectl get pods -o json` lists them.
async fn pods_of(t: &TestCluster, name: &str) -> Value {
    let selector = format!("app.kubernetes.io/name={name}");
    json(t, &["get", "pods", "-n", NAMESPACE, "-l", &selector]).await
}

/// The storaged pod on `node`: (name, uid).
async fn storaged_pod(t: &TestCluster, node: &str) -> Option<(String, String)> {
    let pods = pods_of(t, "cairn-storaged").await;
    pods["items"]
        .as_array()?
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| p["spec"]["nodeName"] == node)
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or_default().into(),
                p["metadata"]["uid"].as_str().unwrap_or_default().into(),
            )
        })
        .next()
}

async fn log_lines(t: &TestCluster, pod: &str) -> usize {
    let out = t.kubectl(&["logs", pod]).await;
    if !out.status.success() {
        return 0;
    }
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Loop devices whose backing file is a node's Cairn path or under `dir`.
fn cairn_loops(dir: &Path) -> BTreeSet<String> {
    let out = std::process::Command::new("losetup")
        .args(["-l", "-n", "-O", "NAME,BACK-FILE"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let d = dir.display().to_string();
    out.lines()
        .filter(|l| l.contains(&d) || l.contains(" /var/lib/cairn/"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_cairn_is_kubectl_apply_k_of_the_manifests() {
    let loops_before = cairn_loops(Path::new("/nonexistent"));
    let registrar = registrar_dir();
    let images: Vec<String> = registrar
        .iter()
        .map(|dir| format!("{REGISTRAR_IMAGE}={}", dir.display()))
        .collect();
    let t = start_install(&images).await;
    // With the registrar: none restarted. The kubelet's NodeGetInfo at registration comes
    // while storaged is still forming; a refusal makes the registrar exit (issue 20).
    let none_restarted: BTreeMap<String, i64> = ["node-1", "node-2", "node-3"]
        .map(|n| (n.to_string(), 0))
        .into();
    if registrar.is_some() {
        let restarts = registrar_restarts(&t).await;
        eprintln!("registrar restarts after install: {restarts:?}");
        assert_eq!(restarts, none_restarted, "registrar restarts after install");
    } else {
        eprintln!("{REGISTRAR_ENV} unset: the registrar sidecar is left out (unmapped image)");
        let pods = csi_node_pods(&t).await;
        assert!(pods.iter().all(|p| p.2.is_none()), "{pods:?}");
    }
    let data = t.dir.path().join("data");
    let m = t.c().machines.as_ref().expect("nodes");
    let index = m.network.index;
    let addrs: Vec<String> = m.nodes.iter().map(|n| n.address.to_string()).collect();

    // storaged runs as the DaemonSet's pods, one per node, each registered at its node's
    // address (what it advertises and listens on).
    let cat = catalogue(t.c()).await;
    let names: Vec<&str> = cat.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["node-1", "node-2", "node-3"], "{cat:?}");
    for (i, (_, _, addr)) in cat.iter().enumerate() {
        assert_eq!(*addr, format!("{}:7001", addrs[i]));
    }
    for node in ["node-1", "node-2", "node-3"] {
        assert!(storaged_pod(&t, node).await.is_some(), "storaged on {node}");
        let csinode = json(&t, &["get", "csinode", node]).await;
        let d = &csinode["spec"]["drivers"][0];
        assert_eq!(d["name"], DRIVER, "{csinode}");
        assert_eq!(d["nodeID"], node);
    }
    let deploy = json(
        &t,
        &["get", "deployment", "cairn-controller", "-n", NAMESPACE],
    )
    .await;
    assert_eq!(
        deploy["status"]["readyReplicas"], deploy["spec"]["replicas"],
        "{}",
        deploy["status"]
    );

    // The README's StatefulSet: a replicated volume per pod; a deleted pod comes back with
    // its data.
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests/examples/statefulset.yaml");
    t.must(&["apply", "-f", &example.display().to_string()])
        .await;
    for pod in ["web-0", "web-1"] {
        eventually(
            &format!("{pod} wrote its first boot"),
            Duration::from_secs(240),
            || async { (log_lines(&t, pod).await >= 1).then_some(()) },
        )
        .await;
    }
    let loops = cairn_loops(&data)
        .difference(&loops_before)
        .cloned()
        .collect::<BTreeSet<_>>();
    let uid = t
        .must(&["get", "pod", "web-0", "-o", "jsonpath={.metadata.uid}"])
        .await;
    t.must(&["delete", "pod", "web-0"]).await;
    eventually(
        "web-0 back with both boots",
        Duration::from_secs(240),
        || async {
            let now = t
                .kubectl(&["get", "pod", "web-0", "-o", "jsonpath={.metadata.uid}"])
                .await;
            let now = String::from_utf8_lossy(&now.stdout).to_string();
            (!now.is_empty() && now != uid && log_lines(&t, "web-0").await >= 2).then_some(())
        },
    )
    .await;

    // node-2's storaged pod deleted: the DaemonSet puts it back on node-2, with the id it
    // has (its data dir's stamp) and its data (both web volumes still read and write).
    let stamp = data.join("nodes/node-2/cairn/IDENTITY");
    let identity = std::fs::read(&stamp).expect("node-2 stamped its data dir");
    let id_before = cat.iter().find(|(n, _, _)| n == "node-2").map(|c| c.1);
    let (old, old_uid) = storaged_pod(&t, "node-2")
        .await
        .expect("storaged on node-2");
    t.must(&["delete", "pod", "-n", NAMESPACE, &old]).await;
    eventually(
        "storaged back on node-2",
        Duration::from_secs(120),
        || async {
            storaged_pod(&t, "node-2")
                .await
                .filter(|(_, u)| *u != old_uid)
        },
    )
    .await;
    assert_eq!(std::fs::read(&stamp).expect("stamp"), identity);
    let cat2 = eventually(
        "node-2 in the catalogue again",
        Duration::from_secs(60),
        || async {
            let c = catalogue(t.c()).await;
            (c.len() == 3 && c.iter().all(|n| !n.2.is_empty())).then_some(c)
        },
    )
    .await;
    assert_eq!(
        cat2.iter().find(|(n, _, _)| n == "node-2").map(|c| c.1),
        id_before
    );
    for pod in ["web-0", "web-1"] {
        let out = eventually(
            &format!("{pod} reads and writes"),
            Duration::from_secs(120),
            || async {
                let o = t
                    .kubectl(&[
                        "exec",
                        pod,
                        "--",
                        "sh",
                        "-c",
                        "date >> /data/boots && cat /data/boots",
                    ])
                    .await;
                o.status
                    .success()
                    .then(|| String::from_utf8_lossy(&o.stdout).lines().count())
            },
        )
        .await;
        assert!(out >= 2, "{pod}: {out} boots");
    }

    if registrar.is_some() {
        let restarts = registrar_restarts(&t).await;
        assert_eq!(restarts, none_restarted, "registrar restarts by the end");
    }

    // Teardown: the claims go, then the cluster; nothing of it is left.
    t.must(&["scale", "statefulset", "web", "--replicas=0"])
        .await;
    eventually("web pods gone", Duration::from_secs(120), || async {
        let o = t
            .must(&["get", "pods", "-l", "app=web", "-o", "name"])
            .await;
        o.trim().is_empty().then_some(())
    })
    .await;
    t.must(&["delete", "-f", &example.display().to_string()])
        .await;
    t.must(&["delete", "pvc", "data-web-0", "data-web-1"]).await;
    eventually("PVs deleted", Duration::from_secs(120), || async {
        let o = t.must(&["get", "pv", "-o", "name"]).await;
        o.trim().is_empty().then_some(())
    })
    .await;
    shutdown_leaves_nothing(t, &data, index).await;
    let still: Vec<String> = cairn_loops(&data).intersection(&loops).cloned().collect();
    assert!(still.is_empty(), "loop devices left: {still:?}");
}
