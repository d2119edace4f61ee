//! Leader election scenarios: create the Lease when absent, respect a fresh foreign holder,
//! take over after a release; and the gate drops running controllers the moment leadership ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::leader::{Elector, LeaseConfig};
use crate::testkit::Fixture;

const LEASE_PATH: &str =
    "/apis/coordination.k8s.io/v1/namespaces/cairn-system/leases/csi-cairn-dev-provisioner";

fn cfg() -> LeaseConfig {
    LeaseConfig::new("csi-cairn-dev-provisioner", "cairn-system", "replica-a")
}

fn lease(holder: Option<&str>) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": "csi-cairn-dev-provisioner", "namespace": "cairn-system", "resourceVersion": "5" },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "renewTime": "2026-01-01T00:00:00.000000Z",
            "leaseTransitions": 3
        }
    })
}

#[tokio::test]
async fn absent_lease_is_created_and_held() {
    let mut f = Fixture::new().await;
    let held = f
        .run(
            |mut api| async move {
                api.expect_404("GET", LEASE_PATH).await;
                let c = api
                    .expect(
                        "POST",
                        "/apis/coordination.k8s.io/v1/namespaces/cairn-system/leases",
                        201,
                        Value::Null,
                    )
                    .await;
                assert_eq!(c.body["spec"]["holderIdentity"], "replica-a");
                assert_eq!(c.body["spec"]["leaseDurationSeconds"], 15);
                api
            },
            |ctx| async move {
                Elector::new(ctx.client.clone(), cfg())
                    .try_acquire_or_renew()
                    .await
            },
        )
        .await;
    assert!(held.expect("no error"));
}

#[tokio::test]
async fn fresh_foreign_holder_is_respected_and_released_lease_is_taken() {
    let mut f = Fixture::new().await;
    let (first, second) = f
        .run(
            |mut api| async move {
                api.expect("GET", LEASE_PATH, 200, lease(Some("replica-b")))
                    .await;
                api.expect("GET", LEASE_PATH, 200, lease(None)).await;
                let put = api.expect("PUT", LEASE_PATH, 200, Value::Null).await;
                assert_eq!(
                    put.body["metadata"]["resourceVersion"], "5",
                    "update is guarded by resourceVersion"
                );
                assert_eq!(put.body["spec"]["holderIdentity"], "replica-a");
                assert_eq!(put.body["spec"]["leaseTransitions"], 4);
                api
            },
            |ctx| async move {
                let mut e = Elector::new(ctx.client.clone(), cfg());
                let first = e.try_acquire_or_renew().await.expect("first");
                let second = e.try_acquire_or_renew().await.expect("second");
                (first, second)
            },
        )
        .await;
    assert!(!first, "a fresh lease held by another replica is not ours");
    assert!(second, "a released lease is taken");
}

#[tokio::test]
async fn conflicting_update_is_not_leadership() {
    let mut f = Fixture::new().await;
    let held = f
        .run(
            |mut api| async move {
                api.expect("GET", LEASE_PATH, 200, lease(None)).await;
                api.expect(
                    "PUT",
                    LEASE_PATH,
                    409,
                    crate::testkit::status_body(409, "Conflict"),
                )
                .await;
                api
            },
            |ctx| async move {
                Elector::new(ctx.client.clone(), cfg())
                    .try_acquire_or_renew()
                    .await
            },
        )
        .await;
    assert!(!held.expect("a conflict is an answer, not an error"));
}

/// Polls `cond` until it holds or the deadline passes.
async fn eventually(cond: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn losing_the_lease_stops_controllers_at_once() {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let started = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let metrics = crate::metrics::Metrics::default();
    let (s, d) = (started.clone(), dropped.clone());
    let gate = tokio::spawn(crate::run::gate_with(rx, metrics.clone(), move || {
        let (s, d) = (s.clone(), d.clone());
        async move {
            let _guard = DropFlag(d);
            s.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
    }));
    assert!(
        !started.load(Ordering::SeqCst),
        "nothing runs before leadership"
    );
    tx.send_replace(true);
    assert!(
        eventually(|| started.load(Ordering::SeqCst)).await,
        "controllers start on leadership"
    );
    assert_eq!(metrics.leader.get(), 1);
    tx.send_replace(false);
    assert!(
        eventually(|| dropped.load(Ordering::SeqCst)).await,
        "controllers are dropped on loss"
    );
    assert_eq!(metrics.leader.get(), 0);
    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), gate)
        .await
        .expect("gate ends")
        .expect("no panic");
}
