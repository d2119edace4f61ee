//! Provisioner scenarios: Immediate → PV with every upstream field; WFFC waits; RESOURCE_EXHAUSTED
//! on WFFC drops selected-node; an unknown parameter is a Warning event and no volume.

use std::sync::Arc;

use serde_json::{Value, json};

use super::fixtures::*;
use crate::controllers::provision;
use crate::testkit::Fixture;

#[tokio::test]
async fn immediate_claim_creates_volume_and_pv() {
    let mut f = Fixture::new().await;
    let claim = Arc::new(pvc(
        "cairn-replicated",
        json!({ "volume.kubernetes.io/storage-provisioner": "csi.cairn.dev" }),
    ));
    let created = f
        .run(
            |mut api| async move {
                let params = json!({ "type": "replicated", "replicas": "3", "csi.storage.k8s.io/fstype": "xfs" });
                api.expect("GET", "/apis/storage.k8s.io/v1/storageclasses/cairn-replicated", 200, class("cairn-replicated", "Immediate", params)).await;
                api.expect_404("GET", &format!("/api/v1/persistentvolumes/{PV}")).await;
                let ev = api.expect_event("apps").await;
                assert_eq!(ev["reason"], "Provisioning");
                let seen = api.expect("POST", "/api/v1/persistentvolumes", 201, Value::Null).await;
                let ev = api.expect_event("apps").await;
                assert_eq!(ev["reason"], "ProvisioningSucceeded");
                check_pv(&seen.body);
                api
            },
            |ctx| provision::reconcile(claim.clone(), ctx),
        )
        .await;
    assert!(created.is_ok(), "{created:?}");
    let s = f.csi.state();
    assert_eq!(s.creates.len(), 1);
    let req = &s.creates[0];
    assert_eq!(req.name, PV);
    assert_eq!(req.capacity_range.as_ref().unwrap().required_bytes, 1 << 30);
    assert_eq!(
        req.parameters.len(),
        2,
        "csi.storage.k8s.io/* keys are stripped: {:?}",
        req.parameters
    );
    assert!(req.accessibility_requirements.is_none());
    assert_eq!(req.volume_capabilities.len(), 1);
}

