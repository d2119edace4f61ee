//! Defaulting on create, as upstream's defaulters and admission plugins do it:
//! restart policy, volume modes, reclaim policies, binding modes, phases.

use serde_json::{Value, json};

use crate::resources::ResourceType;

fn set_default(obj: &mut Value, path: &[&str], v: Value) {
    let mut cur = obj;
    for (i, seg) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        if i == path.len() - 1 {
            if cur.get(*seg).is_none_or(Value::is_null) {
                cur[*seg] = v;
            }
            return;
        }
        cur = &mut cur[*seg];
    }
}

/// Adds a finalizer, as the StorageObjectInUseProtection admission plugin does.
fn add_finalizer(obj: &mut Value, f: &str) {
    if !obj["metadata"]["finalizers"].is_array() {
        obj["metadata"]["finalizers"] = json!([]);
    }
    let list = obj["metadata"]["finalizers"].as_array_mut().expect("array");
    if !list.iter().any(|x| x == f) {
        list.push(json!(f));
    }
}

/// Defaults for a pod spec (also applied to StatefulSet templates).
pub fn pod_spec(spec: &mut Value) {
    set_default(spec, &["restartPolicy"], json!("Always"));
    set_default(spec, &["terminationGracePeriodSeconds"], json!(30));
    set_default(spec, &["dnsPolicy"], json!("ClusterFirst"));
    set_default(spec, &["schedulerName"], json!("default-scheduler"));
    set_default(spec, &["securityContext"], json!({}));
    for list in ["containers", "initContainers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            set_default(
                c,
                &["terminationMessagePath"],
                json!("/dev/termination-log"),
            );
            set_default(c, &["terminationMessagePolicy"], json!("File"));
            let latest = c["image"]
                .as_str()
                .is_some_and(|i| !i.contains(':') || i.ends_with(":latest"));
            set_default(
                c,
                &["imagePullPolicy"],
                json!(if latest { "Always" } else { "IfNotPresent" }),
            );
            set_default(c, &["resources"], json!({}));
        }
    }
    for v in spec["volumes"].as_array_mut().into_iter().flatten() {
        if v.get("hostPath").is_some() {
            set_default(v, &["hostPath", "type"], json!(""));
        }
    }
}

/// A Job's defaults (upstream's `SetDefaults_Job`) and, unless `manualSelector`, its
/// generated selector and pod labels (the job strategy's `generateSelector`).
fn job(obj: &mut Value) {
    let spec = &mut obj["spec"];
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        spec["completions"] = json!(1);
    }
    set_default(spec, &["parallelism"], json!(1));
    set_default(spec, &["backoffLimit"], json!(6));
    set_default(spec, &["completionMode"], json!("NonIndexed"));
    set_default(spec, &["suspend"], json!(false));
    set_default(
        spec,
        &["podReplacementPolicy"],
        json!("TerminatingOrFailed"),
    );
    pod_spec(&mut spec["template"]["spec"]);
    if spec["manualSelector"] != true {
        let name = obj["metadata"]["name"].clone();
        let uid = obj["metadata"]["uid"].clone();
        let labels = &mut obj["spec"]["template"]["metadata"]["labels"];
        for (k, v) in [
            ("batch.kubernetes.io/controller-uid", &uid),
            ("batch.kubernetes.io/job-name", &name),
            ("controller-uid", &uid),
            ("job-name", &name),
        ] {
            set_default(labels, &[k], v.clone());
        }
        set_default(
            &mut obj["spec"]["selector"],
            &["matchLabels", "batch.kubernetes.io/controller-uid"],
            uid,
        );
    }
    let template_labels = obj["spec"]["template"]["metadata"]["labels"].clone();
    if obj["metadata"]["labels"]
        .as_object()
        .is_none_or(|m| m.is_empty())
        && template_labels.is_object()
    {
        obj["metadata"]["labels"] = template_labels;
    }
    obj["status"] = json!({});
}

