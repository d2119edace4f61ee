//! batch/v1 Jobs through the real kubectl: served with upstream's defaults and
//! validation, run to completion or failure by the Job controller, deleted with their pods.

mod common;

use common::*;
use serde_json::Value;

async fn job_json(t: &TestCluster, name: &str) -> Value {
    serde_json::from_str(&t.must(&["get", "job", name, "-o", "json"]).await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_is_stored_with_upstream_defaults_and_validated() {
    let t = TestCluster::start(0).await;
    let out = t
        .must(&[
            "create",
            "job",
            "stored",
            "--image=busybox",
            "--",
            "sh",
            "-c",
            "echo hi",
        ])
        .await;
    assert_eq!(out.trim(), "job.batch/stored created");
    let job = job_json(&t, "stored").await;
    let spec = &job["spec"];
    assert_eq!(spec["completions"], 1);
    assert_eq!(spec["parallelism"], 1);
    assert_eq!(spec["backoffLimit"], 6);
    assert_eq!(spec["completionMode"], "NonIndexed");
    assert_eq!(spec["suspend"], false);
    assert_eq!(spec["template"]["spec"]["restartPolicy"], "Never");
    let uid = job["metadata"]["uid"].as_str().unwrap();
    assert_eq!(
        spec["selector"]["matchLabels"],
        serde_json::json!({"batch.kubernetes.io/controller-uid": uid})
    );
    let labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", uid),
        ("controller-uid", uid),
        ("batch.kubernetes.io/job-name", "stored"),
        ("job-name", "stored"),
    ] {
        assert_eq!(labels[k], v, "template label {k}: {labels}");
    }
    assert_eq!(job["metadata"]["labels"], *labels);
    // Parallelism alone leaves completions unset (a work queue).
    let queue = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: queue}
spec:
  parallelism: 2
  template:
    spec:
      restartPolicy: OnFailure
      containers: [{name: c, image: busybox, command: ["true"]}]
"#;
    t.must_stdin(&["apply", "-f", "-"], queue).await;
    let job = job_json(&t, "queue").await;
    assert!(job["spec"]["completions"].is_null(), "{}", job["spec"]);
    assert_eq!(job["spec"]["parallelism"], 2);
    let table = t.must(&["get", "jobs"]).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]);
    // A pod template that restarts always is not a Job's.
    let always = queue
        .replace("name: queue", "name: always")
        .replace("OnFailure", "Always");
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &always).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(r#"spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", "Never""#),
        "{err}"
    );
    // The selector is immutable.
    let patch = r#"{"spec":{"selector":{"matchLabels":{"x":"y"}}}}"#;
    let out = t
        .kubectl(&["patch", "job/stored", "--type=merge", "-p", patch])
        .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.selector"),
        "{err}"
    );
    t.must(&["delete", "job", "stored", "queue"]).await;
    let left = t.must(&["get", "jobs", "-o", "name"]).await;
    assert_eq!(left.trim(), "");
    t.shutdown().await;
}
