//! Kubelet behaviour through kubectl: logs, env, restart policy, a volume that
//! cannot be set up (ContainerCreating plus an Event), graceful deletion, exec.

mod common;

use std::time::Duration;

use common::*;

async fn phase(t: &TestCluster, pod: &str) -> String {
    let out = t
        .kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"])
        .await;
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pod_runs_to_completion_with_env_and_logs() {
    let t = TestCluster::start(1).await;
    let pod = r#"
apiVersion: v1
kind: Pod
metadata:
  name: hello
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "echo greeting=$GREETING node=$NODE; echo scratch > /scratch/f; cat /scratch/f"]
    env:
    - name: GREETING
      value: hi-$(NODE)
    - name: NODE
      valueFrom:
        fieldRef:
          fieldPath: spec.nodeName
    volumeMounts:
    - name: scratch
      mountPath: /scratch
  volumes:
  - name: scratch
    emptyDir: {}
"#;
    t.kubectl_stdin(&["apply", "-f", "-"], pod).await;
    eventually("hello Succeeded", Duration::from_secs(30), || async {
        (phase(&t, "hello").await == "Succeeded").then_some(())
    })
    .await;
    let logs = t.must(&["logs", "hello"]).await;
    assert_eq!(logs, "greeting=hi-$(NODE) node=node-1\nscratch\n");
    let code = t
        .must(&[
            "get",
            "pod",
            "hello",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}",
        ])
        .await;
    assert_eq!(code, "0");
    t.must(&["delete", "pod", "hello", "--wait=true"]).await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_volume_that_cannot_be_set_up_keeps_the_pod_container_creating() {
    let t = TestCluster::start(1).await;
    let missing = t.dir.path().join("does-not-exist");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: stuck\nspec:\n  containers:\n  - name: c\n    image: busybox\n    volumeMounts:\n    - name: v\n      mountPath: /v\n  volumes:\n  - name: v\n    hostPath:\n      path: {}\n      type: Directory\n",
        missing.display()
    );
    t.kubectl_stdin(&["apply", "-f", "-"], &pod).await;
    let events = eventually("FailedMount event", Duration::from_secs(30), || async {
        let out = t
            .must(&[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=stuck,reason=FailedMount",
                "-o",
                "jsonpath={.items[*].message}",
            ])
            .await;
        (!out.is_empty()).then_some(out)
    })
    .await;
    assert!(
        events.contains("MountVolume.SetUp failed for volume \"v\""),
        "{events}"
    );
    let reason = t
        .must(&[
            "get",
            "pod",
            "stuck",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}",
        ])
        .await;
    assert_eq!(reason, "ContainerCreating");
    assert_eq!(phase(&t, "stuck").await, "Pending");
    // Fixing the cause lets the same pod start; the kubelet kept retrying.
    std::fs::create_dir_all(&missing).unwrap();
    eventually("stuck Running", Duration::from_secs(30), || async {
        (phase(&t, "stuck").await == "Running").then_some(())
    })
    .await;
    t.must(&["delete", "pod", "stuck", "--wait=true"]).await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletion_is_graceful_and_restarts_follow_the_policy() {
    let t = TestCluster::start(1).await;
    let marker = format!("cairn-kubelet-{}", std::process::id());
    let out_dir = t.dir.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let pod = format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: graceful
spec:
  terminationGracePeriodSeconds: 20
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "trap 'echo term > /out/term; exit 0' TERM; echo up >> /out/starts; while :; do sleep 0.1; done"]
    env:
    - name: MARKER
      value: {marker}
    volumeMounts:
    - name: out
      mountPath: /out
  volumes:
  - name: out
    hostPath:
      path: {}
