//! End to end through the real kubectl: a namespace, a WaitForFirstConsumer
//! class, two static local PVs and a StatefulSet whose pods write to them.

mod common;

use std::time::Duration;

use common::*;

fn manifest(pv1: &str, pv2: &str, marker: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata:
  name: e2e
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local-storage
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: local-pv-1
spec:
  capacity:
    storage: 1Gi
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local-storage
  local:
    path: {pv1}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - key: kubernetes.io/hostname
          operator: In
          values: [node-1]
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: local-pv-2
spec:
  capacity:
    storage: 1Gi
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local-storage
  local:
    path: {pv2}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - key: kubernetes.io/hostname
          operator: In
          values: [node-2]
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
  namespace: e2e
spec:
  serviceName: web
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: app
        image: busybox
        command: ["sh", "-c", "echo $HOSTNAME > /data/hostname; echo started >> /data/starts; exec sleep 3600 # {marker}"]
        env:
        - name: MARKER
          value: {marker}
        volumeMounts:
        - name: www
          mountPath: /data
  volumeClaimTemplates:
  - metadata:
      name: www
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: local-storage
      resources:
        requests:
          storage: 1Gi
"#
    )
}

async fn pod_field(t: &TestCluster, pod: &str, path: &str) -> Option<String> {
    let out = t
        .kubectl(&[
            "get",
            "pod",
            pod,
            "-n",
            "e2e",
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
        .await;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
        .filter(|s| !s.is_empty())
}

async fn ready_on(t: &TestCluster, pod: &str) -> (String, String) {
    eventually(&format!("{pod} Ready"), Duration::from_secs(60), || async {
        let ready = pod_field(t, pod, r#".status.conditions[?(@.type=="Ready")].status"#).await?;
        if ready != "True" {
            return None;
        }
        Some((
            pod_field(t, pod, ".spec.nodeName").await?,
            pod_field(t, pod, ".metadata.uid").await?,
        ))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statefulset_on_static_local_pvs_through_kubectl() {
    let t = TestCluster::start(2).await;
    let marker = format!("cairn-e2e-{}", std::process::id());
    let pv1 = t.dir.path().join("disks/pv1");
    let pv2 = t.dir.path().join("disks/pv2");
    std::fs::create_dir_all(&pv1).unwrap();
    std::fs::create_dir_all(&pv2).unwrap();
    let m = manifest(pv1.to_str().unwrap(), pv2.to_str().unwrap(), &marker);
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &m).await;
    assert!(
        out.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        applied.contains("statefulset.apps/web created"),
        "{applied}"
    );

    // Each pod lands on the node of the PV its claim bound to, and writes there.
    let (node0, uid0) = ready_on(&t, "web-0").await;
    let (node1, _) = ready_on(&t, "web-1").await;
    assert_ne!(node0, node1, "the two PVs are on different nodes");
    let pv_of = |claim: &'static str| {
        let t = &t;
        async move {
            t.must(&[
                "get",
                "pvc",
                claim,
                "-n",
                "e2e",
                "-o",
                "jsonpath={.spec.volumeName}",
            ])
            .await
        }
    };
    let vol0 = pv_of("www-web-0").await;
    let vol1 = pv_of("www-web-1").await;
    let dir_of = |v: &str| {
        if v == "local-pv-1" {
            (pv1.clone(), "node-1")
        } else {
            (pv2.clone(), "node-2")
        }
    };
    let (dir0, want0) = dir_of(&vol0);
    let (dir1, want1) = dir_of(&vol1);
    assert_eq!(node0, want0);
    assert_eq!(node1, want1);
    let hostname0 = eventually("web-0 wrote its hostname", Duration::from_secs(10), || {
        let p = dir0.join("hostname");
        async move { std::fs::read_to_string(p).ok().filter(|s| !s.is_empty()) }
    })
    .await;
    assert_eq!(hostname0.trim(), "web-0");
    eventually("web-1 wrote its hostname", Duration::from_secs(10), || {
        let p = dir1.join("hostname");
        async move {
            std::fs::read_to_string(p)
                .ok()
                .filter(|s| s.trim() == "web-1")
        }
    })
    .await;
    assert_eq!(
        t.must(&[
            "get",
            "pvc",
            "www-web-0",
            "-n",
            "e2e",
            "-o",
            "jsonpath={.status.phase}"
        ])
        .await,
        "Bound"
    );
    assert_eq!(
        t.must(&["get", "pv", &vol0, "-o", "jsonpath={.status.phase}"])
            .await,
        "Bound"
    );
    assert_eq!(processes_with(&marker).len(), 2, "one process per pod");

    // Logs and describe work through kubectl.
    let describe = t.must(&["describe", "pod", "web-0", "-n", "e2e"]).await;
    assert!(
        describe.contains("Successfully assigned e2e/web-0"),
        "{describe}"
    );

    // Delete web-0: it comes back on the same node and sees the same data.
    t.must(&["delete", "pod", "web-0", "-n", "e2e", "--wait=false"])
        .await;
    let (node0b, uid0b) = ready_on(&t, "web-0").await;
    assert_ne!(uid0, uid0b, "a new pod object");
    assert_eq!(node0b, node0);
    eventually(
        "web-0 restarted on its old data",
        Duration::from_secs(10),
        || {
            let p = dir0.join("starts");
            async move {
                std::fs::read_to_string(p)
                    .ok()
                    .filter(|s| s.lines().count() == 2)
            }
        },
    )
    .await;

    // Scale to zero and back.
    t.must(&["scale", "statefulset", "web", "-n", "e2e", "--replicas=0"])
        .await;
    eventually(
        "pods gone after scale to 0",
        Duration::from_secs(60),
        || async {
            let out = t.must(&["get", "pods", "-n", "e2e", "-o", "name"]).await;
            out.trim().is_empty().then_some(())
        },
    )
    .await;
    assert!(
        processes_with(&marker).is_empty(),
        "no container process after scale to 0"
    );
    t.must(&["scale", "statefulset", "web", "-n", "e2e", "--replicas=2"])
        .await;
    let (n0, _) = ready_on(&t, "web-0").await;
    let (n1, _) = ready_on(&t, "web-1").await;
    assert_eq!((n0, n1), (node0.clone(), node1.clone()));
    eventually(
        "statefulset reports 2 ready replicas",
        Duration::from_secs(30),
        || async {
            let ready = t
                .must(&[
                    "get",
                    "sts",
                    "web",
                    "-n",
                    "e2e",
                    "-o",
                    "jsonpath={.status.readyReplicas}",
                ])
                .await;
            (ready == "2").then_some(())
        },
    )
    .await;

    // Delete everything: no stray process or mount. The namespace controller may
    // remove the StatefulSet before kubectl reaches it, as on a real cluster.
    let out = t
        .kubectl_stdin(
            &["delete", "-f", "-", "--wait=true", "--ignore-not-found"],
            &m,
        )
        .await;
    assert!(
        out.status.success(),
        "delete failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("namespace e2e gone", Duration::from_secs(60), || async {
        let out = t.kubectl(&["get", "ns", "e2e"]).await;
        (!out.status.success()).then_some(())
    })
    .await;
    eventually(
        "container processes gone",
        Duration::from_secs(10),
        || async { processes_with(&marker).is_empty().then_some(()) },
    )
    .await;
    assert!(
        mounts_under(t.dir.path()).is_empty(),
        "stray mounts: {:?}",
        mounts_under(t.dir.path())
    );
    assert!(
        std::fs::read_to_string(pv1.join("hostname")).is_ok(),
        "Retain keeps the data on the PV path"
    );
    t.shutdown().await;
}
