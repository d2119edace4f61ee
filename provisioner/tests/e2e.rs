//! End to end: cairn-harness with Cairn installed by `kubectl apply -k manifests/` (or run as
//! the harness's processes where a test controls one by name), driven by kubectl and cairnctl.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use cairn_harness::components::{PROVISIONER, SYSTEM_NAMESPACE};
use common::{Env, pod, poll, pvc, run, run_processes};
use nix::sys::signal::Signal;
use serde_json::Value;

const BIND: Duration = Duration::from_secs(60);
const POD: Duration = Duration::from_secs(90);
const GONE: Duration = Duration::from_secs(60);
const RESIZE: Duration = Duration::from_secs(150);
const LEASE: &str = "csi-cairn-dev-provisioner";

/// The node names a PV's required nodeAffinity admits for `key`.
fn affinity_values(pv: &Value, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    for term in pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for e in term["matchExpressions"].as_array().into_iter().flatten() {
            if e["key"] == key {
                out.extend(
                    e["values"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_string)),
                );
            }
        }
    }
    out
}

/// Checks, for `during`, that a claim stays Pending and no volume or PV appears.
async fn stays_pending(env: &Env, pvc: &str, during: Duration) {
    let until = std::time::Instant::now() + during;
    while std::time::Instant::now() < until {
        assert_eq!(env.phase("pvc", pvc).await.as_deref(), Some("Pending"));
        assert!(env.volume_names().await.is_empty(), "a volume appeared");
        assert!(env.pv_handles().await.is_empty(), "a CSI PV appeared");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Deletes pods and claims, then waits until storaged holds no volume and no PV is left.
async fn delete_all(env: &Env, pods: &[&str], pvcs: &[&str]) {
    for p in pods {
        env.must(&["delete", "pod", p, "--wait=false"]).await;
    }
    for p in pods {
        env.wait_gone("pod", p, POD).await;
    }
    for c in pvcs {
        env.must(&["delete", "pvc", c, "--wait=false"]).await;
    }
    poll("storaged has no volumes left", GONE, || async {
        env.volume_names().await.is_empty().then_some(())
    })
    .await;
    poll("no PersistentVolume left", GONE, || async {
        env.list("pv", &[]).await.is_empty().then_some(())
    })
    .await;
}

/// Immediate class: Bound at once; one pod writes, another on another node reads the
/// same data; deleting the PVC deletes the volume in storaged and the PV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_class_write_read_delete() {
    run(|env| async move {
        env.apply(&pvc("data", "cairn-replicated", "1Gi")).await;
        let pv_name = env.bound_pv("data", BIND).await;
        let pv = env.get("pv", &pv_name).await.expect("pv");
        let handle = pv["spec"]["csi"]["volumeHandle"].as_str().expect("handle");
        assert_eq!(pv["spec"]["csi"]["driver"], "csi.cairn.dev");
        assert!(env.volume_names().await.contains(handle));

        let writer = pod(
            "writer",
            "data",
            Some("node-1"),
            "Never",
            "echo cairn-e2e > /data/hello && sync && cat /data/hello",
        );
        env.apply(&writer).await;
        env.wait_phase("pod", "writer", "Succeeded", POD).await;
        assert_eq!(env.logs("writer").await.trim(), "cairn-e2e");
        env.must(&["delete", "pod", "writer"]).await;
        env.wait_gone("pod", "writer", POD).await;

        let reader = pod("reader", "data", Some("node-2"), "Never", "cat /data/hello");
        env.apply(&reader).await;
        env.wait_phase("pod", "reader", "Succeeded", POD).await;
        assert_eq!(env.logs("reader").await.trim(), "cairn-e2e");

        delete_all(&env, &["reader"], &["data"]).await;
    })
    .await;
}

/// cairn-local (WaitForFirstConsumer): Pending with no pod; with a pod, provisioned on the
/// pod's node, and the PV's nodeAffinity names that node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_class_waits_for_first_consumer() {
    run(|env| async move {
        env.apply(&pvc("local", "cairn-local", "512Mi")).await;
        stays_pending(&env, "local", Duration::from_secs(6)).await;
        env.apply(&pod(
            "user",
            "local",
            Some("node-2"),
            "Always",
            "echo local > /data/f && cat /data/f && sleep 3600",
        ))
        .await;
        let pv_name = env.bound_pv("local", BIND).await;
        let pv = env.get("pv", &pv_name).await.expect("pv");
        assert_eq!(
            affinity_values(&pv, "topology.cairn.dev/node"),
            vec!["node-2".to_string()],
            "PV nodeAffinity: {}",
            pv["spec"]["nodeAffinity"]
        );
        let claim = env.get("pvc", "local").await.expect("pvc");
        assert_eq!(
            claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"],
            "node-2"
        );
        let vols = env.volumes().await;
        assert_eq!(vols.len(), 1, "{vols:?}");
        assert_eq!(vols[0]["type"], "local");
        assert_eq!(vols[0]["members"][0]["node"], "node-2");
        let p = env.wait_phase("pod", "user", "Running", POD).await;
        assert_eq!(p["spec"]["nodeName"], "node-2");
        poll("pod wrote to its local volume", POD, || async {
            (env.logs("user").await.trim() == "local").then_some(())
        })
        .await;
        delete_all(&env, &["user"], &["local"]).await;
    })
    .await;
}

