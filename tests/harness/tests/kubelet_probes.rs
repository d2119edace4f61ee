//! Probes through kubectl, with a real server in the pod: a startup probe (tcpSocket) gates
//! the others, readiness (httpGet) turns the pod Ready and NotReady, liveness (exec) restarts.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

const PYTHON: &str = "/usr/bin/python3";

async fn pod_json(t: &TestCluster, name: &str) -> Value {
    serde_json::from_str(&t.must(&["get", "pod", name, "-o", "json"]).await).expect("json")
}

/// The READY column of `kubectl get pod` (`ready/total` containers).
async fn ready_column(t: &TestCluster, name: &str) -> String {
    let out = t.must(&["get", "pod", name, "--no-headers"]).await;
    out.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn condition(p: &Value, ty: &str) -> String {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == ty)
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Messages of the pod's Events with `reason`.
async fn events(t: &TestCluster, pod: &str, reason: &str) -> String {
    t.must(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod},reason={reason}"),
        "-o",
        "jsonpath={.items[*].message}",
    ])
    .await
}

/// Waits (bounded) until the pod's Ready condition and READY column are `ready`.
async fn wait_ready(t: &TestCluster, ready: bool, limit: Duration) {
    let (cond, column) = if ready {
        ("True", "1/1")
    } else {
        ("False", "0/1")
    };
    eventually(
        &format!("pod probed Ready={cond}, READY {column}"),
        limit,
        || async {
            let p = pod_json(t, "probed").await;
            let ok = condition(&p, "Ready") == cond
                && p["status"]["containerStatuses"][0]["ready"] == ready
                && ready_column(t, "probed").await == column;
            ok.then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_follows_the_endpoint_and_a_failed_liveness_probe_restarts() {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} serves HTTP in the test pod: install python3"
    );
    let t = TestCluster::start(1).await;
    // /www is an emptyDir: it outlives a container restart, as in Kubernetes.
    let pod = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: probed
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: busybox
    command: ["sh", "-c", "touch /www/alive; echo start >> /www/starts; exec {PYTHON} -m http.server 18080 --bind 0.0.0.0 --directory /www"]
    ports:
    - name: http
      containerPort: 18080
    startupProbe:
      tcpSocket: {{port: http}}
      periodSeconds: 1
      failureThreshold: 30
    readinessProbe:
      httpGet: {{path: /ready, port: http}}
      periodSeconds: 1
      failureThreshold: 1
    livenessProbe:
      exec:
        command: ["test", "-f", "/www/alive"]
      periodSeconds: 1
      failureThreshold: 2
    volumeMounts:
    - name: www
      mountPath: /www
  volumes:
  - name: www
    emptyDir: {{}}
"#
    );
    t.kubectl_stdin(&["apply", "-f", "-"], &pod).await;
    // Started (the port answers) but not ready: /ready is a 404.
    eventually("probed started", Duration::from_secs(30), || async {
        let p = pod_json(&t, "probed").await;
        (p["status"]["phase"] == "Running"
            && p["status"]["containerStatuses"][0]["started"] == true)
            .then_some(())
    })
    .await;
    let unhealthy = eventually(
        "a Readiness Unhealthy event",
        Duration::from_secs(30),
        || async {
            let e = events(&t, "probed", "Unhealthy").await;
            e.contains("Readiness probe failed").then_some(e)
        },
    )
    .await;
    assert!(
        unhealthy.contains("HTTP probe failed with statuscode: 404"),
        "{unhealthy}"
    );
    let p = pod_json(&t, "probed").await;
    assert_eq!(condition(&p, "Ready"), "False");
    assert_eq!(ready_column(&t, "probed").await, "0/1");

    // The endpoint flips: Ready, then NotReady, then Ready, each within a few periods.
    let bound = Duration::from_secs(15);
    t.must(&["exec", "probed", "--", "touch", "/www/ready"])
        .await;
    wait_ready(&t, true, bound).await;
    t.must(&["exec", "probed", "--", "rm", "/www/ready"]).await;
    wait_ready(&t, false, bound).await;
    t.must(&["exec", "probed", "--", "touch", "/www/ready"])
        .await;
    wait_ready(&t, true, bound).await;
    let restarts = |p: &Value| p["status"]["containerStatuses"][0]["restartCount"].as_i64();
    assert_eq!(restarts(&pod_json(&t, "probed").await), Some(0));

    // Liveness fails twice: the container is killed and restarted (it makes /www/alive
    // again), and becomes Ready again once its probes pass.
    t.must(&["exec", "probed", "--", "rm", "/www/alive"]).await;
    eventually("probed restarted", Duration::from_secs(30), || async {
        (restarts(&pod_json(&t, "probed").await) >= Some(1)).then_some(())
    })
    .await;
    let killing = events(&t, "probed", "Killing").await;
    assert!(
        killing.contains("Container web failed liveness probe, will be restarted"),
        "{killing}"
    );
    let unhealthy = events(&t, "probed", "Unhealthy").await;
    assert!(unhealthy.contains("Liveness probe failed"), "{unhealthy}");
    wait_ready(&t, true, Duration::from_secs(30)).await;
    let starts = t
        .must(&["exec", "probed", "--", "cat", "/www/starts"])
        .await;
    assert!(starts.lines().count() >= 2, "{starts}");
    let p = pod_json(&t, "probed").await;
    assert_eq!(
        p["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"], "Error",
        "{p}"
    );

    t.must(&["delete", "pod", "probed", "--wait=true"]).await;
    t.shutdown().await;
}