/// Checks the PV the provisioner posted.
fn check_pv(pv: &Value) {
    {
        assert_eq!(pv["metadata"]["name"], PV);
        assert_eq!(
            pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"],
            "csi.cairn.dev"
        );
        assert_eq!(
            pv["metadata"]["finalizers"],
            json!(["external-provisioner.volume.kubernetes.io/finalizer"])
        );
        let spec = &pv["spec"];
        assert_eq!(spec["csi"]["driver"], "csi.cairn.dev");
        assert_eq!(spec["csi"]["volumeHandle"], PV);
        assert_eq!(spec["csi"]["fsType"], "xfs");
        assert_eq!(spec["csi"]["volumeAttributes"]["type"], "replicated");
        assert!(
            spec["csi"]["volumeAttributes"]["storage.kubernetes.io/csiProvisionerIdentity"]
                .is_string()
        );
        assert_eq!(spec["claimRef"]["uid"], UID);
        assert_eq!(spec["claimRef"]["namespace"], "apps");
        assert_eq!(spec["claimRef"]["name"], "data");
        assert_eq!(spec["claimRef"]["kind"], "PersistentVolumeClaim");
        assert_eq!(spec["persistentVolumeReclaimPolicy"], "Delete");
        assert_eq!(spec["storageClassName"], "cairn-replicated");
        assert_eq!(spec["mountOptions"], json!(["noatime"]));
        assert_eq!(spec["capacity"]["storage"], "1Gi");
        assert_eq!(spec["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(spec["volumeMode"], "Filesystem");
    }
}

#[tokio::test]
async fn wffc_claim_without_selected_node_is_left_alone() {
    let mut f = Fixture::new().await;
    let claim = Arc::new(pvc("cairn-local", json!({})));
    let r = f
        .run(
            |mut api| async move {
                api.expect(
                    "GET",
                    "/apis/storage.k8s.io/v1/storageclasses/cairn-local",
                    200,
                    class(
                        "cairn-local",
                        "WaitForFirstConsumer",
                        json!({ "type": "local" }),
                    ),
                )
                .await;
                api
            },
            |ctx| provision::reconcile(claim.clone(), ctx),
        )
        .await;
    assert!(r.is_ok());
    assert!(f.csi.state().creates.is_empty());
}

#[tokio::test]
async fn wffc_with_selected_node_gets_node_topology_and_affinity() {
    let mut f = Fixture::new().await;
    let claim = Arc::new(pvc(
        "cairn-local",
        json!({ "volume.kubernetes.io/selected-node": "node-2" }),
    ));
    let r = f
        .run(
            |mut api| async move {
                api.expect("GET", "/apis/storage.k8s.io/v1/storageclasses/cairn-local", 200,
                    class("cairn-local", "WaitForFirstConsumer", json!({ "type": "local" }))).await;
                api.expect_404("GET", &format!("/api/v1/persistentvolumes/{PV}")).await;
                api.expect("GET", "/api/v1/nodes/node-2", 200, node("node-2")).await;
                api.expect_event("apps").await;
                let pv = api.expect("POST", "/api/v1/persistentvolumes", 201, Value::Null).await.body;
                let term = &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"];
                assert_eq!(term.as_array().unwrap().len(), 2, "node and zone keys: {term}");
                assert_eq!(term[0]["key"], "topology.cairn.dev/node");
                assert_eq!(term[0]["values"], json!(["node-2"]));
                assert_eq!(term[1]["key"], "topology.kubernetes.io/zone");
                assert!(pv["spec"]["csi"].get("fsType").is_none(), "no fstype parameter, none on the PV");
                api.expect_event("apps").await;
                api
            },
            |ctx| provision::reconcile(claim.clone(), ctx),
        )
        .await;
    assert!(r.is_ok(), "{r:?}");
    let s = f.csi.state();
    let topo = s.creates[0].accessibility_requirements.as_ref().unwrap();
    assert_eq!(
        topo.requisite[0].segments["topology.cairn.dev/node"],
        "node-2"
    );
    assert_eq!(topo.preferred, topo.requisite);
}

#[tokio::test]
async fn resource_exhausted_on_wffc_removes_selected_node() {
    let mut f = Fixture::new().await;
    f.csi.state().create_error = Some(tonic::Status::resource_exhausted("node-1 is full"));
    let claim = Arc::new(pvc(
        "cairn-local",
        json!({ "volume.kubernetes.io/selected-node": "node-1" }),
    ));
    let r = f
        .run(
            |mut api| async move {
                api.expect("GET", "/apis/storage.k8s.io/v1/storageclasses/cairn-local", 200,
                    class("cairn-local", "WaitForFirstConsumer", json!({ "type": "local" }))).await;
                api.expect_404("GET", &format!("/api/v1/persistentvolumes/{PV}")).await;
                api.expect("GET", "/api/v1/nodes/node-1", 200, node("node-1")).await;
                api.expect_event("apps").await;
                let warn = api.expect_event("apps").await;
                assert_eq!(warn["type"], "Warning");
                assert_eq!(warn["reason"], "ProvisioningFailed");
                assert!(warn["note"].as_str().unwrap().contains("node-1 is full"));
                let patch = api.expect("PATCH", "/api/v1/namespaces/apps/persistentvolumeclaims/data", 200,
                    serde_json::to_value(pvc("cairn-local", json!({}))).unwrap()).await;
                assert_eq!(patch.body, json!({ "metadata": { "annotations": { "volume.kubernetes.io/selected-node": null } } }));
                api
            },
            |ctx| provision::reconcile(claim.clone(), ctx),
        )
        .await;
    assert!(r.is_ok(), "a reschedule is not an error: {r:?}");
    assert_eq!(f.csi.state().creates.len(), 1);
}

#[tokio::test]
async fn other_errors_warn_and_retry() {
    let mut f = Fixture::new().await;
    f.csi.state().create_error = Some(tonic::Status::out_of_range("too big"));
    let claim = Arc::new(pvc("cairn-replicated", json!({})));
    let r = f
        .run(
            |mut api| async move {
                api.expect(
                    "GET",
                    "/apis/storage.k8s.io/v1/storageclasses/cairn-replicated",
                    200,
                    class("cairn-replicated", "Immediate", json!({})),
                )
                .await;
                api.expect_404("GET", &format!("/api/v1/persistentvolumes/{PV}"))
                    .await;
                api.expect_event("apps").await;
                let warn = api.expect_event("apps").await;
                assert_eq!(
                    (warn["type"].as_str(), warn["reason"].as_str()),
                    (Some("Warning"), Some("ProvisioningFailed"))
                );
                api
            },
            |ctx| provision::reconcile(claim.clone(), ctx),
        )
        .await;
    let err = r.expect_err("must fail");
    assert_eq!(err.csi_code(), Some(tonic::Code::OutOfRange));
    let a1 = provision::error_policy(claim.clone(), &err, f.ctx.clone());
    let a2 = provision::error_policy(claim.clone(), &err, f.ctx.clone());
    assert_ne!(a1, a2, "backoff grows per failure");
}

#[tokio::test]
async fn unknown_parameter_is_a_warning_and_no_volume() {
    let mut f = Fixture::new().await;
    let claim = Arc::new(pvc("bad", json!({})));
    let r = f
        .run(
            |mut api| async move {
                api.expect(
                    "GET",
                    "/apis/storage.k8s.io/v1/storageclasses/bad",
                    200,
                    class("bad", "Immediate", json!({ "colour": "blue" })),
                )
                .await;
                api.expect_404("GET", &format!("/api/v1/persistentvolumes/{PV}"))
                    .await;
                let warn = api.expect_event("apps").await;
                assert_eq!(warn["type"], "Warning");
                assert_eq!(warn["reason"], "ProvisioningFailed");
                assert!(warn["note"].as_str().unwrap().contains("colour"), "{warn}");
                api
            },
            |ctx| provision::reconcile(claim.clone(), ctx),
        )
        .await;
    assert!(matches!(r, Err(crate::Error::Invalid(_))), "{r:?}");
    assert!(f.csi.state().creates.is_empty());
}

#[tokio::test]
async fn existing_pv_means_nothing_to_do() {
    let mut f = Fixture::new().await;
    let claim = Arc::new(pvc("cairn-replicated", json!({})));
    let r = f
        .run(
            |mut api| async move {
                api.expect(
                    "GET",
                    "/apis/storage.k8s.io/v1/storageclasses/cairn-replicated",
                    200,
                    class("cairn-replicated", "Immediate", json!({})),
                )
                .await;
                api.expect(
                    "GET",
                    &format!("/api/v1/persistentvolumes/{PV}"),
                    200,
                    serde_json::to_value(pv("Bound", "Delete", false)).unwrap(),
                )
                .await;
                api
            },
            |ctx| provision::reconcile(claim.clone(), ctx),
        )
        .await;
    assert!(r.is_ok());
    assert!(f.csi.state().creates.is_empty());
}