/// The size of /data in KiB, from the last `df` line a pod logged.
fn df_kib(log: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find(|l| l.ends_with("/data"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
}

/// An expandable replicated class on xfs: this sandbox's kernel refuses ext4 online resize
/// (`resize2fs: Permission denied to resize filesystem`), xfs_growfs works.
const XFS_CLASS: &str = "apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: cairn-replicated-xfs
provisioner: csi.cairn.dev
parameters:
  type: replicated
  replicas: \"3\"
  csi.storage.k8s.io/fstype: xfs
reclaimPolicy: Delete
volumeBindingMode: Immediate
allowVolumeExpansion: true
";

/// Online expansion of a mounted PVC: ControllerExpand, then NodeExpand by the kubelet,
/// and `df` inside the running pod sees the new size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_expansion_seen_by_df() {
    run(|env| async move {
        env.apply(XFS_CLASS).await;
        env.apply(&pvc("grow", "cairn-replicated-xfs", "1Gi")).await;
        env.bound_pv("grow", BIND).await;
        env.apply(&pod(
            "df",
            "grow",
            None,
            "Always",
            "while true; do df -k /data | tail -n 1; sleep 1; done",
        ))
        .await;
        env.wait_phase("pod", "df", "Running", POD).await;
        let before = poll("df output in the pod's log", POD, || async {
            df_kib(&env.logs("df").await)
        })
        .await;
        assert!(before < 1024 * 1024, "1Gi filesystem reports {before} KiB");
        env.must(&[
            "patch",
            "pvc",
            "grow",
            "--type=merge",
            "-p",
            r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#,
        ])
        .await;
        let after = poll(
            "df in the pod sees the expanded filesystem",
            RESIZE,
            || async { df_kib(&env.logs("df").await).filter(|k| *k > 3 * 512 * 1024) },
        )
        .await;
        assert!(after <= 2 * 1024 * 1024, "{after} KiB");
        poll("PVC status capacity 2Gi", BIND, || async {
            let c = env.get("pvc", "grow").await?;
            (c["status"]["capacity"]["storage"] == "2Gi").then_some(())
        })
        .await;
        let vols = env.volumes().await;
        assert_eq!(vols[0]["size_bytes"], 2u64 << 30);
        delete_all(&env, &["df"], &["grow"]).await;
    })
    .await;
}

/// Restarts mid-provision, with no duplicate volume: (1) the provisioner is SIGKILLed while
/// its CreateVolume is in flight (the controller plugin is frozen with SIGSTOP meanwhile);
/// (2) a volume was created but the provisioner died before writing the PV (the state is
/// made with cairnctl while the provisioner is down). Each time the restarted provisioner
/// binds the claim to exactly one volume named after the claim's uid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioner_restart_mid_provision_no_duplicate() {
    run_processes(|env| async move {
        let csi_pid = env
            .components
            .lock()
            .await
            .pid("cairn-csi-controller")
            .expect("controller plugin pid") as i32;
        let csi = nix::unistd::Pid::from_raw(csi_pid);
        // A first claim, so that the provisioner leads, is connected and knows the
        // controller's capabilities before the plugin is frozen.
        env.apply(&pvc("warm", "cairn-replicated", "256Mi")).await;
        let warm = env.bound_pv("warm", BIND).await;

        // (1) Killed with CreateVolume in flight.
        nix::sys::signal::kill(csi, Signal::SIGSTOP).expect("SIGSTOP");
        env.apply(&pvc("inflight", "cairn-replicated", "1Gi")).await;
        let log = format!("{PROVISIONER}.log");
        poll("provisioner sends CreateVolume", BIND, || async {
            env.component_log(&log)
                .contains("provisioning pvc=default/inflight")
                .then_some(())
        })
        .await;
        let killed = env
            .components
            .lock()
            .await
            .stop(PROVISIONER, Signal::SIGKILL)
            .await;
        nix::sys::signal::kill(csi, Signal::SIGCONT).expect("SIGCONT");
        killed.expect("kill provisioner");
        assert_eq!(env.pv_handles().await, BTreeSet::from([warm.clone()]));
        let spec = env.layout.provisioner_spec(PROVISIONER);
        env.components
            .lock()
            .await
            .start(spec.clone())
            .expect("restart");
        let inflight = env.bound_pv("inflight", BIND).await;
        let uid = |v: Value| v["metadata"]["uid"].as_str().expect("uid").to_string();
        let pvc_uid = uid(env.get("pvc", "inflight").await.expect("pvc"));
        assert_eq!(inflight, format!("pvc-{pvc_uid}"));
        let mut want = BTreeSet::from([warm, inflight]);
        assert_eq!(env.volume_names().await, want);
        assert_eq!(env.pv_handles().await, want);

        // (2) A volume without a PV, as left by a crash after CreateVolume returned.
        env.components
            .lock()
            .await
            .stop(PROVISIONER, Signal::SIGKILL)
            .await
            .expect("kill provisioner");
        env.apply(&pvc("orphan", "cairn-replicated", "1Gi")).await;
        let orphan = format!("pvc-{}", uid(env.get("pvc", "orphan").await.expect("pvc")));
        env.cairnctl(&[
            "volume",
            "create",
            &orphan,
            "--size",
            "1GiB",
            "--replicas",
            "3",
        ])
        .await;
        env.components.lock().await.start(spec).expect("restart");
        assert_eq!(env.bound_pv("orphan", BIND).await, orphan);
        want.insert(orphan);
        assert_eq!(env.volume_names().await, want);
        assert_eq!(env.pv_handles().await, want);
        delete_all(&env, &[], &["warm", "inflight", "orphan"]).await;
    })
    .await;
}

