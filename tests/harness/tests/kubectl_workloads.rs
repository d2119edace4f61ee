//! DaemonSets and Deployments through the real kubectl (`rollout status`, `scale`,
//! `set env`), image mapping, and the install's kustomize base applied as written.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_harness::kubelet::images::ImageMap;
use common::*;

const IDLE: &str = "trap 'exit 0' TERM; while :; do sleep 1; done";

fn daemonset() -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels: {{app: agent}}
  template:
    metadata:
      labels: {{app: agent}}
    spec:
      terminationGracePeriodSeconds: 2
      nodeSelector: {{role: storage}}
      tolerations:
      - {{key: dedicated, operator: Equal, value: db, effect: NoSchedule}}
      containers:
      - name: c
        image: busybox
        command: ["sh", "-c", "{IDLE}"]
"#
    )
}

fn deployment() -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: c
        image: busybox
        command: ["sh", "-c", "{IDLE}"]
"#
    )
}

/// `label=value` lines of the pods matching `selector`, sorted (jsonpath `fields`).
async fn pods(t: &TestCluster, selector: &str, fields: &str) -> Vec<String> {
    let out = t
        .must(&[
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            &format!("jsonpath={{range .items[*]}}{fields}{{\"\\n\"}}{{end}}"),
        ])
        .await;
    let mut v: Vec<String> = out.lines().map(String::from).collect();
    v.sort();
    v
}

