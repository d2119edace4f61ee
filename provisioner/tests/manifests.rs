//! Parses every manifest under `manifests/` into its k8s-openapi type, checks that nothing is
//! lost on the round trip (no misspelt field), and checks the facts the install depends on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn manifests_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

fn manifest_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![manifests_root()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("manifests dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every document of every file, as JSON values.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut docs = Vec::new();
    for f in manifest_files() {
        let text = std::fs::read_to_string(&f).expect("read");
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if !v.is_null() {
                docs.push((f.clone(), v));
            }
        }
    }
    docs
}

/// Drops nulls and empty maps so that a typed round trip compares equal.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalize(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

fn typed<T: DeserializeOwned + Serialize>(file: &Path, v: &Value) -> T {
    let t: T =
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let back = serde_json::to_value(&t).expect("serialize");
    assert_eq!(
        normalize(&back),
        normalize(v),
        "{}: a field was lost (misspelt?)",
        file.display()
    );
    t
}

#[derive(Default)]
struct Objects {
    classes: BTreeMap<String, StorageClass>,
    drivers: Vec<CSIDriver>,
    daemonsets: Vec<DaemonSet>,
    deployments: Vec<Deployment>,
    statefulsets: Vec<StatefulSet>,
    services: Vec<Service>,
    cluster_roles: BTreeMap<String, ClusterRole>,
    roles: BTreeMap<String, Role>,
    snapshot_class_drivers: Vec<String>,
}

fn load() -> Objects {
    let mut o = Objects::default();
    let docs = documents();
    assert!(
        docs.len() >= 15,
        "expected the whole install, got {} documents",
        docs.len()
    );
    for (f, v) in &docs {
        match v["kind"].as_str().unwrap_or_default() {
            "Namespace" => drop(typed::<Namespace>(f, v)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(f, v)),
            "Service" => o.services.push(typed(f, v)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(f, v)),
            "RoleBinding" => drop(typed::<RoleBinding>(f, v)),
            "CSIDriver" => o.drivers.push(typed(f, v)),
            "DaemonSet" => o.daemonsets.push(typed(f, v)),
            "Deployment" => o.deployments.push(typed(f, v)),
            "StatefulSet" => o.statefulsets.push(typed(f, v)),
            "StorageClass" => {
                let c: StorageClass = typed(f, v);
                o.classes
                    .insert(c.metadata.name.clone().unwrap_or_default(), c);
            }
            "ClusterRole" => {
                let r: ClusterRole = typed(f, v);
                o.cluster_roles
                    .insert(r.metadata.name.clone().unwrap_or_default(), r);
            }
            "Role" => {
                let r: Role = typed(f, v);
                o.roles
                    .insert(r.metadata.name.clone().unwrap_or_default(), r);
            }
            "VolumeSnapshotClass" => o
                .snapshot_class_drivers
                .push(v["driver"].as_str().unwrap_or_default().to_string()),
            // Application objects of examples/.
            "VolumeSnapshot" | "PersistentVolumeClaim" => {}
            // The kustomize base (checked by `kustomization_lists_every_manifest`).
            "Kustomization" => {}
            // crds/: the VolumeSnapshot CRDs, a prerequisite installed apart (docs/manifests.md).
            "CustomResourceDefinition" if f.starts_with(manifests_root().join("crds")) => {}
            other => panic!("{}: unexpected kind {other:?}", f.display()),
        }
    }
    o
}

#[test]
fn csidriver_matches_the_design() {
    let o = load();
    assert_eq!(o.drivers.len(), 1);
    let d = &o.drivers[0];
    assert_eq!(d.metadata.name.as_deref(), Some("csi.cairn.dev"));
    assert_eq!(d.spec.attach_required, Some(true));
    assert_eq!(d.spec.pod_info_on_mount, Some(false));
    assert_eq!(d.spec.storage_capacity, Some(true));
    assert_eq!(d.spec.fs_group_policy.as_deref(), Some("File"));
    assert_eq!(
        d.spec.volume_lifecycle_modes.as_deref(),
        Some(&["Persistent".to_string()][..])
    );
}