async fn lease_holder(env: &Env) -> Option<String> {
    let l = env
        .kubectl(&["get", "lease", LEASE, "-n", SYSTEM_NAMESPACE, "-o", "json"])
        .await;
    if !l.ok {
        return None;
    }
    let v: Value = serde_json::from_str(&l.stdout).ok()?;
    v["spec"]["holderIdentity"].as_str().map(str::to_string)
}

/// Two provisioner replicas: only the Lease holder provisions; SIGKILL it and the other
/// takes the Lease and provisions the next claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_failover() {
    run_processes(|env| async move {
        poll("first replica holds the lease", BIND, || async {
            lease_holder(&env)
                .await
                .filter(|h| h == PROVISIONER)
                .map(|_| ())
        })
        .await;
        let second = "cairn-provisioner-1";
        let spec = env.layout.provisioner_spec(second);
        env.components
            .lock()
            .await
            .start(spec)
            .expect("second replica");
        let second_log = format!("{second}.log");
        poll("second replica is up and waiting", BIND, || async {
            env.component_log(&second_log)
                .contains("leader election on")
                .then_some(())
        })
        .await;

        env.apply(&pvc("one", "cairn-replicated", "256Mi")).await;
        env.bound_pv("one", BIND).await;
        let first_log = env.component_log(&format!("{PROVISIONER}.log"));
        assert!(first_log.contains("provisioning pvc=default/one"));
        assert!(
            !env.component_log(&second_log).contains("provisioning pvc="),
            "the standby replica provisioned"
        );
        assert_eq!(lease_holder(&env).await.as_deref(), Some(PROVISIONER));

        env.components
            .lock()
            .await
            .stop(PROVISIONER, Signal::SIGKILL)
            .await
            .expect("kill leader");
        poll("the second replica takes the lease", BIND, || async {
            lease_holder(&env).await.filter(|h| h == second).map(|_| ())
        })
        .await;
        env.apply(&pvc("two", "cairn-replicated", "256Mi")).await;
        env.bound_pv("two", BIND).await;
        assert!(
            env.component_log(&second_log)
                .contains("provisioning pvc=default/two")
        );
        delete_all(&env, &[], &["one", "two"]).await;
    })
    .await;
}

