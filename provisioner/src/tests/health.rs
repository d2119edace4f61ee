//! Health scenario: a PV's volume turns degraded (one Warning Event), stays degraded with a
//! new message (no Event), then turns healthy (one Normal Event); other drivers' PVs are skipped.

use std::collections::HashMap;

use cairn_proto::csi::v1 as csi;
use serde_json::json;

use super::fixtures::*;
use crate::controllers::health;
use crate::testkit::{ApiServer, Fixture};

/// Answers the PV list with our PV and one of another driver.
async fn list_pvs(api: &mut ApiServer) {
    let mut other = serde_json::to_value(pv("Bound", "Delete", false)).unwrap();
    other["metadata"]["name"] = json!("pv-nfs");
    other["spec"]["csi"]["driver"] = json!("nfs.example.com");
    let ours = serde_json::to_value(pv("Bound", "Delete", false)).unwrap();
    api.expect(
        "GET",
        "/api/v1/persistentvolumes",
        200,
        json!({ "apiVersion": "v1", "kind": "PersistentVolumeList", "metadata": {}, "items": [ours, other] }),
    )
    .await;
}

fn condition(abnormal: bool, message: &str) -> csi::VolumeCondition {
    csi::VolumeCondition {
        abnormal,
        message: message.into(),
    }
}

#[tokio::test]
async fn events_only_on_transitions() {
    let mut f = Fixture::new().await;
    let mut seen = HashMap::new();
    let poll = async |f: &mut Fixture,
                      seen: &mut HashMap<String, bool>,
                      cond: csi::VolumeCondition,
                      event: bool|
           -> Option<serde_json::Value> {
        f.csi.state().conditions.insert(PV.into(), cond);
        let (tx, rx) = std::sync::mpsc::channel();
        let r = f
            .run(
                |mut api| async move {
                    list_pvs(&mut api).await;
                    if event {
                        tx.send(api.expect_event("default").await).unwrap();
                    }
                    api
                },
                |ctx| async move { health::poll_once(&ctx, seen).await },
            )
            .await;
        assert!(r.is_ok(), "{r:?}");
        rx.try_recv().ok()
    };
    // Healthy from the start: nothing to say.
    assert!(
        poll(&mut f, &mut seen, condition(false, "healthy"), false)
            .await
            .is_none()
    );
    let msg = "degraded: rebuilding replica on node-4, 42 %";
    let ev = poll(&mut f, &mut seen, condition(true, msg), true)
        .await
        .unwrap();
    assert_eq!(ev["reason"], health::DEGRADED);
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["regarding"]["kind"], "PersistentVolume");
    assert_eq!(ev["regarding"]["name"], PV);
    assert!(ev["note"].as_str().unwrap().contains(msg), "{ev}");
    // Still degraded, further along: no Event (a second one would be the next request,
    // where the next poll's script expects its PV list).
    let further = "degraded: rebuilding replica on node-4, 80 %";
    assert!(
        poll(&mut f, &mut seen, condition(true, further), false)
            .await
            .is_none()
    );
    let ev = poll(&mut f, &mut seen, condition(false, "healthy"), true)
        .await
        .unwrap();
    assert_eq!(ev["reason"], health::HEALTHY);
    assert_eq!(ev["type"], "Normal");
    assert!(
        poll(&mut f, &mut seen, condition(false, "healthy"), false)
            .await
            .is_none()
    );
    assert_eq!(seen.len(), 1, "only our PV is tracked: {seen:?}");
}