/// Applies create-time defaults for `rt` to `obj`; `default_class` is the
/// cluster's default StorageClass name, if any (DefaultStorageClass admission).
pub fn on_create(rt: &ResourceType, obj: &mut Value, default_class: Option<&str>) {
    match (rt.group, rt.kind) {
        ("", "Pod") => {
            pod_spec(&mut obj["spec"]);
            obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
        }
        ("", "PersistentVolumeClaim") => {
            set_default(obj, &["spec", "volumeMode"], json!("Filesystem"));
            if let Some(c) = default_class {
                set_default(obj, &["spec", "storageClassName"], json!(c));
            }
            obj["status"] = json!({"phase": "Pending"});
            add_finalizer(obj, "kubernetes.io/pvc-protection");
        }
        ("", "PersistentVolume") => {
            add_finalizer(obj, "kubernetes.io/pv-protection");
            set_default(obj, &["spec", "volumeMode"], json!("Filesystem"));
            set_default(
                obj,
                &["spec", "persistentVolumeReclaimPolicy"],
                json!("Retain"),
            );
            obj["status"] = json!({"phase": "Pending"});
        }
        ("", "Namespace") => {
            set_default(obj, &["spec", "finalizers"], json!(["kubernetes"]));
            obj["status"] = json!({"phase": "Active"});
            let name = obj["metadata"]["name"].clone();
            set_default(
                obj,
                &["metadata", "labels", "kubernetes.io/metadata.name"],
                name,
            );
        }
        // Upstream defaults an empty type too (`SetDefaults_Secret`).
        ("", "Secret") if obj["type"].as_str().is_none_or(str::is_empty) => {
            obj["type"] = json!("Opaque")
        }
        ("", "Service") => {
            set_default(obj, &["spec", "type"], json!("ClusterIP"));
            set_default(obj, &["spec", "sessionAffinity"], json!("None"));
            let ty = obj["spec"]["type"].as_str().unwrap_or_default().to_string();
            if ty != "ExternalName" {
                set_default(obj, &["spec", "internalTrafficPolicy"], json!("Cluster"));
            }
            if ty == "NodePort" || ty == "LoadBalancer" {
                set_default(obj, &["spec", "externalTrafficPolicy"], json!("Cluster"));
            }
            for p in obj["spec"]["ports"].as_array_mut().into_iter().flatten() {
                set_default(p, &["protocol"], json!("TCP"));
                let port = p["port"].clone();
                set_default(p, &["targetPort"], port);
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            set_default(obj, &["reclaimPolicy"], json!("Delete"));
            set_default(obj, &["volumeBindingMode"], json!("Immediate"));
        }
        ("storage.k8s.io", "CSIDriver") => {
            set_default(obj, &["spec", "attachRequired"], json!(true));
            set_default(obj, &["spec", "podInfoOnMount"], json!(false));
            set_default(obj, &["spec", "storageCapacity"], json!(false));
            set_default(obj, &["spec", "requiresRepublish"], json!(false));
            set_default(
                obj,
                &["spec", "fsGroupPolicy"],
                json!("ReadWriteOnceWithFSType"),
            );
            set_default(
                obj,
                &["spec", "volumeLifecycleModes"],
                json!(["Persistent"]),
            );
        }
        ("storage.k8s.io", "VolumeAttachment") => {
            obj["status"] = json!({"attached": false});
        }
        ("apps", "DaemonSet") => {
            set_default(
                obj,
                &["spec", "updateStrategy", "type"],
                json!("RollingUpdate"),
            );
            if obj["spec"]["updateStrategy"]["type"] == "RollingUpdate" {
                let ru = &mut obj["spec"]["updateStrategy"]["rollingUpdate"];
                set_default(ru, &["maxUnavailable"], json!(1));
                set_default(ru, &["maxSurge"], json!(0));
            }
            set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
            pod_spec(&mut obj["spec"]["template"]["spec"]);
            obj["status"] = json!({"currentNumberScheduled": 0, "desiredNumberScheduled": 0,
                "numberMisscheduled": 0, "numberReady": 0});
        }
        ("apps", "Deployment") => {
            set_default(obj, &["spec", "replicas"], json!(1));
            set_default(obj, &["spec", "strategy", "type"], json!("RollingUpdate"));
            if obj["spec"]["strategy"]["type"] == "RollingUpdate" {
                let ru = &mut obj["spec"]["strategy"]["rollingUpdate"];
                set_default(ru, &["maxUnavailable"], json!("25%"));
                set_default(ru, &["maxSurge"], json!("25%"));
            }
            set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
            set_default(obj, &["spec", "progressDeadlineSeconds"], json!(600));
            pod_spec(&mut obj["spec"]["template"]["spec"]);
            obj["status"] = json!({});
        }
        ("apps", "ReplicaSet") => {
            set_default(obj, &["spec", "replicas"], json!(1));
            pod_spec(&mut obj["spec"]["template"]["spec"]);
            obj["status"] = json!({"replicas": 0});
        }
        ("batch", "Job") => job(obj),
        ("apps", "StatefulSet") => {
            set_default(obj, &["spec", "replicas"], json!(1));
            set_default(obj, &["spec", "podManagementPolicy"], json!("OrderedReady"));
            set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
            set_default(
                obj,
                &["spec", "updateStrategy"],
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            set_default(
                obj,
                &["spec", "persistentVolumeClaimRetentionPolicy"],
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            pod_spec(&mut obj["spec"]["template"]["spec"]);
            for t in obj["spec"]["volumeClaimTemplates"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                set_default(t, &["spec", "volumeMode"], json!("Filesystem"));
                set_default(t, &["apiVersion"], json!("v1"));
                set_default(t, &["kind"], json!("PersistentVolumeClaim"));
            }
            obj["status"] = json!({"replicas": 0, "availableReplicas": 0});
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    #[test]
    fn service_ports_default_to_tcp_and_their_own_port() {
        let mut svc = json!({"spec": {"ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}]}});
        on_create(&resources::SERVICES, &mut svc, None);
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"port": 80, "protocol": "TCP", "targetPort": 80},
                {"port": 53, "protocol": "UDP", "targetPort": "dns"}])
        );
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["internalTrafficPolicy"], "Cluster");
        assert!(svc["spec"]["externalTrafficPolicy"].is_null());
        let mut ext = json!({"spec": {"type": "ExternalName", "externalName": "example.com"}});
        on_create(&resources::SERVICES, &mut ext, None);
        assert!(ext["spec"]["internalTrafficPolicy"].is_null());
        let mut np = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        on_create(&resources::SERVICES, &mut np, None);
        assert_eq!(np["spec"]["externalTrafficPolicy"], "Cluster");
    }
}