"#,
        out_dir.display()
    );
    t.kubectl_stdin(&["apply", "-f", "-"], &pod).await;
    eventually("graceful Running", Duration::from_secs(30), || async {
        (phase(&t, "graceful").await == "Running").then_some(())
    })
    .await;
    assert!(!processes_with(&marker).is_empty());
    // restartPolicy Always: killing the process brings it back with restartCount 1.
    for pid in processes_with(&marker) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    eventually("restarted", Duration::from_secs(30), || async {
        let n = t
            .must(&[
                "get",
                "pod",
                "graceful",
                "-o",
                "jsonpath={.status.containerStatuses[0].restartCount}",
            ])
            .await;
        (n == "1"
            && std::fs::read_to_string(out_dir.join("starts"))
                .is_ok_and(|s| s.lines().count() == 2))
        .then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    t.must(&["delete", "pod", "graceful", "--wait=true"]).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "SIGTERM was honoured well before the grace period"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("term")).unwrap(),
        "term\n"
    );
    assert!(processes_with(&marker).is_empty());
    t.shutdown().await;
}

/// `kubectl exec` (the WebSocket channel protocol): the command runs in the container
/// (its hostname, its volumes), stdin is passed with `-i`, stdout and stderr come back
/// apart, and the command's exit code is kubectl's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_runs_in_the_container_with_stdin_and_exit_code() {
    let t = TestCluster::start(1).await;
    let pod = r#"
apiVersion: v1
kind: Pod
metadata:
  name: execpod
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "echo started; exec sleep 3600"]
    volumeMounts:
    - name: scratch
      mountPath: /scratch
  volumes:
  - name: scratch
    emptyDir: {}
"#;
    t.kubectl_stdin(&["apply", "-f", "-"], pod).await;
    eventually("execpod started", Duration::from_secs(30), || async {
        let logs = t.kubectl(&["logs", "execpod"]).await;
        (String::from_utf8_lossy(&logs.stdout) == "started\n").then_some(())
    })
    .await;
    let out = t
        .kubectl(&[
            "exec",
            "execpod",
            "--",
            "sh",
            "-c",
            "hostname; echo oops >&2; echo kept > /scratch/f; exit 3",
        ])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "execpod\n",
        "{stderr}"
    );
    assert!(stderr.starts_with("oops\n"), "{stderr}");
    assert_eq!(out.status.code(), Some(3), "{stderr}");

    let piped = t
        .kubectl_stdin(
            &[
                "exec",
                "-i",
                "execpod",
                "--",
                "sh",
                "-c",
                "cat; cat /scratch/f",
            ],
            "piped\n",
        )
        .await;
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&piped.stdout), "piped\nkept\n");

    // The session ends with the command, not with a background process it leaves behind;
    // that process runs on in the container until the container exits.
    let bg = t
        .kubectl(&["exec", "execpod", "--", "sh", "-c", "sleep 30719 & echo bg"])
        .await;
    let left = processes_with("30719");
    if !bg.status.success() || left.len() != 1 {
        kill_all(&left);
    }
    assert!(
        bg.status.success(),
        "{}",
        String::from_utf8_lossy(&bg.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&bg.stdout), "bg\n");
    assert_eq!(
        left.len(),
        1,
        "the background process runs in the container"
    );
    // A session still open when the pod goes (kubectl plus the command in the container).
    let session = {
        let kc = t.kubeconfig();
        tokio::spawn(async move {
            kubectl(&kc, &["exec", "execpod", "--", "sleep", "30720"], None).await
        })
    };
    eventually(
        "the exec session's command runs",
        Duration::from_secs(30),
        || async { (processes_with("30720").len() >= 2).then_some(()) },
    )
    .await;

    let bad = t
        .kubectl(&["exec", "execpod", "-c", "nope", "--", "true"])
        .await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("container nope is not valid for pod execpod"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    t.must(&["delete", "pod", "execpod", "--wait=true"]).await;
    // What the container left running, and the open session, went with it.
    let ours = || [processes_with("30719"), processes_with("30720")].concat();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut left = ours();
    while !left.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = ours();
    }
    kill_all(&left);
    assert!(
        left.is_empty(),
        "processes of the deleted pod still ran 30 s later: {left:?}"
    );
    let session = session.await.unwrap();
    assert!(
        !session.status.success(),
        "the open session ended when the container went"
    );
    t.shutdown().await;
}

fn kill_all(pids: &[u32]) {
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