#[test]
fn the_four_storage_classes() {
    let o = load();
    let names: Vec<_> = o.classes.keys().cloned().collect();
    assert_eq!(
        names,
        [
            "cairn-local",
            "cairn-replicated",
            "cairn-replicated-wffc",
            "local-storage"
        ]
    );
    let r = &o.classes["cairn-replicated"];
    assert_eq!(r.provisioner, "csi.cairn.dev");
    assert_eq!(r.volume_binding_mode.as_deref(), Some("Immediate"));
    assert_eq!(r.allow_volume_expansion, Some(true));
    assert_eq!(
        r.metadata.annotations.as_ref().unwrap()["storageclass.kubernetes.io/is-default-class"],
        "true"
    );
    assert_eq!(
        o.classes["cairn-replicated-wffc"]
            .volume_binding_mode
            .as_deref(),
        Some("WaitForFirstConsumer")
    );
    let l = &o.classes["cairn-local"];
    assert_eq!(
        l.volume_binding_mode.as_deref(),
        Some("WaitForFirstConsumer")
    );
    assert_eq!(l.parameters.as_ref().unwrap()["type"], "local");
    let s = &o.classes["local-storage"];
    assert_eq!(s.provisioner, "kubernetes.io/no-provisioner");
    assert_eq!(
        s.volume_binding_mode.as_deref(),
        Some("WaitForFirstConsumer")
    );
    for c in o
        .classes
        .values()
        .filter(|c| c.provisioner == "csi.cairn.dev")
    {
        // The provisioner accepts exactly these keys; anything else would be refused.
        for k in c.parameters.iter().flatten().map(|(k, _)| k) {
            assert!(
                ["type", "replicas", "csi.storage.k8s.io/fstype"].contains(&k.as_str()),
                "{k}"
            );
        }
    }
}

#[test]
fn node_plugin_registers_the_socket_with_bidirectional_kubelet_mount() {
    let o = load();
    let pod = daemonset_pod(&o, "cairn-csi-node");
    // It attaches through its own node's storaged: only where storaged runs.
    let storaged = daemonset_pod(&o, "cairn-storaged").node_selector.clone();
    assert!(storaged.is_some(), "storaged has a nodeSelector");
    assert_eq!(
        pod.node_selector, storaged,
        "the node plugin's nodeSelector"
    );
    let csi = pod
        .containers
        .iter()
        .find(|c| c.name == "cairn-csi")
        .unwrap();
    assert_eq!(
        csi.security_context.as_ref().unwrap().privileged,
        Some(true)
    );
    let kubelet = csi
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/var/lib/kubelet")
        .unwrap();
    assert_eq!(kubelet.mount_propagation.as_deref(), Some("Bidirectional"));
    let reg = pod
        .containers
        .iter()
        .find(|c| c.name == "node-driver-registrar")
        .unwrap();
    assert!(reg.args.iter().flatten().any(
        |a| a == "--kubelet-registration-path=/var/lib/kubelet/plugins/csi.cairn.dev/csi.sock"
    ));
    let local = o
        .daemonsets
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("cairn-local-provisioner"))
        .expect("local provisioner daemonset");
    let lpod = local.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        lpod.service_account_name.as_deref(),
        Some("cairn-local-provisioner")
    );
    assert!(
        lpod.containers[0]
            .args
            .iter()
            .flatten()
            .any(|a| a.starts_with("--node-name="))
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("cairn-node"));
}

#[test]
fn controller_runs_csi_and_provisioner_on_one_socket_with_leader_election() {
    let o = load();
    let d = o
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("cairn-controller"))
        .unwrap();
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let args = |name: &str| {
        pod.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .args
            .clone()
            .unwrap()
    };
    assert!(args("cairn-csi").contains(&"--mode=controller".to_string()));
    assert!(args("cairn-csi").contains(&"--endpoint=unix:///csi/csi.sock".to_string()));
    let p = args("cairn-provisioner");
    assert!(p.contains(&"--csi-endpoint=unix:///csi/csi.sock".to_string()));
    assert!(p.contains(&"--leader-election".to_string()));
    let snapshotter = args("csi-snapshotter");
    assert!(snapshotter.contains(&"--csi-address=/csi/csi.sock".to_string()));
    assert!(snapshotter.contains(&"--leader-election".to_string()));
    assert_eq!(o.snapshot_class_drivers, vec!["csi.cairn.dev".to_string()]);
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("cairn-controller")
    );
}