/// Static local PVs: a directory in node-3's discovery directory becomes a `local-storage`
/// PV pinned to node-3; a claim on that class binds by WaitForFirstConsumer and the pod
/// lands on node-3 and writes into that directory; released, the PV is wiped and offered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_local_pv_binds_by_first_consumer() {
    // On the processes: it names the discovered directory by its host path, which the
    // install's provisioner (inside node-3's mount namespace) sees as /mnt/cairn-disks/…
    run_processes(|env| async move {
        let disk = env.layout.discovery_dir("node-3").join("disk-a");
        std::fs::create_dir_all(&disk).expect("disk dir");
        let path = disk.display().to_string();
        let pv = poll("a local PV for the discovered directory", BIND, || async {
            env.list("pv", &[])
                .await
                .into_iter()
                .find(|pv| pv["spec"]["local"]["path"] == path.as_str())
        })
        .await;
        let pv_name = pv["metadata"]["name"].as_str().expect("name").to_string();
        assert_eq!(pv["spec"]["storageClassName"], "local-storage");
        assert_eq!(
            affinity_values(&pv, "kubernetes.io/hostname"),
            vec!["node-3".to_string()],
            "{}",
            pv["spec"]["nodeAffinity"]
        );
        env.wait_phase("pv", &pv_name, "Available", BIND).await;

        env.apply(&pvc("static", "local-storage", "1Mi")).await;
        stays_pending(&env, "static", Duration::from_secs(3)).await;
        env.apply(&pod(
            "static-user",
            "static",
            None,
            "Never",
            "echo static > /data/f",
        ))
        .await;
        assert_eq!(env.bound_pv("static", BIND).await, pv_name);
        let p = env.wait_phase("pod", "static-user", "Succeeded", POD).await;
        assert_eq!(p["spec"]["nodeName"], "node-3");
        assert_eq!(
            std::fs::read_to_string(disk.join("f")).expect("file on the disk"),
            "static\n"
        );
        env.must(&["delete", "pod", "static-user"]).await;
        env.must(&["delete", "pvc", "static"]).await;
        poll("released PV wiped and Available again", BIND, || async {
            let pv = env.get("pv", &pv_name).await?;
            (pv["status"]["phase"] == "Available" && !disk.join("f").exists()).then_some(())
        })
        .await;
    })
    .await;
}

