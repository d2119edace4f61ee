//! Deleter and resizer scenarios: Released+Delete → DeleteVolume, finalizer off, PV deleted;
//! Retain untouched; a raised request → ControllerExpandVolume, PV capacity, PVC conditions.

use std::sync::Arc;

use serde_json::{Value, json};

use super::fixtures::*;
use crate::controllers::{delete, resize};
use crate::testkit::Fixture;

#[tokio::test]
async fn released_delete_pv_deletes_volume_then_finalizer_then_pv() {
    let mut f = Fixture::new().await;
    let pv = Arc::new(pv("Released", "Delete", false));
    let r = f
        .run(
            |mut api| async move {
                let patch = api
                    .expect(
                        "PATCH",
                        &format!("/api/v1/persistentvolumes/{PV}"),
                        200,
                        serde_json::to_value(super::fixtures::pv("Released", "Delete", false))
                            .unwrap(),
                    )
                    .await;
                assert_eq!(
                    patch.body["metadata"]["finalizers"],
                    json!(["kubernetes.io/pv-protection"])
                );
                assert_eq!(patch.body["metadata"]["resourceVersion"], "42");
                api.expect(
                    "DELETE",
                    &format!("/api/v1/persistentvolumes/{PV}"),
                    200,
                    serde_json::to_value(super::fixtures::pv("Released", "Delete", true)).unwrap(),
                )
                .await;
                api
            },
            |ctx| delete::reconcile(pv.clone(), ctx),
        )
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(f.csi.state().deletes, vec![PV.to_string()]);
}

#[tokio::test]
async fn released_retain_pv_is_left_alone() {
    let mut f = Fixture::new().await;
    let pv = Arc::new(pv("Released", "Retain", false));
    let r = f
        .run(
            |api| async move { api },
            |ctx| delete::reconcile(pv.clone(), ctx),
        )
        .await;
    assert!(r.is_ok());
    assert!(f.csi.state().deletes.is_empty());
}

#[tokio::test]
async fn bound_pv_is_never_deleted() {
    let mut f = Fixture::new().await;
    let pv = Arc::new(pv("Bound", "Delete", true));
    let r = f
        .run(
            |api| async move { api },
            |ctx| delete::reconcile(pv.clone(), ctx),
        )
        .await;
    assert!(r.is_ok());
    assert!(
        f.csi.state().deletes.is_empty(),
        "pv-protection keeps a bound PV; no DeleteVolume yet"
    );
}

fn bound_claim(request: &str) -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
    let mut c = serde_json::to_value(pvc("cairn-replicated", json!({}))).unwrap();
    c["spec"]["volumeName"] = json!(PV);
    c["spec"]["resources"]["requests"]["storage"] = json!(request);
    c["status"] = json!({ "phase": "Bound", "capacity": { "storage": "1Gi" } });
    serde_json::from_value(c).unwrap()
}

async fn expand(node_expansion: bool) -> (Fixture, Vec<Value>) {
    let mut f = Fixture::new().await;
    f.csi.state().node_expansion_required = node_expansion;
    let claim = Arc::new(bound_claim("2Gi"));
    let (tx, rx) = std::sync::mpsc::channel();
    let r = f
        .run(
            |mut api| async move {
                api.expect(
                    "GET",
                    &format!("/api/v1/persistentvolumes/{PV}"),
                    200,
                    serde_json::to_value(pv("Bound", "Delete", false)).unwrap(),
                )
                .await;
                api.expect(
                    "GET",
                    "/apis/storage.k8s.io/v1/storageclasses/cairn-replicated",
                    200,
                    class("cairn-replicated", "Immediate", json!({})),
                )
                .await;
                let path = "/api/v1/namespaces/apps/persistentvolumeclaims/data/status";
                let claim_json = serde_json::to_value(bound_claim("2Gi")).unwrap();
                let s1 = api.expect("PATCH", path, 200, claim_json.clone()).await;
                let ev = api.expect_event("apps").await;
                assert_eq!(ev["reason"], "Resizing");
                let pvp = api
                    .expect(
                        "PATCH",
                        &format!("/api/v1/persistentvolumes/{PV}"),
                        200,
                        serde_json::to_value(pv("Bound", "Delete", false)).unwrap(),
                    )
                    .await;
                let s2 = api.expect("PATCH", path, 200, claim_json).await;
                let ev2 = api.expect_event("apps").await;
                tx.send(vec![s1.body, pvp.body, s2.body, ev2]).unwrap();
                api
            },
            |ctx| resize::reconcile(claim.clone(), ctx),
        )
        .await;
    assert!(r.is_ok(), "{r:?}");
    (f, rx.recv().unwrap())
}

#[tokio::test]
async fn expansion_with_node_step_sets_filesystem_resize_pending() {
    let (f, seen) = expand(true).await;
    let s = f.csi.state();
    assert_eq!(s.expands.len(), 1);
    assert_eq!(s.expands[0].volume_id, PV);
    assert_eq!(
        s.expands[0].capacity_range.as_ref().unwrap().required_bytes,
        2 << 30
    );
    assert_eq!(seen[0]["status"]["conditions"][0]["type"], "Resizing");
    assert_eq!(seen[0]["status"]["allocatedResources"]["storage"], "2Gi");
    assert_eq!(
        seen[1],
        json!({ "spec": { "capacity": { "storage": "2Gi" } } })
    );
    assert_eq!(
        seen[2]["status"]["conditions"][0]["type"],
        "FileSystemResizePending"
    );
    assert_eq!(
        seen[2]["status"]["allocatedResourceStatuses"]["storage"],
        "NodeResizePending"
    );
    assert!(
        seen[2]["status"].get("capacity").is_none(),
        "the kubelet finishes and sets capacity"
    );
    assert_eq!(seen[3]["reason"], "FileSystemResizeRequired");
}

#[tokio::test]
async fn expansion_without_node_step_sets_capacity() {
    let (_f, seen) = expand(false).await;
    assert_eq!(seen[2]["status"]["capacity"]["storage"], "2Gi");
    assert_eq!(seen[2]["status"]["conditions"], json!([]));
    assert_eq!(seen[3]["reason"], "VolumeResizeSuccessful");
}

#[tokio::test]
async fn no_growth_means_no_expand() {
    let mut f = Fixture::new().await;
    let claim = Arc::new(bound_claim("1Gi"));
    let r = f
        .run(
            |mut api| async move {
                api.expect(
                    "GET",
                    &format!("/api/v1/persistentvolumes/{PV}"),
                    200,
                    serde_json::to_value(pv("Bound", "Delete", false)).unwrap(),
                )
                .await;
                api
            },
            |ctx| resize::reconcile(claim.clone(), ctx),
        )
        .await;
    assert!(r.is_ok());
    assert!(f.csi.state().expands.is_empty());
}
