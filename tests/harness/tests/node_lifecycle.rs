//! The node lifecycle controller seen through kubectl: a killed node goes NotReady with the
//! unreachable taints, its pods unready or evicted as they tolerate it; started again, Ready.

mod common;

use std::time::{Duration, Instant};

use cairn_harness::ClusterConfig;
use common::{TestCluster, eventually};
use serde_json::Value;

/// The grace period the test's cluster runs with (40 s upstream).
const GRACE: Duration = Duration::from_secs(3);
const LIMIT: Duration = Duration::from_secs(60);

/// A pod on node-2 sleeping; `tolerate` makes it tolerate the unreachable taint that long.
fn pod(name: &str, tolerate: Option<u32>) -> String {
    let tolerations = match tolerate {
        Some(s) => format!(
            "  tolerations:\n  - key: node.kubernetes.io/unreachable\n    operator: Exists\n    effect: NoExecute\n    tolerationSeconds: {s}\n"
        ),
        None => String::new(),
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeSelector:\n    kubernetes.io/hostname: node-2\n  terminationGracePeriodSeconds: 1\n{tolerations}  containers:\n  - name: main\n    image: busybox\n    command: [sleep, \"3600\"]\n"
    )
}

async fn json(t: &TestCluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&t.must(&a).await).unwrap()
}

fn condition<'a>(obj: &'a Value, ty: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
}

/// node-2's STATUS column in `kubectl get nodes`.
async fn node_status(t: &TestCluster) -> String {
    let out = t.must(&["get", "nodes", "--no-headers"]).await;
    out.lines()
        .find(|l| l.starts_with("node-2 "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string()
}

fn cluster(t: &mut TestCluster) -> &mut cairn_harness::Cluster {
    t.cluster.as_mut().expect("the cluster runs")
}

async fn pod_ready(t: &TestCluster, name: &str) -> Option<String> {
    let p = json(t, &["get", "pod", name]).await;
    condition(&p, "Ready").and_then(|c| c["status"].as_str().map(String::from))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_goes_not_ready_tainted_and_comes_back() {
    let mut t = TestCluster::start_with(|c| ClusterConfig {
        nodes: 2,
        node_monitor_grace_period: GRACE,
        ..c
    })
    .await;
    for (name, tolerate) in [("plain", None), ("brief", Some(1))] {
        t.must_stdin(&["apply", "-f", "-"], &pod(name, tolerate))
            .await;
    }
    for name in ["plain", "brief"] {
        eventually(&format!("{name} ready"), LIMIT, || async {
            (pod_ready(&t, name).await.as_deref() == Some("True")).then_some(())
        })
        .await;
    }
    // Several grace periods with a live kubelet: the lease keeps node-2 Ready.
    let live = Instant::now();
    while live.elapsed() < GRACE * 3 {
        assert_eq!(node_status(&t).await, "Ready");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let killed = Instant::now();
    cluster(&mut t).kill_node("node-2").await.unwrap();
    eventually("node-2 NotReady", LIMIT, || async {
        (node_status(&t).await == "NotReady").then_some(())
    })
    .await;
    eprintln!(
        "node-2 NotReady {:?} after the kill (grace {GRACE:?})",
        killed.elapsed()
    );
    // The grace runs from the last renewal, at most a renewal interval (GRACE / 4) earlier.
    assert!(
        killed.elapsed() >= GRACE * 3 / 4,
        "NotReady before the grace period"
    );
    let node = json(&t, &["get", "node", "node-2"]).await;
    let ready = condition(&node, "Ready").expect("Ready condition");
    assert_eq!(ready["status"], "Unknown", "{ready}");
    assert_eq!(ready["reason"], "NodeStatusUnknown", "{ready}");
    assert_eq!(
        ready["message"], "Kubelet stopped posting node status.",
        "{ready}"
    );
    for ty in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert_eq!(condition(&node, ty).unwrap()["status"], "Unknown", "{ty}");
    }
    let taints: Vec<(String, String)> = node["spec"]["taints"]
        .as_array()
        .expect("taints")
        .iter()
        .map(|t| {
            (
                t["key"].as_str().unwrap().into(),
                t["effect"].as_str().unwrap().into(),
            )
        })
        .collect();
    for effect in ["NoSchedule", "NoExecute"] {
        assert!(
            taints.contains(&("node.kubernetes.io/unreachable".into(), effect.into())),
            "{taints:?}"
        );
    }
    let described = t.must(&["describe", "node", "node-2"]).await;
    assert!(
        described.contains("node.kubernetes.io/unreachable:NoExecute")
            && described.contains("node.kubernetes.io/unreachable:NoSchedule"),
        "{described}"
    );
    // node-1 is untouched.
    let n1 = json(&t, &["get", "node", "node-1"]).await;
    assert!(n1["spec"]["taints"].is_null(), "{}", n1["spec"]);
    // Pods: Ready False; the one tolerating the taint 1 s is evicted, the other (the 300 s
    // admission default) is not.
    eventually("plain not ready", LIMIT, || async {
        (pod_ready(&t, "plain").await.as_deref() == Some("False")).then_some(())
    })
    .await;
    eventually("brief evicted", LIMIT, || async {
        let p = json(&t, &["get", "pod", "brief", "--ignore-not-found"]).await;
        (p.is_null() || !p["metadata"]["deletionTimestamp"].is_null()).then_some(())
    })
    .await;
    let plain = json(&t, &["get", "pod", "plain"]).await;
    assert!(plain["metadata"]["deletionTimestamp"].is_null(), "{plain}");

    let started = Instant::now();
    cluster(&mut t).start_node("node-2").await.unwrap();
    eventually("node-2 Ready again without taints", LIMIT, || async {
        let node = json(&t, &["get", "node", "node-2"]).await;
        let ready = condition(&node, "Ready")?;
        (ready["status"] == "True" && node["spec"]["taints"].is_null()).then_some(())
    })
    .await;
    eprintln!(
        "node-2 Ready and untainted {:?} after its start",
        started.elapsed()
    );
    assert_eq!(node_status(&t).await, "Ready");
    eventually("plain ready again", LIMIT, || async {
        (pod_ready(&t, "plain").await.as_deref() == Some("True")).then_some(())
    })
    .await;
    t.must(&[
        "delete",
        "pod",
        "plain",
        "brief",
        "--ignore-not-found",
        "--wait=false",
    ])
    .await;
    t.shutdown().await;
}