/// storaged is a DaemonSet on labelled storage nodes whose identity comes from the node
/// (its name, its own `/var/lib/cairn`), never from a pod ordinal, and which finds its peers
/// through the headless Service: nothing in it is edited per cluster.
#[test]
fn storaged_runs_per_storage_node_with_an_identity_from_the_node() {
    let o = load();
    // No StatefulSet in the install (examples/ may hold application ones).
    assert!(
        o.statefulsets
            .iter()
            .all(|s| s.metadata.namespace.as_deref() != Some("cairn-system")),
        "storaged must not be a StatefulSet: ordinals are not tied to hosts"
    );
    let pod = daemonset_pod(&o, "cairn-storaged");
    let selector = pod.node_selector.as_ref().expect("nodeSelector");
    assert_eq!(
        selector.get("cairn.dev/storage").map(String::as_str),
        Some("true")
    );
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    let c = pod
        .containers
        .iter()
        .find(|c| c.name == "storaged")
        .unwrap();
    let line = command_line(c);
    // Identity from the node: its name from the downward API, its id from its data dir.
    for never in ["--node-id", "--initial-cluster", "POD_NAME", "##*-"] {
        assert!(!line.contains(never), "{never} in {line}");
    }
    assert!(line.contains("--node-name \"$NODE_NAME\""), "{line}");
    let env_field = |name: &str| {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(env_field("NODE_NAME").as_deref(), Some("spec.nodeName"));
    assert_eq!(env_field("HOST_IP").as_deref(), Some("status.hostIP"));
    assert!(line.contains("--advertise \"$HOST_IP:7001\""), "{line}");
    assert!(line.contains("--bootstrap-expect 3"), "{line}");
    // The seeds are the headless Service, which lists pods before they are Ready.
    let svc = o
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("cairn-storaged"))
        .expect("storaged Service");
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    assert!(
        line.contains("--join cairn-storaged.cairn-system.svc:7001"),
        "{line}"
    );
    // The data dir is the node's own.
    let data = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/var/lib/cairn")
        .expect("data mount");
    let vol = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == data.name)
        .unwrap();
    assert_eq!(
        vol.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/var/lib/cairn")
    );
    assert!(line.contains("--data-dir /var/lib/cairn"), "{line}");
    // Resources and probes.
    let res = c.resources.as_ref().expect("resources");
    for key in ["cpu", "memory"] {
        assert!(
            res.requests.as_ref().is_some_and(|r| r.contains_key(key)),
            "request {key}"
        );
        assert!(
            res.limits.as_ref().is_some_and(|r| r.contains_key(key)),
            "limit {key}"
        );
    }
    for (what, probe) in [
        ("startup", &c.startup_probe),
        ("liveness", &c.liveness_probe),
        ("readiness", &c.readiness_probe),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what} probe"));
        assert_eq!(get.path.as_deref(), Some("/healthz"), "{what}");
        assert_eq!(get.port, IntOrString::Int(9810), "{what}");
    }
    assert!(line.contains("--metrics-addr 0.0.0.0:9810"), "{line}");
}

/// The pod spec of DaemonSet `name`.
fn daemonset_pod<'a>(o: &'a Objects, name: &str) -> &'a k8s_openapi::api::core::v1::PodSpec {
    o.daemonsets
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(name))
        .and_then(|d| d.spec.as_ref()?.template.spec.as_ref())
        .unwrap_or_else(|| panic!("DaemonSet {name}"))
}

/// A container's command and args as one line.
fn command_line(c: &k8s_openapi::api::core::v1::Container) -> String {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .cloned()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The word after `flag` in a command line (quotes stripped).
fn flag_value(line: &str, flag: &str) -> Option<String> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == flag)?;
    words.next().map(|w| w.trim_matches('"').to_string())
}