/// A storm of creates and deletes with a provisioner restart in the middle: storaged's
/// volume list equals the PV list whenever things settle, and both end empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_list_matches_pv_list_after_storm() {
    run_processes(|env| async move {
        let names: Vec<String> = (0..6).map(|i| format!("storm-{i}")).collect();
        let all: String = names
            .iter()
            .map(|n| pvc(n, "cairn-replicated", "128Mi"))
            .collect::<Vec<_>>()
            .join("---\n");
        env.apply(&all).await;
        // Delete half while they are being provisioned, and restart the provisioner.
        for n in &names[..3] {
            env.must(&["delete", "pvc", n, "--wait=false"]).await;
        }
        env.components
            .lock()
            .await
            .restart(PROVISIONER, Signal::SIGTERM)
            .await
            .expect("restart provisioner");
        for n in &names[3..] {
            env.bound_pv(n, BIND).await;
        }
        let settled = poll("storaged volumes == PV handles (3)", GONE, || async {
            let vols = env.volume_names().await;
            let pvs = env.pv_handles().await;
            (vols == pvs && vols.len() == 3).then_some(vols)
        })
        .await;
        let mut bound = BTreeSet::new();
        for n in &names[3..] {
            bound.insert(
                env.get("pvc", n).await.expect("pvc")["spec"]["volumeName"]
                    .as_str()
                    .expect("volumeName")
                    .to_string(),
            );
        }
        assert_eq!(settled, bound);
        // And again: recreate two of the deleted names, then delete everything.
        let again: String = names[..2]
            .iter()
            .map(|n| pvc(n, "cairn-replicated", "128Mi"))
            .collect::<Vec<_>>()
            .join("---\n");
        env.apply(&again).await;
        for n in &names[..2] {
            env.bound_pv(n, BIND).await;
        }
        let refs: Vec<&str> = names[..2]
            .iter()
            .chain(&names[3..])
            .map(String::as_str)
            .collect();
        delete_all(&env, &[], &refs).await;
    })
    .await;
}

/// Bytes of a Kubernetes quantity in the binary or plain form the provisioner writes.
fn quantity_bytes(q: &str) -> Option<u64> {
    let units = [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40), ("Pi", 50)];
    for (suffix, shift) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().ok().map(|n| n << shift);
        }
    }
    q.parse().ok()
}

/// Fills each node's local pool with a 15GiB local volume `fill-<node>` (of its 20GiB).
async fn fill_nodes(env: &Env, nodes: &[&str]) {
    for n in nodes {
        env.cairnctl(&[
            "volume",
            "create",
            &format!("fill-{n}"),
            "--size",
            "15GiB",
            "--type",
            "local",
            "--node",
            n,
        ])
        .await;
    }
}

/// The `cairn-local` capacity published for `node`, in bytes.
fn local_free(caps: &[Value], node: &str) -> Option<u64> {
    caps.iter()
        .filter(|c| c["storageClassName"] == "cairn-local")
        .filter(|c| c["nodeTopology"]["matchLabels"]["topology.cairn.dev/node"] == node)
        .find_map(|c| c["capacity"].as_str().and_then(quantity_bytes))
}

/// An 8Gi `cairn-local` claim `big` and a pod `big-user` that writes to it.
async fn start_big_claim(env: &Env) {
    env.apply(&pvc("big", "cairn-local", "8Gi")).await;
    env.apply(&pod(
        "big-user",
        "big",
        None,
        "Always",
        "echo big > /data/f && cat /data/f && sleep 3600",
    ))
    .await;
}

/// `big` is provisioned on node-3 (within `bind`) and its pod runs there; then the
/// fill volumes of node-1 and node-2 and the claim and pod are removed.
async fn big_claim_lands_on_node_3(env: &Env, bind: Duration) {
    let pv_name = env.bound_pv("big", bind).await;
    let pv = env.get("pv", &pv_name).await.expect("pv");
    assert_eq!(
        affinity_values(&pv, "topology.cairn.dev/node"),
        vec!["node-3".to_string()]
    );
    let p = env.wait_phase("pod", "big-user", "Running", POD).await;
    assert_eq!(p["spec"]["nodeName"], "node-3");
    for n in ["node-1", "node-2"] {
        env.cairnctl(&["volume", "rm", &format!("fill-{n}")]).await;
    }
    delete_all(env, &["big-user"], &["big"]).await;
}