async fn rollout(t: &TestCluster, what: &str) {
    let out = t.must(&["rollout", "status", what, "--timeout=90s"]).await;
    assert!(out.contains("successfully rolled out"), "{what}: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_runs_on_selected_nodes_recreates_and_rolls() {
    let t = TestCluster::start(3).await;
    for n in ["node-1", "node-2", "node-3"] {
        t.must(&["label", "node", n, "role=storage"]).await;
    }
    t.must(&["taint", "node", "node-2", "dedicated=db:NoSchedule"])
        .await;
    t.must(&["taint", "node", "node-3", "other=x:NoSchedule"])
        .await;
    t.kubectl_stdin(&["apply", "-f", "-"], &daemonset()).await;
    rollout(&t, "ds/agent").await;
    let live = "{.spec.nodeName} {.metadata.deletionTimestamp}";
    let on =
        |v: Vec<String>| -> Vec<String> { v.into_iter().map(|l| l.trim().to_string()).collect() };
    assert_eq!(on(pods(&t, "app=agent", live).await), ["node-1", "node-2"]);
    let desired = t
        .must(&[
            "get",
            "ds",
            "agent",
            "-o",
            "jsonpath={.status.desiredNumberScheduled} {.status.numberReady}",
        ])
        .await;
    assert_eq!(desired, "2 2");

    // A deleted daemon pod comes back on its node, under a new name.
    let name = |n: &'static str| {
        let t = &t;
        async move {
            pods(t, "app=agent", "{.spec.nodeName} {.metadata.name}")
                .await
                .into_iter()
                .find_map(|l| l.strip_prefix(&format!("{n} ")).map(String::from))
        }
    };
    let first = name("node-1").await.expect("a pod on node-1");
    t.must(&["delete", "pod", &first, "--wait=true"]).await;
    eventually(
        "a new daemon pod on node-1",
        Duration::from_secs(60),
        || async { name("node-1").await.filter(|n| *n != first) },
    )
    .await;
    rollout(&t, "ds/agent").await;

    // A template change rolls every pod to the new revision.
    t.must(&["set", "env", "ds/agent", "GENERATION=2"]).await;
    rollout(&t, "ds/agent").await;
    let envs = pods(
        &t,
        "app=agent",
        "{.spec.nodeName} {.spec.containers[0].env[0].value}",
    )
    .await;
    assert_eq!(envs, ["node-1 2", "node-2 2"]);

    // A node no longer selected loses its pod.
    t.must(&["label", "node", "node-2", "role-"]).await;
    eventually(
        "node-2's daemon pod gone",
        Duration::from_secs(60),
        || async {
            let v = pods(&t, "app=agent", "{.spec.nodeName}").await;
            (v == ["node-1"]).then_some(())
        },
    )
    .await;
    rollout(&t, "ds/agent").await;
    t.must(&["delete", "ds", "agent"]).await;
    eventually("daemon pods collected", Duration::from_secs(60), || async {
        pods(&t, "app=agent", "{.metadata.name}")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolls_replica_sets_and_scales() {
    let t = TestCluster::start(2).await;
    t.kubectl_stdin(&["apply", "-f", "-"], &deployment()).await;
    rollout(&t, "deploy/web").await;
    let rs = t
        .must(&[
            "get",
            "rs",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .await;
    let hash = rs.strip_prefix("web-").expect("web-<hash>").to_string();
    assert_eq!(
        pods(&t, "app=web", "{.metadata.labels.pod-template-hash}").await,
        [hash.clone(), hash.clone()]
    );

    t.must(&["scale", "deploy/web", "--replicas=3"]).await;
    rollout(&t, "deploy/web").await;
    let ready = t
        .must(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.readyReplicas}/{.status.updatedReplicas}",
        ])
        .await;
    assert_eq!(ready, "3/3");

    t.must(&["set", "env", "deploy/web", "VERSION=2"]).await;
    rollout(&t, "deploy/web").await;
    let sets = t
        .must(&["get", "rs", "-l", "app=web", "-o", "jsonpath={range .items[*]}{.spec.replicas} {.metadata.annotations.deployment\\.kubernetes\\.io/revision}{\"\\n\"}{end}"])
        .await;
    let mut sets: Vec<&str> = sets.lines().collect();
    sets.sort();
    assert_eq!(sets, ["0 1", "3 2"], "old set emptied, new set full");
    eventually("only new pods", Duration::from_secs(60), || async {
        let v = pods(&t, "app=web", "{.spec.containers[0].env[0].value}").await;
        (v == ["2", "2", "2"]).then_some(())
    })
    .await;

    t.must(&["scale", "deploy/web", "--replicas=0"]).await;
    eventually(
        "pods gone at 0 replicas",
        Duration::from_secs(60),
        || async {
            pods(&t, "app=web", "{.metadata.name}")
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    t.must(&["delete", "deploy", "web"]).await;
    eventually(
        "replica sets collected",
        Duration::from_secs(60),
        || async {
            let rs = t.must(&["get", "rs", "-o", "name"]).await;
            rs.trim().is_empty().then_some(())
        },
    )
    .await;
    t.shutdown().await;
}

fn executable(dir: &Path, name: &str, script: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_map_to_executables_or_fail_to_pull() {
    let bin = tempfile::tempdir().unwrap();
    executable(
        bin.path(),
        "hello",
        "echo entrypoint \"$@\"; exec sleep 600",
    );
    executable(bin.path(), "greet", "echo command \"$@\"; exec sleep 600");
    let mut images = ImageMap::with_defaults();
    images
        .add_flag(&format!("example.com/tools/hello={}", bin.path().display()))
        .unwrap();
    let t = TestCluster::start_with(|c| cairn_harness::ClusterConfig {
        nodes: 1,
        images: Arc::new(images),
        ..c
    })
    .await;
    let pods = r#"
apiVersion: v1
kind: Pod
metadata: {name: entry}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: "example.com/tools/hello:v1.2", args: ["a1"]}
---
apiVersion: v1
kind: Pod
metadata: {name: cmd}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: "example.com/tools/hello:v9", command: ["/usr/local/bin/greet"], args: ["a2"]}
---
apiVersion: v1
kind: Pod
metadata: {name: unmapped}
spec:
  containers:
  - {name: c, image: "registry.example.com/other/thing:v3"}
"#;
    let out = t.kubectl_stdin(&["apply", "-f", "-"], pods).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (pod, want) in [("entry", "entrypoint a1"), ("cmd", "command a2")] {
        eventually(
            &format!("{pod} logs {want:?}"),
            Duration::from_secs(60),
            || async {
                let o = t.kubectl(&["logs", pod]).await;
                String::from_utf8_lossy(&o.stdout)
                    .contains(want)
                    .then_some(())
            },
        )
        .await;
    }
    let state = eventually("unmapped pod waits on ErrImagePull", Duration::from_secs(60), || async {
        let s = t
            .must(&["get", "pod", "unmapped", "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].state.waiting.message}|{.status.phase}"])
            .await;
        s.starts_with("ErrImagePull|").then_some(s)
    })
    .await;
    assert!(
        state.contains("--image registry.example.com/other/thing=DIR")
            && state.ends_with("|Pending"),
        "{state}"
    );
    t.must(&["delete", "pod", "entry", "cmd", "unmapped"]).await;
    t.shutdown().await;
    assert!(processes_with(&bin.path().display().to_string()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kustomize_base_renders_and_applies_as_written() {
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests");
    let t = TestCluster::start_with(|c| cairn_harness::ClusterConfig {
        api_only: true,
        ..c
    })
    .await;
    let rendered = t
        .must(&["kustomize", &manifests.display().to_string()])
        .await;
    let kinds = |text: &str| -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("kind: ").map(String::from))
            .collect();
        v.sort();
        v
    };
    let mut files = String::new();
    for e in std::fs::read_dir(&manifests).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            files.push_str(&std::fs::read_to_string(&p).unwrap());
            files.push('\n');
        }
    }
    assert_eq!(
        kinds(&rendered),
        kinds(&files),
        "the base renders every manifest"
    );
    let out = t
        .kubectl(&["apply", "-k", &manifests.display().to_string()])
        .await;
    assert!(
        out.status.success(),
        "apply -k: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = t
        .must(&["get", "ds,deploy", "-n", "cairn-system", "-o", "name"])
        .await;
    let mut got: Vec<&str> = got.lines().collect();
    got.sort();
    assert_eq!(
        got,
        [
            "daemonset.apps/cairn-csi-node",
            "daemonset.apps/cairn-frontend-host",
            "daemonset.apps/cairn-local-provisioner",
            "daemonset.apps/cairn-storaged",
            "deployment.apps/cairn-controller"
        ]
    );
    t.shutdown().await;
}
