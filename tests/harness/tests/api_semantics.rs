//! API semantics through a real kube-rs client and kubectl: watch resume and
//! 410, optimistic concurrency, finalizers, persistence, and bad input.

mod common;

use std::time::Duration;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use serde_json::json;

fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": "0"}})).unwrap()
}

/// A cluster of the API server alone, in a temporary directory.
async fn api_only() -> TestCluster {
    TestCluster::start_with(|c| cairn_harness::ClusterConfig {
        api_only: true,
        ..c
    })
    .await
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_and_expires_with_410() {
    let t = TestCluster::start_with(|c| cairn_harness::ClusterConfig {
        api_only: true,
        history: 8,
        ..c
    })
    .await;
    let api: Api<ConfigMap> = Api::namespaced(t.kube().await, "default");
    let created = api.create(&PostParams::default(), &cm("w")).await.unwrap();
    let rv0 = created.metadata.resource_version.clone().unwrap();
    for i in 1..=3 {
        api.patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": i.to_string()}})),
        )
        .await
        .unwrap();
    }
    // Resuming from rv0 replays exactly the three later changes, in order.
    let stream = api
        .watch(&WatchParams::default().timeout(5), &rv0)
        .await
        .unwrap();
    let events: Vec<_> = stream.take(3).try_collect().await.unwrap();
    let values: Vec<String> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Modified(o) => o.data.as_ref().unwrap()["k"].clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(values, vec!["1", "2", "3"]);
    // Push rv0 out of the bounded history: the watch now answers 410 Expired.
    for i in 0..10 {
        api.create(&PostParams::default(), &cm(&format!("filler-{i}")))
            .await
            .unwrap();
    }
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), &rv0)
        .await
        .unwrap()
        .boxed();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
    // kube-rs's watcher (list, then watch with bookmarks) sees a new object.
    let w = watcher(
        api.clone(),
        watcher::Config::default().labels("watched=yes"),
    );
    let mut w = w.boxed();
    let mut obj = cm("late");
    obj.metadata.labels = Some([("watched".to_string(), "yes".to_string())].into());
    let api2 = api.clone();
    tokio::spawn(async move { api2.create(&PostParams::default(), &obj).await.unwrap() });
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = w.next().await {
            if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = ev
                && o.metadata.name.as_deref() == Some("late")
            {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(seen);
    t.shutdown().await;
}

#[tokio::test]
async fn stale_resource_version_is_a_conflict() {
    let t = api_only().await;
    let api: Api<ConfigMap> = Api::namespaced(t.kube().await, "default");
    let v1 = api
        .create(&PostParams::default(), &cm("occ"))
        .await
        .unwrap();
    let mut a = v1.clone();
    a.data.as_mut().unwrap().insert("k".into(), "a".into());
    let mut b = v1.clone();
    b.data.as_mut().unwrap().insert("k".into(), "b".into());
    api.replace("occ", &PostParams::default(), &a)
        .await
        .unwrap();
    match api.replace("occ", &PostParams::default(), &b).await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (409, "Conflict")),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(api.get("occ").await.unwrap().data.unwrap()["k"], "a");
    // A duplicate create is AlreadyExists, a missing object NotFound.
    match api.create(&PostParams::default(), &cm("occ")).await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    match api.get("missing").await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (404, "NotFound")),
        other => panic!("expected NotFound, got {other:?}"),
    }
    t.shutdown().await;
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let t = api_only().await;
    let api: Api<ConfigMap> = Api::namespaced(t.kube().await, "default");
    let mut obj = cm("held");
    obj.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &obj).await.unwrap();
    api.delete("held", &DeleteParams::default()).await.unwrap();
    let still = api.get("held").await.unwrap();
    assert!(
        still.metadata.deletion_timestamp.is_some(),
        "deletionTimestamp set while a finalizer remains"
    );
    // No new finalizers may be added while deleting.
    let add = api
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold", "x.io/y"]}})),
        )
        .await;
    assert!(matches!(add, Err(kube::Error::Api(e)) if e.code == 422));
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(matches!(api.get("held").await, Err(kube::Error::Api(e)) if e.code == 404));
    t.shutdown().await;
}

#[tokio::test]
async fn objects_survive_an_api_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = api_only_at(&data).await;
    let rv = {
        let out = kubectl(
            &c.kubeconfig,
            &["apply", "-f", "-"],
            Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kept\ndata:\n  a: b\n"),
        )
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = kubectl(
            &c.kubeconfig,
            &[
                "get",
                "cm",
                "kept",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ],
            None,
        )
        .await;
        String::from_utf8_lossy(&out.stdout).parse::<u64>().unwrap()
    };
    c.shutdown().await;
    let c = api_only_at(&data).await;
    let out = kubectl(
        &c.kubeconfig,
        &["get", "cm", "kept", "-o", "jsonpath={.data.a}"],
        None,
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "b");
    let out = kubectl(
        &c.kubeconfig,
        &[
            "create",
            "-f",
            "-",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: after\n"),
    )
    .await;
    assert!(
        String::from_utf8_lossy(&out.stdout).parse::<u64>().unwrap() > rv,
        "resourceVersion keeps increasing"
    );
    c.shutdown().await;
}

#[tokio::test]
async fn malformed_manifests_get_a_status_naming_the_field() {
    let t = api_only().await;
    let bad_pvc = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: bad\nspec:\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: lots\n";
    let out = t.kubectl_stdin(&["apply", "-f", "-"], bad_pvc).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.resources.requests.storage"), "{err}");
    let unknown = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata: {a: b}\nbogus: 1\n";
    let out = t.kubectl_stdin(&["apply", "-f", "-"], unknown).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bogus"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let no_image =
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n";
    let out = t.kubectl_stdin(&["create", "-f", "-"], no_image).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.containers[0].image"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server keeps serving, and the PVC spec stays immutable after creation.
    let good = bad_pvc.replace("lots", "1Gi");
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &good).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let changed = good.replace("ReadWriteOnce", "ReadWriteMany");
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &changed).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec is immutable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let api: Api<Pod> = Api::namespaced(t.kube().await, "default");
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    t.shutdown().await;
}

/// A JSON patch `replace` of a missing object member sets it, as kube-apiserver's
/// evanphx/json-patch v4 does (csi-snapshotter replaces `/metadata/annotations` on a
/// VolumeSnapshotContent that has none); a missing parent is still a 422.
#[tokio::test]
async fn json_patch_replace_sets_a_missing_member() {
    let t = api_only().await;
    // (`kubectl create configmap` sends a protobuf body, which the harness answers 415.)
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\n";
    let out = t.kubectl_stdin(&["create", "-f", "-"], cm).await;
    assert!(out.status.success(), "{out:?}");
    let replace = |path: &str| {
        format!(r#"[{{"op":"replace","path":"{path}","value":{{"snapshot":"yes"}}}}]"#)
    };
    t.must(&[
        "patch",
        "configmap",
        "plain",
        "--type=json",
        "-p",
        &replace("/metadata/annotations"),
    ])
    .await;
    let got = t
        .must(&[
            "get",
            "configmap",
            "plain",
            "-o",
            "jsonpath={.metadata.annotations.snapshot}",
        ])
        .await;
    assert_eq!(got, "yes");
    let out = t
        .kubectl(&[
            "patch",
            "configmap",
            "plain",
            "--type=json",
            "-p",
            &replace("/nothing/here"),
        ])
        .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is invalid"), "{err}");
    t.shutdown().await;
}