/// Decision 064: every storage node runs a frontend host beside storaged, which storaged asks
/// (`--frontend-host`) on a socket both see at the same path in the node's `/var/lib/cairn`;
/// its FUSE mounts reach the node (Bidirectional) and storaged (HostToContainer); both see
/// host pids; it is never restarted by a rollout (OnDelete) and probed on its socket; its
/// frontends use storaged's node certificate.
#[test]
fn a_frontend_host_runs_beside_storaged_on_every_storage_node() {
    let o = load();
    let storaged = daemonset_pod(&o, "cairn-storaged");
    let host = daemonset_pod(&o, "cairn-frontend-host");
    assert_eq!(host.node_selector, storaged.node_selector, "nodeSelector");
    assert_eq!(host.host_pid, Some(true), "the frontend host's hostPID");
    assert_eq!(storaged.host_pid, Some(true), "storaged's hostPID");
    let ds = o
        .daemonsets
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some("cairn-frontend-host"))
        .unwrap();
    let strategy = ds.spec.as_ref().unwrap().update_strategy.as_ref();
    assert_eq!(
        strategy.and_then(|s| s.type_.as_deref()),
        Some("OnDelete"),
        "a restart of the host ends its node's frontends: never rolled by an apply"
    );
    let sc = storaged
        .containers
        .iter()
        .find(|c| c.name == "storaged")
        .unwrap();
    let hc = host
        .containers
        .iter()
        .find(|c| c.name == "frontend-host")
        .expect("container frontend-host");
    let (sline, hline) = (command_line(sc), command_line(hc));
    assert!(hline.contains("exec storaged frontend-host "), "{hline}");
    let socket = flag_value(&hline, "--socket").expect("the host's --socket");
    assert_eq!(
        flag_value(&sline, "--frontend-host").as_deref(),
        Some(socket.as_str()),
        "storaged asks the host on its socket: {sline}"
    );
    // storaged's run dir is DATA_DIR/run: the host's must be the same path.
    assert!(!sline.contains("--run-dir"), "{sline}");
    let data = flag_value(&sline, "--data-dir").expect("storaged's --data-dir");
    assert_eq!(
        flag_value(&hline, "--run-dir"),
        Some(format!("{data}/run")),
        "{hline}"
    );
    assert!(socket.starts_with(&format!("{data}/run/")), "{socket}");
    // The data dir: the node's, at the same path in both, with the propagation each needs.
    let data_mount = |pod: &k8s_openapi::api::core::v1::PodSpec,
                      c: &k8s_openapi::api::core::v1::Container| {
        let m = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == data)
            .unwrap_or_else(|| panic!("{}: {data} mounted", c.name));
        let v = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .unwrap();
        assert_eq!(
            v.host_path.as_ref().map(|h| h.path.as_str()),
            Some(data.as_str()),
            "{}",
            c.name
        );
        m.mount_propagation.clone()
    };
    assert_eq!(
        data_mount(host, hc).as_deref(),
        Some("Bidirectional"),
        "the frontends' FUSE mounts reach the node"
    );
    assert_eq!(
        data_mount(storaged, sc).as_deref(),
        Some("HostToContainer"),
        "storaged sees the frontends' FUSE mounts"
    );
    for c in [sc, hc] {
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == "/dev"),
            "{}: /dev (FUSE, loop devices)",
            c.name
        );
    }
    // Probed on its socket (a liveness failure ends every frontend: not before a minute).
    let check = ["storaged", "frontend-host", "--check", "--socket", &socket];
    for (what, probe) in [
        ("liveness", &hc.liveness_probe),
        ("readiness", &hc.readiness_probe),
    ] {
        let p = probe.as_ref().unwrap_or_else(|| panic!("{what} probe"));
        let cmd = p.exec.as_ref().and_then(|e| e.command.clone());
        assert_eq!(cmd.as_deref(), Some(&check.map(String::from)[..]), "{what}");
    }
    let live = hc.liveness_probe.as_ref().unwrap();
    let tolerated = live.period_seconds.unwrap_or(10) * live.failure_threshold.unwrap_or(3);
    assert!(tolerated >= 60, "liveness gives up after {tolerated}s");
    // The frontends call the volume's members with this node's storaged certificate.
    let secret = |pod: &k8s_openapi::api::core::v1::PodSpec| {
        pod.volumes
            .iter()
            .flatten()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(secret(host), secret(storaged));
    assert_eq!(host.host_network, storaged.host_network, "hostNetwork");
}

fn grants(
    rules: &[k8s_openapi::api::rbac::v1::PolicyRule],
    group: &str,
    resource: &str,
    verb: &str,
) -> bool {
    rules.iter().any(|r| {
        r.api_groups.iter().flatten().any(|g| g == group)
            && r.resources.iter().flatten().any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb)
    })
}

