//! CustomResourceDefinitions through the real kubectl and kube-rs: the snapshot CRDs
//! installed and served, schema defaults and pruning, status and finalizers, bad CRDs.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, WatchEvent, WatchParams};
use serde_json::{Value, json};

const GROUP: &str = "snapshot.storage.k8s.io";

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests/crds")
}

async fn api_only() -> TestCluster {
    TestCluster::start_with(|c| cairn_harness::ClusterConfig {
        api_only: true,
        ..c
    })
    .await
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// `kubectl apply -f -` of `yaml`, which must succeed.
async fn apply(t: &TestCluster, yaml: &str) {
    let out = t.kubectl_stdin(&["apply", "-f", "-"], yaml).await;
    assert!(out.status.success(), "{}", stderr(&out));
}

async fn get_json(t: &TestCluster, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&t.must(&a).await).unwrap()
}

fn snapshots(client: kube::Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(GROUP, "v1", "VolumeSnapshot");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "volumesnapshots");
    Api::namespaced_with(client, "default", &ar)
}

const CLASS: &str = "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata:\n  name: cairn-snapshots\ndriver: csi.cairn.dev\ndeletionPolicy: Delete\nparameters:\n  a: b\n";

fn snapshot(name: &str, finalizer: bool) -> String {
    let fin = if finalizer {
        "  finalizers: [example.com/hold]\n"
    } else {
        ""
    };
    format!(
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata:\n  name: {name}\n{fin}spec:\n  volumeSnapshotClassName: cairn-snapshots\n  source:\n    persistentVolumeClaimName: data\nstatus:\n  readyToUse: true\n"
    )
}