/// A forced RESOURCE_EXHAUSTED leads to a re-pick. Every node really has 5GiB of its 20GiB
/// free, but a stale CSIStorageCapacity (what a capacity race leaves behind) says node-1 has
/// room, so the scheduler picks node-1 for an 8Gi `cairn-local` claim. storaged refuses, the
/// provisioner drops `selected-node` with a ProvisioningFailed event, and once the stale object
/// is gone and node-3 has room the claim is provisioned on node-3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_exhausted_leads_to_a_re_pick() {
    run_processes(|env| async move {
        fill_nodes(&env, &["node-1", "node-2", "node-3"]).await;
        let want = 8u64 << 30;
        poll("cairn-local capacity: every node short", BIND, || async {
            let caps = env.list("csistoragecapacities", &["-A"]).await;
            let all: Option<Vec<u64>> = ["node-1", "node-2", "node-3"]
                .iter()
                .map(|n| local_free(&caps, n))
                .collect();
            all.filter(|v| v.iter().all(|f| *f < want)).map(|_| ())
        })
        .await;
        env.apply(
            "apiVersion: storage.k8s.io/v1\nkind: CSIStorageCapacity\nmetadata:\n  name: stale-node-1\n  namespace: default\nstorageClassName: cairn-local\nnodeTopology:\n  matchLabels:\n    topology.cairn.dev/node: node-1\ncapacity: 100Gi\n",
        )
        .await;
        start_big_claim(&env).await;
        let refused = poll(
            "a ProvisioningFailed event that reschedules the claim",
            BIND,
            || async {
                // The provisioner records through events.k8s.io/v1 (kube-rs' Recorder).
                env.list("events.events.k8s.io", &[])
                    .await
                    .into_iter()
                    .filter(|e| e["regarding"]["name"] == "big")
                    .filter(|e| e["reason"] == "ProvisioningFailed")
                    .find_map(|e| e["note"].as_str().map(str::to_string))
                    .filter(|m| m.contains("rescheduling"))
            },
        )
        .await;
        // Only the RESOURCE_EXHAUSTED path reschedules (provision.rs); nothing was provisioned.
        eprintln!("refusal: {refused}");
        // As on a real API server, the events.k8s.io event is also a core Event for describe.
        let described = env.must(&["describe", "pvc", "big"]).await;
        assert!(
            described.contains("ProvisioningFailed") && described.contains("rescheduling"),
            "kubectl describe pvc shows the provisioner's warning:\n{described}"
        );
        assert!(
            env.list("pv", &[])
                .await
                .iter()
                .all(|pv| pv["spec"]["claimRef"]["name"] != "big"),
            "nothing may be provisioned on node-1"
        );
        env.must(&["delete", "csistoragecapacity", "stale-node-1", "-n", "default"])
            .await;
        env.cairnctl(&["volume", "rm", "fill-node-3"]).await;
        big_claim_lands_on_node_3(&env, POD).await;
    })
    .await;
}

/// A node with too little capacity is skipped: local volumes made with cairnctl leave node-1
/// and node-2 with 5GiB of their 20GiB, the published CSIStorageCapacity says so, and a pod
/// whose 8Gi `cairn-local` claim waits for its first consumer lands on node-3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_capacity_skips_full_nodes() {
    run_processes(|env| async move {
        fill_nodes(&env, &["node-1", "node-2"]).await;
        let want = 8u64 << 30;
        poll(
            "cairn-local capacity: node-1 and node-2 short, node-3 not",
            BIND,
            || async {
                let caps = env.list("csistoragecapacities", &["-A"]).await;
                let free = |node: &str| local_free(&caps, node);
                let (a, b, c) = (free("node-1")?, free("node-2")?, free("node-3")?);
                (a < want && b < want && c >= want).then_some(())
            },
        )
        .await;
        start_big_claim(&env).await;
        big_claim_lands_on_node_3(&env, BIND).await;
    })
    .await;
}

