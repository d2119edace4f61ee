//! A claim restored from a VolumeSnapshot, through the upstream snapshot-controller (a host
//! process) and the install's csi-snapshotter sidecar (`CAIRN_UPSTREAM_SNAPSHOTTER`, the
//! directory holding both binaries); skipped with a message saying how to build them when unset.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The variable naming the directory of `snapshot-controller` and `csi-snapshotter`.
const ENV: &str = "CAIRN_UPSTREAM_SNAPSHOTTER";
const BINS: [&str; 2] = ["snapshot-controller", "csi-snapshotter"];
const IMAGE: &str = "registry.k8s.io/sig-storage/csi-snapshotter";

const HOW: &str = "build them from github.com/kubernetes-csi/external-snapshotter v8.2.0 (the \
                   version manifests/05-controller.yaml names; Go >= 1.23): `GOFLAGS=-mod=vendor \
                   CGO_ENABLED=0 go build -o DIR/ ./cmd/snapshot-controller ./cmd/csi-snapshotter`, \
                   then CAIRN_UPSTREAM_SNAPSHOTTER=DIR";

/// The directory of both binaries, or None after saying why the test is skipped.
fn upstream_dir() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os(ENV).map(PathBuf::from) else {
        eprintln!("SKIPPED: {ENV} is not set; {HOW}");
        return None;
    };
    let missing: Vec<_> = BINS.iter().filter(|b| !dir.join(b).is_file()).collect();
    if !missing.is_empty() {
        eprintln!("SKIPPED: {ENV}={} lacks {missing:?}; {HOW}", dir.display());
        return None;
    }
    Some(dir)
}

/// A claim of 1Gi in cairn-replicated, from `source` (a VolumeSnapshot) if given, and a pod
/// mounting it at /data that runs `script`.
fn claim_and_pod(claim: &str, source: Option<&str>, pod: &str, script: &str) -> String {
    let data_source = source
        .map(|s| {
            format!(
                r#"  dataSource:
    apiGroup: snapshot.storage.k8s.io
    kind: VolumeSnapshot
    name: {s}
"#
            )
        })
        .unwrap_or_default();
    format!(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {claim}
spec:
  storageClassName: cairn-replicated
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 1Gi
{data_source}---
apiVersion: v1
kind: Pod
metadata:
  name: {pod}
spec:
  restartPolicy: Never
  containers:
    - name: c
      image: busybox
      command: [sh, -c, '{script}']
      volumeMounts:
        - name: d
          mountPath: /data
  volumes:
    - name: d
      persistentVolumeClaim:
        claimName: {claim}
"#
    )
}

/// The bytes of /data/blob in `pod`, once the pod has written /data/done.
async fn blob(t: &TestCluster, pod: &str) -> Vec<u8> {
    eventually(
        &format!("{pod} has its data"),
        Duration::from_secs(240),
        || async {
            let done = t
                .kubectl(&["exec", pod, "--", "test", "-e", "/data/done"])
                .await;
            done.status.success().then_some(())
        },
    )
    .await;
    let out = t.kubectl(&["exec", pod, "--", "cat", "/data/blob"]).await;
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

async fn jsonpath(t: &TestCluster, args: &[&str], path: &str) -> String {
    let mut all = args.to_vec();
    all.extend(["-o", path]);
    let out = t.kubectl(&all).await;
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_restored_from_a_volume_snapshot_has_its_data() {
    let Some(upstream) = upstream_dir() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // The binary as it is: in the pod it reads in-cluster config (decision 059).
    let t = start_install(&[format!("{IMAGE}={}", upstream.display())]).await;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    t.must(&[
        "apply",
        "-f",
        &repo.join("manifests/crds").display().to_string(),
    ])
    .await;
    let controller = Proc::spawn(
        Command::new(upstream.join("snapshot-controller"))
            .arg(format!("--kubeconfig={}", t.kubeconfig().display()))
            .args(["--leader-election=false", "--v=4"]),
        &scratch.path().join("snapshot-controller.log"),
    );
    let class = std::fs::read_to_string(repo.join("manifests/examples/snapshot.yaml")).unwrap();
    let class = class.split("---").next().unwrap();
    t.must_stdin(&["apply", "-f", "-"], class).await;

    // 1 MiB of random data written, synced, and the pod gone (the volume unmounted).
    let write = "head -c 1048576 /dev/urandom > /data/blob && sync && touch /data/done && \
                 sleep 3600";
    let manifest = claim_and_pod("src", None, "writer", write);
    t.must_stdin(&["apply", "-f", "-"], &manifest).await;
    let written = blob(&t, "writer").await;
    assert_eq!(written.len(), 1 << 20);
    t.must(&["delete", "pod", "writer", "--wait=true"]).await;

    // snapshot-controller adds its pvc-as-source-protection finalizer to the claim itself,
    // in a protobuf update (decision 058); without it the snapshot never becomes ready.
    let snapshot = r#"apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata:
  name: snap
spec:
  volumeSnapshotClassName: cairn
  source:
    persistentVolumeClaimName: src
"#;
    t.must_stdin(&["apply", "-f", "-"], snapshot).await;
    eventually(
        "the VolumeSnapshot is readyToUse",
        Duration::from_secs(180),
        || async {
            assert!(controller.exited().is_none(), "snapshot-controller exited");
            let ready = jsonpath(
                &t,
                &["get", "volumesnapshot", "snap"],
                "jsonpath={.status.readyToUse}",
            );
            (ready.await == "true").then_some(())
        },
    )
    .await;
    let handle = jsonpath(
        &t,
        &["get", "volumesnapshotcontent"],
        "jsonpath={.items[0].status.snapshotHandle}",
    )
    .await;
    assert!(!handle.is_empty(), "the content names Cairn's snapshot");

    let manifest = claim_and_pod(
        "restored",
        Some("snap"),
        "reader",
        "touch /data/done && sleep 3600",
    );
    t.must_stdin(&["apply", "-f", "-"], &manifest).await;
    let restored = blob(&t, "reader").await;
    assert!(restored == written, "the restored claim's data differs");
    eprintln!(
        "restored 1 MiB from snapshot {handle} in {:?}",
        started.elapsed()
    );
    controller.stop();
    t.shutdown().await;
}
