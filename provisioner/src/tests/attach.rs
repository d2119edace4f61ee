//! Attacher scenarios: publish → finalizers and status.attached with attachmentMetadata;
//! deletion → unpublish with the CSINode id, status cleared, finalizers removed.

use std::sync::Arc;

use serde_json::json;

use super::fixtures::*;
use crate::controllers::attach;
use crate::testkit::Fixture;

#[tokio::test]
async fn attach_publishes_and_sets_status() {
    let mut f = Fixture::new().await;
    let va = Arc::new(va(false, false));
    let r = f
        .run(
            |mut api| async move {
                let pv_json = serde_json::to_value(pv("Bound", "Delete", false)).unwrap();
                let va_json = serde_json::to_value(super::fixtures::va(false, false)).unwrap();
                api.expect(
                    "GET",
                    &format!("/api/v1/persistentvolumes/{PV}"),
                    200,
                    pv_json.clone(),
                )
                .await;
                let p = api
                    .expect(
                        "PATCH",
                        &format!("/api/v1/persistentvolumes/{PV}"),
                        200,
                        pv_json,
                    )
                    .await;
                assert!(
                    p.body["metadata"]["finalizers"]
                        .as_array()
                        .unwrap()
                        .contains(&json!("external-attacher/csi-cairn-dev"))
                );
                let p = api
                    .expect(
                        "PATCH",
                        "/apis/storage.k8s.io/v1/volumeattachments/csi-abc",
                        200,
                        va_json.clone(),
                    )
                    .await;
                assert_eq!(
                    p.body["metadata"]["finalizers"],
                    json!(["external-attacher/csi-cairn-dev"])
                );
                api.expect_404("GET", "/apis/storage.k8s.io/v1/csinodes/node-1")
                    .await;
                api.expect_404("GET", "/api/v1/nodes/node-1").await;
                let st = api
                    .expect(
                        "PATCH",
                        "/apis/storage.k8s.io/v1/volumeattachments/csi-abc/status",
                        200,
                        va_json,
                    )
                    .await;
                assert_eq!(st.body["status"]["attached"], true);
                assert_eq!(st.body["status"]["attachmentMetadata"]["volume"], PV);
                assert!(st.body["status"]["attachError"].is_null());
                api
            },
            |ctx| attach::reconcile(va.clone(), ctx),
        )
        .await;
    assert!(r.is_ok(), "{r:?}");
    let s = f.csi.state();
    assert_eq!(s.publishes.len(), 1);
    assert_eq!(
        s.publishes[0].node_id, "node-1",
        "falls back to the node name"
    );
    assert_eq!(s.publishes[0].volume_id, PV);
    assert_eq!(s.publishes[0].volume_context["type"], "replicated");
}

#[tokio::test]
async fn detach_unpublishes_and_drops_finalizers() {
    let mut f = Fixture::new().await;
    let va = Arc::new(va(true, true));
    let r = f
        .run(
            |mut api| async move {
                let mut pv_json = serde_json::to_value(pv("Bound", "Delete", false)).unwrap();
                pv_json["metadata"]["finalizers"] = json!(["external-attacher/csi-cairn-dev"]);
                let va_json = serde_json::to_value(super::fixtures::va(true, true)).unwrap();
                api.expect("GET", &format!("/api/v1/persistentvolumes/{PV}"), 200, pv_json.clone()).await;
                api.expect("GET", "/apis/storage.k8s.io/v1/csinodes/node-1", 200, json!({
                    "apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": { "name": "node-1" },
                    "spec": { "drivers": [{ "name": "csi.cairn.dev", "nodeID": "node-1-id" }] }
                })).await;
                let st = api.expect("PATCH", "/apis/storage.k8s.io/v1/volumeattachments/csi-abc/status", 200, va_json.clone()).await;
                assert_eq!(st.body["status"]["attached"], false);
                // The PV is released first, from a fresh read; a conflict is retried.
                api.expect("GET", "/apis/storage.k8s.io/v1/volumeattachments", 200, json!({
                    "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachmentList", "metadata": {}, "items": []
                })).await;
                api.expect("GET", &format!("/api/v1/persistentvolumes/{PV}"), 200, pv_json.clone()).await;
                api.expect("PATCH", &format!("/api/v1/persistentvolumes/{PV}"), 409, json!({
                    "apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Conflict",
                    "message": "the object has been modified", "code": 409
                })).await;
                api.expect("GET", &format!("/api/v1/persistentvolumes/{PV}"), 200, pv_json.clone()).await;
                let p = api.expect("PATCH", &format!("/api/v1/persistentvolumes/{PV}"), 200, pv_json).await;
                assert_eq!(p.body["metadata"]["finalizers"], json!([]));
                // Only then does the VolumeAttachment lose its finalizer.
                let p = api.expect("PATCH", "/apis/storage.k8s.io/v1/volumeattachments/csi-abc", 200, va_json).await;
                assert_eq!(p.body["metadata"]["finalizers"], json!([]));
                api
            },
            |ctx| attach::reconcile(va.clone(), ctx),
        )
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        f.csi.state().unpublishes,
        vec![(PV.to_string(), "node-1-id".to_string())]
    );
}

#[tokio::test]
async fn other_attachers_are_ignored() {
    let mut f = Fixture::new().await;
    let mut v = va(false, false);
    v.spec.attacher = "ebs.csi.aws.com".into();
    let v = Arc::new(v);
    let r = f
        .run(
            |api| async move { api },
            |ctx| attach::reconcile(v.clone(), ctx),
        )
        .await;
    assert!(r.is_ok());
    assert!(f.csi.state().publishes.is_empty());
}