/// The example StatefulSet of `manifests/examples` (two pods, a replicated claim each):
/// a recreated pod finds its data; scaled to zero with its claims deleted, every volume,
/// PV and loop device goes. Regression: a pod started while another pod's volume was
/// staged held a copy of that mount, so the volume could not be unstaged and leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_statefulset_keeps_data_and_cleans_up() {
    run(|env| async move {
        env.apply(include_str!("../../manifests/examples/statefulset.yaml"))
            .await;
        let boots = |pod: &'static str, n: usize| {
            let env = env.clone();
            async move {
                poll(&format!("{pod} has logged {n} boots"), POD, || async {
                    let l = env.logs(pod).await;
                    (l.lines().count() == n).then_some(l)
                })
                .await
            }
        };
        let first = boots("web-0", 1).await;
        boots("web-1", 1).await;
        let uid = |v: Value| {
            v["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        let old_uid = uid(env.get("pod", "web-0").await.expect("web-0"));
        env.must(&["delete", "pod", "web-0"]).await;
        poll("web-0 recreated", POD, || async {
            env.get("pod", "web-0")
                .await
                .filter(|p| uid(p.clone()) != old_uid)
        })
        .await;
        let again = boots("web-0", 2).await;
        assert!(again.starts_with(&first), "{first:?} then {again:?}");

        env.must(&["scale", "statefulset", "web", "--replicas=0"])
            .await;
        env.wait_gone("pod", "web-1", POD).await;
        env.wait_gone("pod", "web-0", POD).await;
        env.must(&["delete", "statefulset", "web"]).await;
        env.must(&["delete", "service", "web"]).await;
        delete_all(&env, &[], &["data-web-0", "data-web-1"]).await;
    })
    .await;
}

/// A claim whose dataSource is another claim starts as a copy of it (a CSI clone made by
/// storaged), larger than its source; afterwards the two are independent volumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_cloned_from_another_holds_its_data() {
    run(|env| async move {
        env.apply(&pvc("origin", "cairn-replicated", "1Gi")).await;
        let origin_pv = env.bound_pv("origin", BIND).await;
        let writer = pod(
            "writer",
            "origin",
            Some("node-1"),
            "Never",
            "echo cloned-data > /data/f && sync && cat /data/f",
        );
        env.apply(&writer).await;
        env.wait_phase("pod", "writer", "Succeeded", POD).await;
        env.must(&["delete", "pod", "writer"]).await;
        env.wait_gone("pod", "writer", POD).await;

        let clone = format!(
            "{}  dataSource:\n    kind: PersistentVolumeClaim\n    name: origin\n",
            pvc("copy", "cairn-replicated", "2Gi")
        );
        env.apply(&clone).await;
        let copy_pv = env.bound_pv("copy", BIND).await;
        // The origin carried upstream's cloning protection while it was cloned, and is
        // free of it once no claim waits for a clone of it.
        poll("the origin's cloning protection removed", BIND, || async {
            let o = env.get("pvc", "origin").await?;
            let fin = o["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            (!fin
                .iter()
                .any(|f| f == "provisioner.storage.kubernetes.io/cloning-protection"))
            .then_some(())
        })
        .await;
        let log = env.provisioner_log();
        assert!(
            log.contains("cloning protection added") && log.contains("cloning protection removed"),
            "{log}"
        );
        let vols = env.volumes().await;
        let copy = vols
            .iter()
            .find(|v| v["name"] == copy_pv.as_str())
            .expect("the clone's volume in storaged");
        assert_eq!(copy["source"], format!("volume:{origin_pv}"));

        // The copy has the data and the size asked for (its ext4 grown when staged), and
        // writing it leaves the origin as it was.
        let reader = pod(
            "reader",
            "copy",
            Some("node-2"),
            "Never",
            "cat /data/f && df -k /data | tail -1 && echo changed > /data/f && sync",
        );
        env.apply(&reader).await;
        env.wait_phase("pod", "reader", "Succeeded", POD).await;
        let out = env.logs("reader").await;
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("cloned-data"), "{out}");
        let kib: u64 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("df output: {out}"));
        assert!(kib > 1_500_000, "the clone's filesystem spans 2Gi: {out}");
        let check = pod("check", "origin", Some("node-3"), "Never", "cat /data/f");
        env.apply(&check).await;
        env.wait_phase("pod", "check", "Succeeded", POD).await;
        assert_eq!(env.logs("check").await.trim(), "cloned-data");

        delete_all(&env, &["reader", "check"], &["copy", "origin"]).await;
    })
    .await;
}