#[test]
fn rbac_grants_exactly_what_the_controllers_call() {
    let o = load();
    let cr = o.cluster_roles["cairn-controller"].rules.clone().unwrap();
    for (g, r, v) in [
        ("", "persistentvolumeclaims", "list"),
        ("", "persistentvolumeclaims", "watch"),
        ("", "persistentvolumeclaims", "patch"),
        ("", "persistentvolumeclaims", "get"),
        ("snapshot.storage.k8s.io", "volumesnapshots", "get"),
        ("snapshot.storage.k8s.io", "volumesnapshotcontents", "get"),
        (
            "snapshot.storage.k8s.io",
            "volumesnapshotcontents",
            "update",
        ),
        (
            "snapshot.storage.k8s.io",
            "volumesnapshotcontents/status",
            "patch",
        ),
        ("snapshot.storage.k8s.io", "volumesnapshotclasses", "list"),
        ("", "persistentvolumeclaims/status", "patch"),
        ("", "persistentvolumes", "create"),
        ("", "persistentvolumes", "delete"),
        ("", "persistentvolumes", "patch"),
        ("", "persistentvolumes", "get"),
        ("storage.k8s.io", "storageclasses", "get"),
        ("storage.k8s.io", "storageclasses", "list"),
        ("", "nodes", "get"),
        ("", "nodes", "list"),
        ("storage.k8s.io", "csinodes", "get"),
        ("storage.k8s.io", "volumeattachments", "watch"),
        ("storage.k8s.io", "volumeattachments/status", "patch"),
        ("events.k8s.io", "events", "create"),
    ] {
        assert!(grants(&cr, g, r, v), "cairn-controller lacks {v} {g}/{r}");
    }
    let role = o.roles["cairn-controller"].rules.clone().unwrap();
    assert!(grants(&role, "coordination.k8s.io", "leases", "update"));
    assert!(grants(
        &role,
        "storage.k8s.io",
        "csistoragecapacities",
        "create"
    ));
    let all_rules = o
        .cluster_roles
        .values()
        .flat_map(|r| r.rules.clone().unwrap_or_default())
        .chain(
            o.roles
                .values()
                .flat_map(|r| r.rules.clone().unwrap_or_default()),
        );
    {
        for r in all_rules {
            assert!(!r.verbs.iter().any(|v| v == "*"), "no wildcard verbs");
            assert!(
                !r.resources.iter().flatten().any(|x| x == "*"),
                "no wildcard resources"
            );
        }
    }
    let local = o.cluster_roles["cairn-local-provisioner"]
        .rules
        .clone()
        .unwrap();
    assert!(grants(&local, "", "persistentvolumes", "create"));
    assert!(
        !grants(&local, "", "persistentvolumes", "patch"),
        "the local provisioner never patches PVs"
    );
    // The node plugin's token cannot touch PVs: it has no role and no token at all.
    assert!(
        !o.cluster_roles.contains_key("cairn-node") && !o.roles.contains_key("cairn-node"),
        "the CSI node plugin needs no API access"
    );
}

/// Every container that calls storaged (and storaged itself) runs with mutual TLS from a
/// mounted Secret, never `--insecure`.
#[test]
fn every_storaged_client_uses_tls_from_a_secret() {
    let o = load();
    let pods: Vec<&k8s_openapi::api::core::v1::PodSpec> = o
        .statefulsets
        .iter()
        .filter_map(|s| s.spec.as_ref()?.template.spec.as_ref())
        .chain(
            o.daemonsets
                .iter()
                .filter_map(|d| d.spec.as_ref()?.template.spec.as_ref()),
        )
        .chain(
            o.deployments
                .iter()
                .filter_map(|d| d.spec.as_ref()?.template.spec.as_ref()),
        )
        .collect();
    let mut checked = Vec::new();
    for pod in pods {
        for c in &pod.containers {
            if !["storaged", "cairn-csi", "frontend-host"].contains(&c.name.as_str()) {
                continue;
            }
            let line = command_line(c);
            assert!(!line.contains("--insecure"), "{}: {line}", c.name);
            assert!(line.contains("--tls-dir"), "{}: {line}", c.name);
            // The certificate comes from a Secret volume mounted into this container.
            let secret_mounts: Vec<&String> = c
                .volume_mounts
                .iter()
                .flatten()
                .filter(|m| {
                    pod.volumes.iter().flatten().any(|v| {
                        v.name == m.name
                            && v.secret
                                .as_ref()
                                .and_then(|s| s.secret_name.as_deref())
                                .is_some()
                    })
                })
                .map(|m| &m.mount_path)
                .collect();
            assert!(
                secret_mounts.iter().any(|p| line.contains(p.as_str())),
                "{}: no Secret mounted where its certificates are read ({line})",
                c.name
            );
            checked.push(c.name.clone());
        }
    }
    checked.sort();
    assert_eq!(
        checked,
        ["cairn-csi", "cairn-csi", "frontend-host", "storaged"]
    );
}

