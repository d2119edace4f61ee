//! batch/v1 Jobs through the real kubectl: served with upstream's defaults and
//! validation, run to completion or failure by the Job controller, deleted with their pods.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// `kubectl create job NAME --image=busybox -- sh -c 'echo hi'`; returns kubectl's line.
async fn create_echo_hi(t: &TestCluster, name: &str) -> String {
    let cmd = ["--image=busybox", "--", "sh", "-c", "echo hi"];
    let args: Vec<&str> = ["create", "job", name].into_iter().chain(cmd).collect();
    t.must(&args).await.trim().to_string()
}

async fn job_json(t: &TestCluster, name: &str) -> Value {
    serde_json::from_str(&t.must(&["get", "job", name, "-o", "json"]).await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_is_stored_with_upstream_defaults_and_validated() {
    let t = TestCluster::start(0).await;
    assert_eq!(
        create_echo_hi(&t, "stored").await,
        "job.batch/stored created"
    );
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

/// Waits (`kubectl wait`, 90 s) for condition `cond` of Job `name`; returns the Job's status
/// and its `type=reason` condition list.
async fn finished(t: &TestCluster, name: &str, cond: &str) -> (Value, Vec<String>) {
    let (job, cond) = (format!("job/{name}"), format!("--for=condition={cond}"));
    t.must(&["wait", &cond, &job, "--timeout=90s"]).await;
    let status = job_json(t, name).await["status"].clone();
    let conds = status["conditions"].as_array().into_iter().flatten();
    let conds = conds.map(|c| format!("{}={}", s(&c["type"]), s(&c["reason"])));
    (status.clone(), conds.collect())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// `label value` lines (jsonpath `fields`) of the pods of Job `job`, sorted.
async fn job_pods(t: &TestCluster, job: &str, fields: &str) -> Vec<String> {
    let range = format!("jsonpath={{range .items[*]}}{fields}{{\"\\n\"}}{{end}}");
    let sel = format!("batch.kubernetes.io/job-name={job}");
    let out = t.must(&["get", "pods", "-l", &sel, "-o", &range]).await;
    let mut v: Vec<String> = out.lines().map(String::from).collect();
    v.sort();
    v
}

/// Waits (60 s) until Job `job` has no pod left.
async fn pods_gone(t: &TestCluster, job: &str) {
    eventually(
        &format!("the pods of job {job} deleted"),
        Duration::from_secs(60),
        || async {
            job_pods(t, job, "{.metadata.name}")
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

fn job_yaml(name: &str, extra: &str, policy: &str, script: &str) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
{extra}
  template:
    spec:
      restartPolicy: {policy}
      containers: [{{name: c, image: busybox, command: ["sh", "-c", "{script}"]}}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_fail_at_the_backoff_limit_and_go_with_their_pods() {
    let t = TestCluster::start(2).await;
    let marker = t.dir.path().join("failed-once");
    let once = format!(
        "test -e {m} && exit 0; touch {m}; exit 3",
        m = marker.display()
    );
    let manifests = [
        job_yaml(
            "parallel",
            "  completions: 3\n  parallelism: 2",
            "Never",
            "echo done",
        ),
        job_yaml("failing", "  backoffLimit: 1", "Never", "exit 1"),
        job_yaml("retried", "  backoffLimit: 2", "OnFailure", &once),
    ]
    .join("---");
    t.must_stdin(&["apply", "-f", "-"], &manifests).await;
    create_echo_hi(&t, "hello").await;
    finished(&t, "hello", "complete").await;
    assert_eq!(t.must(&["logs", "job/hello"]).await.trim(), "hi");
    let table = t.must(&["get", "job", "hello", "--no-headers"]).await;
    let cols: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(cols[..3], ["hello", "Complete", "1/1"], "{table}");

    let (st, conds) = finished(&t, "parallel", "complete").await;
    assert_eq!(st["succeeded"], 3, "{st}");
    let met = "CompletionsReached";
    assert_eq!(
        conds,
        [
            format!("SuccessCriteriaMet={met}"),
            format!("Complete={met}")
        ]
    );
    assert!(
        st["completionTime"].is_string() && st["startTime"].is_string(),
        "{st}"
    );
    // Three pods succeeded; a pod that failed (none, unless the host killed one) was
    // replaced and counted.
    let diag = "{.status.phase} {.metadata.name} {.status.containerStatuses[0].state}";
    let pods = job_pods(&t, "parallel", diag).await;
    let failed = pods.iter().filter(|p| p.starts_with("Failed")).count();
    let succeeded = pods.iter().filter(|p| p.starts_with("Succeeded")).count();
    assert_eq!((succeeded, failed), (3, pods.len() - 3), "{pods:#?}");
    assert_eq!(st["failed"].as_u64().unwrap_or(0), failed as u64, "{st}");

    let (st, conds) = finished(&t, "failing", "failed").await;
    assert_eq!(st["failed"], 2, "{st}");
    let over = "BackoffLimitExceeded";
    assert_eq!(
        conds,
        [format!("FailureTarget={over}"), format!("Failed={over}")]
    );
    let phases = job_pods(&t, "failing", "{.status.phase}").await;
    assert_eq!(phases, ["Failed", "Failed"]);

    // OnFailure: the kubelet restarts the container in place; the pod never fails.
    let (st, _) = finished(&t, "retried", "complete").await;
    assert_eq!(
        (&st["succeeded"], &st["failed"]),
        (&json!(1), &Value::Null),
        "{st}"
    );
    let restarts = "{.status.phase} {.status.containerStatuses[0].restartCount}";
    assert_eq!(job_pods(&t, "retried", restarts).await, ["Succeeded 1"]);

    // kubectl delete cascades (in the background) to the Job's pods.
    for job in ["hello", "parallel", "failing", "retried"] {
        t.must(&["delete", "job", job]).await;
        pods_gone(&t, job).await;
    }
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_suspend_resume_hit_their_deadline_and_expire() {
    let t = TestCluster::start(1).await;
    let manifests = [
        job_yaml("paused", "  suspend: true", "Never", "echo resumed"),
        job_yaml(
            "slow",
            "  activeDeadlineSeconds: 2",
            "Never",
            "trap 'exit 0' TERM; sleep 60 & wait",
        ),
        job_yaml("brief", "  ttlSecondsAfterFinished: 0", "Never", "true"),
    ]
    .join("---");
    t.must_stdin(&["apply", "-f", "-"], &manifests).await;

    // Suspended: no pod, a Suspended condition; resumed, it runs to completion.
    let (_, conds) = finished(&t, "paused", "suspended").await;
    assert_eq!(conds, ["Suspended=JobSuspended"]);
    assert!(job_pods(&t, "paused", "{.metadata.name}").await.is_empty());
    let resume = r#"{"spec":{"suspend":false}}"#;
    t.must(&["patch", "job/paused", "--type=merge", "-p", resume])
        .await;
    let (st, conds) = finished(&t, "paused", "complete").await;
    assert_eq!(conds[0], "Suspended=JobResumed", "{conds:?}");
    assert_eq!(st["succeeded"], 1, "{st}");
    assert_eq!(t.must(&["logs", "job/paused"]).await.trim(), "resumed");

    // Past activeDeadlineSeconds the running pod is deleted and the Job fails.
    let (st, conds) = finished(&t, "slow", "failed").await;
    let over = "DeadlineExceeded";
    assert_eq!(
        conds,
        [format!("FailureTarget={over}"), format!("Failed={over}")]
    );
    assert!(st["active"].is_null(), "{st}");
    pods_gone(&t, "slow").await;

    // ttlSecondsAfterFinished: 0 deletes the finished Job and its pod.
    eventually("the brief job deleted", Duration::from_secs(60), || async {
        let out = t.must(&["get", "jobs", "-o", "name"]).await;
        (!out.contains("job.batch/brief")).then_some(())
    })
    .await;
    pods_gone(&t, "brief").await;
    t.must(&["delete", "job", "paused", "slow"]).await;
    t.shutdown().await;
}