#[tokio::test]
async fn snapshot_crds_install_and_serve_volume_snapshots() {
    let t = api_only().await;
    let dir = crds_dir();
    t.must(&["apply", "-f", dir.to_str().unwrap()]).await;
    t.must(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/volumesnapshots.snapshot.storage.k8s.io",
        "crd/volumesnapshotclasses.snapshot.storage.k8s.io",
        "crd/volumesnapshotcontents.snapshot.storage.k8s.io",
    ])
    .await;
    let crd = get_json(&t, &["crd", "volumesnapshots.snapshot.storage.k8s.io"]).await;
    assert_eq!(crd["status"]["acceptedNames"]["kind"], "VolumeSnapshot");
    assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
    let res = t
        .must(&["api-resources", "--api-group", GROUP, "--no-headers"])
        .await;
    for line in [
        "volumesnapshotclasses   vsclass,vsclasses   snapshot.storage.k8s.io/v1   false        VolumeSnapshotClass",
        "volumesnapshotcontents  vsc,vscs            snapshot.storage.k8s.io/v1   false        VolumeSnapshotContent",
        "volumesnapshots         vs                  snapshot.storage.k8s.io/v1   true         VolumeSnapshot",
    ] {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(
            res.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == words),
            "{words:?} not in:\n{res}"
        );
    }

    // Create: the status subresource means a created object carries no status.
    apply(&t, CLASS).await;
    apply(&t, &snapshot("snap", false)).await;
    let vs = get_json(&t, &["vs", "snap"]).await;
    assert_eq!(vs["apiVersion"], "snapshot.storage.k8s.io/v1");
    assert!(vs.get("status").is_none(), "{vs}");
    assert_eq!(vs["metadata"]["generation"], 1);
    let class = get_json(&t, &["vsclass", "cairn-snapshots"]).await;
    assert_eq!(class["parameters"]["a"], "b");
    assert!(class["metadata"].get("namespace").is_none());
    let listed = t.must(&["get", "volumesnapshots"]).await;
    assert!(listed.lines().any(|l| l.starts_with("snap ")), "{listed}");

    // A watch from the created version sees the changes below, in order.
    let api = snapshots(t.kube().await);
    let rv = vs["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let watch = api
        .watch(&WatchParams::default().timeout(20), &rv)
        .await
        .unwrap();
    let events = tokio::spawn(async move {
        let evs: Vec<WatchEvent<DynamicObject>> = watch.take(3).try_collect().await.unwrap();
        evs
    });

    // The main endpoint ignores status; /status ignores everything else.
    t.must(&[
        "patch",
        "vs",
        "snap",
        "--type=merge",
        "-p",
        r#"{"spec":{"volumeSnapshotClassName":"other"},"status":{"readyToUse":true}}"#,
    ])
    .await;
    let vs = get_json(&t, &["vs", "snap"]).await;
    assert_eq!(vs["spec"]["volumeSnapshotClassName"], "other");
    assert!(vs.get("status").is_none(), "{vs}");
    assert_eq!(vs["metadata"]["generation"], 2);
    t.must(&[
        "patch", "vs", "snap", "--subresource=status", "--type=merge", "-p",
        r#"{"spec":{"volumeSnapshotClassName":"ignored"},"metadata":{"labels":{"a":"b"}},"status":{"readyToUse":true,"restoreSize":"1Gi"}}"#,
    ])
    .await;
    let vs = get_json(&t, &["vs", "snap"]).await;
    assert_eq!(
        vs["status"],
        json!({"readyToUse": true, "restoreSize": "1Gi"})
    );
    assert_eq!(vs["spec"]["volumeSnapshotClassName"], "other");
    assert!(vs["metadata"].get("labels").is_none(), "{vs}");
    assert_eq!(vs["metadata"]["generation"], 2);
    // kubectl get prints the CRD's additionalPrinterColumns.
    let table = t.must(&["get", "vs", "snap"]).await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let want = "NAME READYTOUSE SOURCEPVC SOURCESNAPSHOTCONTENT RESTORESIZE SNAPSHOTCLASS SNAPSHOTCONTENT CREATIONTIME AGE";
    assert_eq!(header, want.split(' ').collect::<Vec<_>>(), "{table}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row[..5],
        ["snap", "true", "data", "1Gi", "other"],
        "{table}"
    );
    // Custom resources have no patch strategies: kubectl's default patch type is refused.
    let out = t
        .kubectl(&[
            "patch",
            "vs",
            "snap",
            "-p",
            r#"{"spec":{"volumeSnapshotClassName":"x"}}"#,
        ])
        .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("application/merge-patch+json"),
        "{}",
        stderr(&out)
    );
    t.must(&["delete", "vs", "snap"]).await;
    let evs = tokio::time::timeout(Duration::from_secs(20), events)
        .await
        .expect("three watch events")
        .unwrap();
    let kinds: Vec<String> = evs
        .iter()
        .map(|e| match e {
            WatchEvent::Modified(o) => format!("MODIFIED {}", o.metadata.generation.unwrap()),
            WatchEvent::Deleted(_) => "DELETED".to_string(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(kinds, vec!["MODIFIED 2", "MODIFIED 2", "DELETED"]);

    // A finalizer holds deletion until it is removed.
    apply(&t, &snapshot("held", true)).await;
    t.must(&["delete", "vs", "held", "--wait=false"]).await;
    let vs = get_json(&t, &["vs", "held"]).await;
    assert!(vs["metadata"]["deletionTimestamp"].is_string(), "{vs}");
    t.must(&[
        "patch",
        "vs",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .await;
    let out = t.kubectl(&["get", "vs", "held"]).await;
    assert!(stderr(&out).contains("NotFound"), "{}", stderr(&out));

    // Deleting the CRD deletes its objects; one with a finalizer holds the CRD, Terminating.
    for n in ["a", "b"] {
        apply(&t, &snapshot(n, n == "b")).await;
    }
    t.must(&[
        "delete",
        "crd",
        "volumesnapshots.snapshot.storage.k8s.io",
        "--wait=false",
    ])
    .await;
    let crd = get_json(&t, &["crd", "volumesnapshots.snapshot.storage.k8s.io"]).await;
    let terminating = crd["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Terminating")
        .cloned()
        .unwrap();
    assert_eq!(terminating["reason"], "InstanceDeletionInProgress");
    let names = t.must(&["get", "vs", "-o", "name"]).await;
    assert_eq!(names.trim(), "volumesnapshot.snapshot.storage.k8s.io/b");
    let out = t
        .kubectl_stdin(&["create", "-f", "-"], &snapshot("c", false))
        .await;
    assert!(!out.status.success(), "no creates while the CRD terminates");
    t.must(&[
        "patch",
        "vs",
        "b",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .await;
    eventually("the CRD is gone", Duration::from_secs(10), || async {
        let out = t
            .kubectl(&["get", "crd", "volumesnapshots.snapshot.storage.k8s.io"])
            .await;
        stderr(&out).contains("NotFound").then_some(())
    })
    .await;
    let client = t.kube().await;
    let list = client
        .list_api_group_resources(&format!("{GROUP}/v1"))
        .await
        .unwrap();
    let plurals: Vec<&str> = list
        .resources
        .iter()
        .map(|r| r.name.as_str())
        .filter(|n| !n.contains('/'))
        .collect();
    assert_eq!(
        plurals,
        vec!["volumesnapshotclasses", "volumesnapshotcontents"]
    );
    let res = t.must(&["api-resources", "--api-group", GROUP]).await;
    assert!(!res.contains("volumesnapshots "), "{res}");

    // With the last CRD of the group gone, so is the group.
    t.must(&["delete", "-f", dir.to_str().unwrap(), "--ignore-not-found"])
        .await;
    let groups = client.list_api_groups().await.unwrap();
    assert!(!groups.groups.iter().any(|g| g.name == GROUP));
    let out = t.kubectl(&["get", "vsclass"]).await;
    assert!(!out.status.success());
    t.shutdown().await;
}

const WIDGETS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.cairn.dev
spec:
  group: test.cairn.dev
  scope: Cluster
  names: {plural: widgets, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer}
              mode: {type: string, enum: [fast, safe], default: fast}
              limits:
                type: object
                default: {}
                properties:
                  iops: {type: integer, default: 100}
              ports:
                type: array
                items:
                  type: object
                  properties:
                    port: {type: integer}
                    protocol: {type: string, default: TCP}
"#;

#[tokio::test]
async fn schema_defaults_pruning_and_validation_of_a_custom_resource() {
    let t = api_only().await;
    apply(&t, WIDGETS).await;
    t.must(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/widgets.test.cairn.dev",
    ])
    .await;
    let crd = get_json(&t, &["crd", "widgets.test.cairn.dev"]).await;
    assert_eq!(crd["spec"]["names"]["singular"], "widget", "CRD defaults");
    assert_eq!(crd["spec"]["names"]["listKind"], "WidgetList");
    let widget = "apiVersion: test.cairn.dev/v1\nkind: Widget\nmetadata:\n  name: w\nspec:\n  size: 3\n  ports:\n  - port: 80\n";
    apply(&t, widget).await;
    let w = get_json(&t, &["widget", "w"]).await;
    assert_eq!(
        w["spec"],
        json!({"size": 3, "mode": "fast", "limits": {"iops": 100},
            "ports": [{"port": 80, "protocol": "TCP"}]})
    );
    // Without printer columns, kubectl get prints NAME and AGE.
    let table = t.must(&["get", "widgets"]).await;
    assert_eq!(
        table
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NAME", "AGE"]
    );
    // A second apply updates through a merge patch; defaults fill what it leaves out.
    let changed = widget.replace("size: 3", "size: 4\n  mode: safe");
    apply(&t, &changed).await;
    let w = get_json(&t, &["widget", "w"]).await;
    assert_eq!(
        (w["spec"]["size"].clone(), w["spec"]["mode"].clone()),
        (json!(4), json!("safe"))
    );
    assert_eq!(w["metadata"]["generation"], 2);
    apply(&t, widget).await;
    let w = get_json(&t, &["widget", "w"]).await;
    assert_eq!(w["spec"]["mode"], "fast", "removed field defaulted again");

    // Unknown fields: named under kubectl's strict validation, pruned without it.
    let bogus = widget.replace("size: 3", "size: 3\n  bogus: 1");
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &bogus).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown field \"spec.bogus\""),
        "{}",
        stderr(&out)
    );
    let out = t
        .kubectl_stdin(&["apply", "--validate=false", "-f", "-"], &bogus)
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let w = get_json(&t, &["widget", "w"]).await;
    assert!(w["spec"].get("bogus").is_none(), "{w}");
    // Schema violations are 422s naming the field, and change nothing.
    let bad = widget.replace("size: 3", "size: three\n  mode: slow");
    let out = t.kubectl_stdin(&["apply", "-f", "-"], &bad).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("spec.size") && err.contains("spec.mode"),
        "{err}"
    );
    assert_eq!(get_json(&t, &["widget", "w"]).await["spec"]["size"], 3);
    let missing = "apiVersion: test.cairn.dev/v1\nkind: Widget\nmetadata:\n  name: m\nspec: {}\n";
    let out = t.kubectl_stdin(&["create", "-f", "-"], missing).await;
    assert!(
        stderr(&out).contains("spec.size: Required value"),
        "{}",
        stderr(&out)
    );
    // JSON patches apply to custom resources too.
    t.must(&[
        "patch",
        "widget",
        "w",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/size","value":5}]"#,
    ])
    .await;
    assert_eq!(get_json(&t, &["widget", "w"]).await["spec"]["size"], 5);
    t.shutdown().await;
}

#[tokio::test]
async fn invalid_crds_are_422s_naming_the_field_and_change_nothing() {
    let t = api_only().await;
    let cases = [
        (
            "name: widgets.test.cairn.dev",
            "name: widget.test.cairn.dev",
            "metadata.name",
        ),
        ("scope: Cluster", "scope: Global", "spec.scope"),
        ("storage: true", "storage: false", "spec.versions"),
        ("group: test.cairn.dev", "group: test", "spec.group"),
        (
            "names: {plural: widgets, kind: Widget}",
            "names: {plural: widgets}",
            "spec.names.kind",
        ),
        (
            "    schema:\n",
            "    noschema:\n",
            "spec.versions[0].schema.openAPIV3Schema",
        ),
    ];
    for (from, to, field) in cases {
        assert!(WIDGETS.contains(from), "{from}");
        let bad = WIDGETS.replace(from, to);
        let out = t
            .kubectl_stdin(&["apply", "--validate=false", "-f", "-"], &bad)
            .await;
        assert!(!out.status.success(), "{to} accepted");
        let err = stderr(&out);
        assert!(
            err.contains("is invalid") && err.contains(field),
            "{to}: {err}"
        );
    }
    let out = t.kubectl(&["get", "crd", "-o", "name"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
    let groups = t.kube().await.list_api_groups().await.unwrap();
    assert!(!groups.groups.iter().any(|g| g.name == "test.cairn.dev"));

    // On update, the group and plural are immutable.
    apply(&t, WIDGETS).await;
    let out = t
        .kubectl(&[
            "patch",
            "crd",
            "widgets.test.cairn.dev",
            "--type=merge",
            "-p",
            r#"{"spec":{"scope":"Namespaced"}}"#,
        ])
        .await;
    assert!(
        stderr(&out).contains("spec.scope: Invalid value"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("field is immutable"),
        "{}",
        stderr(&out)
    );
    let crd = get_json(&t, &["crd", "widgets.test.cairn.dev"]).await;
    assert_eq!(crd["spec"]["scope"], "Cluster");
    t.shutdown().await;
}

#[tokio::test]
async fn custom_objects_go_with_their_namespace_and_their_owners() {
    let t = TestCluster::start(0).await;
    t.must(&["apply", "-f", crds_dir().to_str().unwrap()]).await;
    t.must(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/volumesnapshots.snapshot.storage.k8s.io",
    ])
    .await;
    apply(
        &t,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: gone\n",
    )
    .await;
    let out = t
        .kubectl_stdin(
            &["apply", "-n", "gone", "-f", "-"],
            &snapshot("in-ns", false),
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    // A custom owner of a ConfigMap, and a ConfigMap owner of a custom object.
    apply(&t, &snapshot("owner", false)).await;
    let uid = t
        .must(&["get", "vs", "owner", "-o", "jsonpath={.metadata.uid}"])
        .await;
    let owned_cm = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\n  ownerReferences:\n  - {{apiVersion: snapshot.storage.k8s.io/v1, kind: VolumeSnapshot, name: owner, uid: {uid}}}\n"
    );
    apply(&t, &owned_cm).await;
    apply(
        &t,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: parent\n",
    )
    .await;
    let uid = t
        .must(&["get", "cm", "parent", "-o", "jsonpath={.metadata.uid}"])
        .await;
    let child = snapshot("child", false).replace(
        "  name: child\n",
        &format!("  name: child\n  ownerReferences:\n  - {{apiVersion: v1, kind: ConfigMap, name: parent, uid: {uid}}}\n"),
    );
    apply(&t, &child).await;
    let vs = get_json(&t, &["vs", "child"]).await;
    assert_eq!(vs["metadata"]["ownerReferences"][0]["name"], "parent");

    t.must(&["delete", "namespace", "gone", "--wait=false"])
        .await;
    t.must(&["delete", "vs", "owner"]).await;
    t.must(&["delete", "cm", "parent"]).await;
    for (what, args) in [
        ("the namespace is gone", ["get", "namespace", "gone"]),
        (
            "the ConfigMap owned by a VolumeSnapshot is gone",
            ["get", "cm", "owned"],
        ),
        (
            "the VolumeSnapshot owned by a ConfigMap is gone",
            ["get", "vs", "child"],
        ),
    ] {
        eventually(what, Duration::from_secs(20), || async {
            let out = t.kubectl(&args).await;
            stderr(&out).contains("NotFound").then_some(())
        })
        .await;
    }
    let left = t.must(&["get", "vs", "-A", "-o", "name"]).await;
    assert_eq!(left.trim(), "", "no VolumeSnapshot left");
    t.shutdown().await;
}

#[tokio::test]
async fn crds_and_their_objects_survive_an_api_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = api_only_at(&data).await;
    let out = kubectl(&c.kubeconfig, &["apply", "-f", "-"], Some(WIDGETS)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let widget =
        "apiVersion: test.cairn.dev/v1\nkind: Widget\nmetadata:\n  name: kept\nspec:\n  size: 1\n";
    let out = kubectl(&c.kubeconfig, &["apply", "-f", "-"], Some(widget)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    c.shutdown().await;
    let c = api_only_at(&data).await;
    let out = kubectl(
        &c.kubeconfig,
        &["get", "widget", "kept", "-o", "jsonpath={.spec.mode}"],
        None,
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "fast",
        "{}",
        stderr(&out)
    );
    c.shutdown().await;
}

#[tokio::test]
async fn served_versions_share_their_objects_and_storage_versions_are_recorded() {
    let t = api_only().await;
    apply(&t, WIDGETS).await;
    apply(
        &t,
        "apiVersion: test.cairn.dev/v1\nkind: Widget\nmetadata:\n  name: w\nspec:\n  size: 1\n",
    )
    .await;
    // A v2, made the storage version: v1 objects are read through either version.
    let v2 = WIDGETS.replace("    storage: true\n", "    storage: false\n")
        + &WIDGETS[WIDGETS.find("  - name: v1").unwrap()..].replace("name: v1", "name: v2");
    apply(&t, &v2).await;
    let crd = get_json(&t, &["crd", "widgets.test.cairn.dev"]).await;
    assert_eq!(crd["status"]["storedVersions"], json!(["v1", "v2"]));
    for v in ["v1", "v2"] {
        let res = format!("widgets.{v}.test.cairn.dev");
        let got = t
            .must(&[
                "get",
                &res,
                "w",
                "-o",
                "jsonpath={.apiVersion} {.spec.size}",
            ])
            .await;
        assert_eq!(got, format!("test.cairn.dev/{v} 1"));
    }
    let groups = t.kube().await.list_api_groups().await.unwrap();
    let g = groups
        .groups
        .iter()
        .find(|g| g.name == "test.cairn.dev")
        .unwrap();
    assert_eq!(g.preferred_version.as_ref().unwrap().version, "v2");
    assert_eq!(g.versions.len(), 2);
    t.shutdown().await;
}