#[test]
fn kustomization_lists_every_manifest() {
    let root = manifests_root();
    let k: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("kustomization.yaml")).expect("kustomization.yaml"),
    )
    .expect("kustomization.yaml parses");
    assert_eq!(k["kind"], "Kustomization");
    let listed: Vec<String> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a path").to_string())
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(&root)
        .expect("manifests dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    files.sort();
    assert_eq!(
        listed, files,
        "the base lists every install manifest, in apply order"
    );
}

/// Issue 20's rule for every container of the install: requests and limits, a liveness probe
/// (Cairn's own containers a readiness probe too), and the least privilege its job allows:
/// only storaged, the node plugin and the frontend host (mounts, FUSE, loop devices) are
/// privileged; every other container cannot gain privileges and holds no capability; the
/// controller runs as non-root.
#[test]
fn every_container_has_resources_probes_and_least_privilege() {
    use k8s_openapi::api::core::v1::PodSpec;
    let o = load();
    let mut pods: Vec<(String, &PodSpec)> = Vec::new();
    for d in &o.daemonsets {
        let name = d.metadata.name.clone().unwrap_or_default();
        pods.push((
            name,
            d.spec.as_ref().unwrap().template.spec.as_ref().unwrap(),
        ));
    }
    for d in &o.deployments {
        let name = d.metadata.name.clone().unwrap_or_default();
        pods.push((
            name,
            d.spec.as_ref().unwrap().template.spec.as_ref().unwrap(),
        ));
    }
    let privileged_ok = [
        ("cairn-storaged", "storaged"),
        ("cairn-csi-node", "cairn-csi"),
        ("cairn-frontend-host", "frontend-host"),
    ];
    let mut checked = 0;
    for (pod, spec) in &pods {
        for c in &spec.containers {
            let at = format!("{pod}/{}", c.name);
            let res = c
                .resources
                .as_ref()
                .unwrap_or_else(|| panic!("{at}: resources"));
            for key in ["cpu", "memory"] {
                for (what, map) in [("request", &res.requests), ("limit", &res.limits)] {
                    assert!(
                        map.as_ref().is_some_and(|m| m.contains_key(key)),
                        "{at}: {what} {key}"
                    );
                }
            }
            assert!(c.liveness_probe.is_some(), "{at}: livenessProbe");
            let ours = c.image.as_deref().unwrap_or_default().starts_with("cairn:");
            if ours {
                assert!(c.readiness_probe.is_some(), "{at}: readinessProbe");
            }
            let sc = c.security_context.clone().unwrap_or_default();
            if privileged_ok.contains(&(pod.as_str(), c.name.as_str())) {
                assert_eq!(sc.privileged, Some(true), "{at}");
            } else {
                assert_ne!(sc.privileged, Some(true), "{at}: privileged without need");
                assert_eq!(sc.allow_privilege_escalation, Some(false), "{at}");
                assert_eq!(sc.read_only_root_filesystem, Some(true), "{at}");
                let drop = sc.capabilities.and_then(|c| c.drop).unwrap_or_default();
                assert_eq!(drop, vec!["ALL".to_string()], "{at}: capabilities");
            }
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} containers found");
    let sa = |n: &str| {
        pods.iter()
            .find(|(p, _)| p == n)
            .and_then(|(_, s)| s.service_account_name.clone())
    };
    let mut accounts: Vec<_> = [
        "cairn-storaged",
        "cairn-csi-node",
        "cairn-local-provisioner",
        "cairn-controller",
        "cairn-frontend-host",
    ]
    .iter()
    .map(|n| sa(n).unwrap_or_else(|| panic!("{n}: serviceAccountName")))
    .collect();
    accounts.dedup();
    assert_eq!(
        accounts.len(),
        5,
        "one service account per role: {accounts:?}"
    );
    let ctrl = pods
        .iter()
        .find(|(n, _)| n == "cairn-controller")
        .unwrap()
        .1;
    let psc = ctrl
        .security_context
        .as_ref()
        .expect("controller pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true));
    assert!(psc.run_as_user.is_some_and(|u| u != 0));
    assert!(
        psc.fs_group.is_some(),
        "fsGroup: the TLS Secret must stay readable"
    );
}
