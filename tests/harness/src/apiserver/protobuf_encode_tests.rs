//! Round trips of the protobuf answer encoder through the request decoder: objects of every
//! served kind as the registry holds them, JSON -> encode -> decode == JSON; the envelope
//! and watch framing byte by byte; seeded random secrets, durations and quantities.

use base64::Engine;
use prost_reflect::DynamicMessage;
use serde_json::{Value, json};

use super::super::protobuf::decode_as;

fn decode(b: &[u8]) -> crate::error::Result<Value> {
    decode_as(b, response_message)
}
use super::*;

/// What the encoder and decoder agree to lose: nulls, empty lists and empty string maps
/// (Go's JSON leaves them out too), and list items' apiVersion/kind (no TypeMeta in a
/// Go protobuf message).
fn normal(v: &Value, in_list: bool) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Array(a) if a.is_empty() => None,
        Value::Array(a) => Some(Value::Array(
            a.iter().filter_map(|i| normal(i, false)).collect(),
        )),
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, v) in o {
                if k == "items"
                    && let Value::Array(items) = v
                {
                    let items: Vec<Value> = items.iter().filter_map(|i| normal(i, true)).collect();
                    if !items.is_empty() {
                        out.insert(k.clone(), Value::Array(items));
                    }
                    continue;
                }
                if in_list && (k == "apiVersion" || k == "kind") {
                    continue;
                }
                if let Some(n) = normal(v, false) {
                    out.insert(k.clone(), n);
                }
            }
            Some(Value::Object(out))
        }
        v => Some(v.clone()),
    }
}

#[track_caller]
fn round_trip(obj: Value) {
    let bytes = encode(&obj).unwrap_or_else(|e| panic!("{}: {e}", obj["kind"]));
    let back = decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", obj["kind"]));
    let want = normal(&obj, false).unwrap();
    let mut diffs = Vec::new();
    differences(&want, &back, String::new(), &mut diffs);
    assert!(
        diffs.is_empty(),
        "{} changed in the round trip:\n{}",
        obj["kind"],
        diffs.join("\n")
    );
}

/// The paths where `a` and `b` differ, with both values.
fn differences(a: &Value, b: &Value, at: String, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                differences(va, vb, format!("{at}.{k}"), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                differences(va, vb, format!("{at}[{i}]"), out);
            }
        }
        (a, b) if a != b => out.push(format!("  {at}: sent {a} got {b}")),
        _ => {}
    }
}

fn meta(name: &str, ns: &str) -> Value {
    let mut m = json!({"name": name, "uid": "0d5c7c9e-0000-4000-8000-000000000001",
        "resourceVersion": "42", "generation": 3,
        "creationTimestamp": "2026-12-07T16:00:00Z",
        "labels": {"app": "cairn", "tier": ""},
        "annotations": {"cairn.io/note": "line one\nline two"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
            "uid": "0d5c7c9e-0000-4000-8000-000000000002", "controller": true,
            "blockOwnerDeletion": true}],
        "finalizers": ["kubernetes.io/pvc-protection"],
        "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
            "time": "2026-12-07T16:00:01Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}}]});
    if !ns.is_empty() {
        m["namespace"] = json!(ns);
    }
    m
}

fn pod_spec() -> Value {
    json!({
        "nodeName": "node-2", "nodeSelector": {"cairn.io/storage": "true"},
        "hostNetwork": true, "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
        "terminationGracePeriodSeconds": 0, "serviceAccountName": "cairn",
        "priority": 0, "enableServiceLinks": true, "schedulerName": "default-scheduler",
        "securityContext": {}, "hostname": "db-0", "subdomain": "db",
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 300}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname",
                "operator": "In", "values": ["node-1", "node-2"]}]}]}}},
        "volumes": [
            {"name": "kubelet", "hostPath": {"path": "/var/lib/kubelet", "type": "Directory"}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
            {"name": "cfg", "configMap": {"name": "cairn", "defaultMode": 420,
                "items": [{"key": "a", "path": "a.conf", "mode": 256}], "optional": false}},
            {"name": "tls", "secret": {"secretName": "cairn-tls", "defaultMode": 384}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0",
                "readOnly": true}},
            {"name": "info", "downwardAPI": {"items": [{"path": "labels",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels"}}]}}],
        "initContainers": [{"name": "init", "image": "cairn:latest",
            "command": ["sh", "-c", "true"], "resources": {}}],
        "containers": [container()]})
}

fn container() -> Value {
    let mut c = json!({
            "name": "storaged", "image": "cairn:latest", "imagePullPolicy": "IfNotPresent",
            "command": ["storaged"], "args": ["--listen", "$(POD_IP):7100"],
            "workingDir": "/var/lib/cairn",
            "env": [{"name": "A", "value": "b"}, {"name": "EMPTY"},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                    "fieldPath": "status.podIP"}}},
                {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k",
                    "optional": true}}}],
            "envFrom": [{"configMapRef": {"name": "cairn"}, "prefix": "C_"}],
            "ports": [{"name": "raft", "containerPort": 7100, "hostPort": 7100,
                "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                "limits": {"cpu": "2", "memory": "1Gi", "ephemeral-storage": "1.5G"}},
            "volumeMounts": [{"name": "kubelet", "mountPath": "/var/lib/kubelet",
                "mountPropagation": "Bidirectional"},
                {"name": "cfg", "mountPath": "/etc/cairn", "readOnly": true,
                    "subPath": "a.conf"}],
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File", "stdin": true, "tty": true});
    let probes = json!({
    "livenessProbe": {"httpGet": {"path": "/healthz", "port": 9808,
        "scheme": "HTTP", "httpHeaders": [{"name": "X", "value": "y"}]},
        "initialDelaySeconds": 5, "timeoutSeconds": 1, "periodSeconds": 10,
        "successThreshold": 1, "failureThreshold": 3},
    "readinessProbe": {"exec": {"command": ["cat", "/tmp/ready"]},
        "periodSeconds": 2},
    "startupProbe": {"grpc": {"port": 9000, "service": ""}},
    "lifecycle": {"preStop": {"tcpSocket": {"port": "raft"}}},
    "securityContext": {"privileged": true, "runAsUser": 0,
        "capabilities": {"add": ["SYS_ADMIN"], "drop": ["ALL"]},
        "allowPrivilegeEscalation": true, "readOnlyRootFilesystem": false},
    });
    for (k, v) in probes.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[test]
fn pods_with_every_field_the_harness_uses() {
    let mut m = meta("db-0", "default");
    m["deletionTimestamp"] = json!("2026-12-07T16:05:00Z");
    m["deletionGracePeriodSeconds"] = json!(30);
    m["generateName"] = json!("db-");
    round_trip(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": m, "spec": pod_spec(),
        "status": {"phase": "Running", "hostIP": "10.0.0.2", "podIP": "10.0.0.2",
            "hostIPs": [{"ip": "10.0.0.2"}], "podIPs": [{"ip": "10.0.0.2"}],
            "startTime": "2026-12-07T16:00:02Z", "qosClass": "Burstable",
            "conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": "2026-12-07T16:00:03Z"}],
            "initContainerStatuses": [{"name": "init", "ready": false, "restartCount": 0,
                "image": "cairn:latest", "imageID": "", "started": false,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                    "startedAt": "2026-12-07T16:00:02Z",
                    "finishedAt": "2026-12-07T16:00:02Z"}}, "lastState": {}}],
            "containerStatuses": [{"name": "storaged", "ready": true, "restartCount": 2,
                "image": "cairn:latest", "imageID": "cairn@sha256:00",
                "containerID": "harness://1234", "started": true,
                "state": {"running": {"startedAt": "2026-12-07T16:00:04Z"}},
                "lastState": {"terminated": {"exitCode": 137, "signal": 9,
                    "reason": "Error", "message": "killed",
                    "startedAt": "2026-12-07T16:00:02Z",
                    "finishedAt": "2026-12-07T16:00:03Z"}}},
                {"name": "waiting", "ready": false, "restartCount": 0, "image": "x",
                    "imageID": "", "state": {"waiting": {"reason": "ErrImagePull",
                    "message": "no image mapping: cairn-harness up --image x=DIR"}},
                    "lastState": {}}]}}),
    );
}

#[test]
fn volumes_claims_and_classes() {
    round_trip(json!({"apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": meta("pvc-1", ""),
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "cairn",
            "volumeMode": "Filesystem", "mountOptions": ["noatime"],
            "csi": {"driver": "cairn.csi.io", "volumeHandle": "vol-1", "fsType": "ext4",
                "readOnly": true, "volumeAttributes": {"replicas": "3"},
                "nodeStageSecretRef": {"name": "s", "namespace": "kube-system"}},
            "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "default",
                "name": "data", "uid": "u", "apiVersion": "v1", "resourceVersion": "7"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "topology.cairn.io/node", "operator": "In", "values": ["n1"]}]}]}}},
        "status": {"phase": "Bound", "lastPhaseTransitionTime": "2026-12-07T16:00:00Z"}}));
    round_trip(json!({"apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "local-1"},
        "spec": {"capacity": {"storage": "1Ti"}, "local": {"path": "/mnt/disks/a"},
            "hostPath": {"path": "/tmp/x", "type": ""}, "accessModes": ["ReadWriteOnce"]},
        "status": {"phase": "Available"}}));
    round_trip(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": meta("data", "default"),
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
            "resources": {"requests": {"storage": "1Gi"}, "limits": {"storage": "2Gi"}},
            "volumeName": "pvc-1", "volumeMode": "Block",
            "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                "name": "snap"},
            "dataSourceRef": {"apiGroup": "snapshot.storage.k8s.io",
                "kind": "VolumeSnapshot", "name": "snap", "namespace": "default"},
            "selector": {"matchLabels": {"a": "b"}, "matchExpressions": [{"key": "c",
                "operator": "Exists"}]}},
        "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "1Gi"}}}));
    round_trip(
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "cairn", "annotations":
            {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "cairn.csi.io", "parameters": {"replicas": "3", "fsType": "xfs"},
        "reclaimPolicy": "Retain", "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": true, "mountOptions": ["discard"],
        "allowedTopologies": [{"matchLabelExpressions": [{"key": "zone",
            "values": ["a"]}]}]}),
    );
}

#[test]
fn csi_objects() {
    round_trip(
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
        "metadata": {"name": "cairn.csi.io"},
        "spec": {"attachRequired": false, "podInfoOnMount": true,
            "volumeLifecycleModes": ["Persistent"], "fsGroupPolicy": "File",
            "storageCapacity": true, "requiresRepublish": false, "seLinuxMount": false}}),
    );
    round_trip(json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode",
        "metadata": {"name": "node-1"},
        "spec": {"drivers": [{"name": "cairn.csi.io", "nodeID": "node-1",
            "topologyKeys": ["topology.cairn.io/node"], "allocatable": {"count": 0}}]}}));
    round_trip(
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": "csi-1"},
        "spec": {"attacher": "cairn.csi.io", "nodeName": "node-1",
            "source": {"persistentVolumeName": "pvc-1"}},
        "status": {"attached": true, "attachmentMetadata": {"dev": "/dev/nbd0"},
            "attachError": {"time": "2026-12-07T16:00:00Z", "message": "x",
                "errorCode": 0}}}),
    );
    round_trip(
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSIStorageCapacity",
        "metadata": meta("cap-1", "kube-system"), "storageClassName": "cairn",
        "capacity": "107374182400", "maximumVolumeSize": "50Gi",
        "nodeTopology": {"matchLabels": {"topology.cairn.io/node": "node-1"}}}),
    );
}

#[test]
fn secrets_keep_all_256_byte_values() {
    let all: Vec<u8> = (0..=255u8).collect();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    round_trip(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta("s", "ns"),
        "type": "kubernetes.io/tls", "immutable": false,
        "data": {"all": b64(&all), "empty": "", "tls.crt": b64(b"-----BEGIN")}}),
    );
    round_trip(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("c", "ns"),
        "data": {"a": "b", "empty": "", "unicode": "é ✓ \u{0}"},
        "binaryData": {"blob": b64(&all)}, "immutable": true}),
    );
}

/// A small seeded generator (xorshift): the same cases on every run.
struct Seeded(u64);
impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_secrets_and_label_maps_survive() {
    let mut r = Seeded(0x9e37_79b9_7f4a_7c15);
    for case in 0..300 {
        let len = (r.next() % 600) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
        let key = format!("k{}", r.next() % 1000);
        let label: String = (0..r.next() % 20)
            .map(|_| char::from(b'a' + (r.next() % 26) as u8))
            .collect();
        round_trip(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("s{case}"), "labels": {"l": label},
                "generation": r.next() >> 2},
            "data": {key: base64::engine::general_purpose::STANDARD.encode(&bytes)}}));
    }
}

#[test]
fn nodes_leases_and_events() {
    round_trip(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": meta("node-1", ""),
        "spec": {"podCIDR": "10.1.0.0/24", "podCIDRs": ["10.1.0.0/24"], "unschedulable": true,
            "providerID": "harness://node-1",
            "taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute",
                "timeAdded": "2026-12-07T16:00:00Z"},
                {"key": "k", "value": "v", "effect": "NoSchedule"}]},
        "status": {"capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "1900m", "memory": "7.5Gi", "pods": "110"},
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "Unknown",
                "lastHeartbeatTime": "2026-12-07T16:00:00Z",
                "lastTransitionTime": "2026-12-07T16:00:40Z",
                "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.2"},
                {"type": "Hostname", "address": "node-1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b",
                "kernelVersion": "6.1", "osImage": "Debian", "containerRuntimeVersion":
                "harness://1", "kubeletVersion": "v1.33.1", "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": "amd64"},
            "volumesAttached": [{"name": "kubernetes.io/csi/cairn^vol-1",
                "devicePath": ""}],
            "volumesInUse": ["kubernetes.io/csi/cairn^vol-1"]}}),
    );
    round_trip(
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": meta("cairn-provisioner", "kube-system"),
        "spec": {"holderIdentity": "node-1_abc", "leaseDurationSeconds": 15,
            "acquireTime": "2026-12-07T16:00:00.123456Z",
            "renewTime": "2026-12-07T16:00:10.000001Z", "leaseTransitions": 0}}),
    );
    round_trip(json!({"apiVersion": "v1", "kind": "Event",
        "metadata": meta("db-0.1", "default"),
        "involvedObject": {"kind": "Pod", "namespace": "default", "name": "db-0",
            "uid": "u", "apiVersion": "v1", "resourceVersion": "5",
            "fieldPath": "spec.containers{storaged}"},
        "reason": "Started", "message": "Started container storaged",
        "source": {"component": "kubelet", "host": "node-1"},
        "firstTimestamp": "2026-12-07T16:00:00Z", "lastTimestamp": "2026-12-07T16:00:05Z",
        "count": 2, "type": "Normal", "eventTime": "2026-12-07T16:00:00.500000Z",
        "reportingComponent": "kubelet", "reportingInstance": "node-1",
        "series": {"count": 2, "lastObservedTime": "2026-12-07T16:00:05.000000Z"},
        "action": "Start", "related": {"kind": "Node", "name": "node-1"}}));
    round_trip(json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": meta("e", "default"), "eventTime": "2026-12-07T16:00:00.000001Z",
        "reportingController": "snapshot-controller", "reportingInstance": "x",
        "action": "Create", "reason": "Created", "note": "n", "type": "Normal",
        "regarding": {"kind": "VolumeSnapshot", "name": "snap"},
        "deprecatedCount": 1, "deprecatedFirstTimestamp": "2026-12-07T16:00:00Z"}));
}

#[test]
fn workloads() {
    let template = json!({"metadata": {"labels": {"app": "db"}}, "spec": pod_spec()});
    let selector = json!({"matchLabels": {"app": "db"}});
    round_trip(json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": meta("db", "default"),
        "spec": {"replicas": 0, "selector": selector, "template": template,
            "serviceName": "db", "podManagementPolicy": "Parallel", "revisionHistoryLimit": 10,
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0,
                "maxUnavailable": "25%"}},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain",
                "whenScaled": "Delete"},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "storageClassName": "cairn",
                "resources": {"requests": {"storage": "1Gi"}}}}]},
        "status": {"replicas": 1, "readyReplicas": 1, "currentReplicas": 1,
            "updatedReplicas": 1, "availableReplicas": 1, "observedGeneration": 3,
            "currentRevision": "db-1", "updateRevision": "db-1", "collisionCount": 0}}));
    round_trip(json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": meta("cairn-node", "kube-system"),
        "spec": {"selector": selector, "template": template,
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {
                "maxUnavailable": 1, "maxSurge": 0}}},
        "status": {"currentNumberScheduled": 3, "numberMisscheduled": 0,
            "desiredNumberScheduled": 3, "numberReady": 3, "updatedNumberScheduled": 3,
            "numberAvailable": 3}}));
    round_trip(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta("ctl", "kube-system"),
        "spec": {"replicas": 1, "selector": selector, "template": template,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%",
                "maxSurge": "25%"}}, "progressDeadlineSeconds": 600, "paused": true},
        "status": {"replicas": 1, "conditions": [{"type": "Available", "status": "True",
            "lastUpdateTime": "2026-12-07T16:00:00Z",
            "lastTransitionTime": "2026-12-07T16:00:00Z", "reason": "MinimumReplicasAvailable",
            "message": "ok"}]}}));
    round_trip(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": meta("ctl-abc", "kube-system"),
        "spec": {"replicas": 1, "selector": selector, "template": template},
        "status": {"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1}}));
    round_trip(
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta("j", "ns"),
        "spec": {"parallelism": 1, "completions": 1, "backoffLimit": 0,
            "activeDeadlineSeconds": 30, "ttlSecondsAfterFinished": 0, "suspend": false,
            "completionMode": "NonIndexed", "manualSelector": false, "selector": selector,
            "template": template, "podReplacementPolicy": "TerminatingOrFailed"},
        "status": {"startTime": "2026-12-07T16:00:00Z",
            "completionTime": "2026-12-07T16:01:00Z", "succeeded": 1, "ready": 0,
            "terminating": 0, "uncountedTerminatedPods": {},
            "conditions": [{"type": "Complete", "status": "True",
                "lastProbeTime": "2026-12-07T16:01:00Z",
                "lastTransitionTime": "2026-12-07T16:01:00Z", "reason": "CompletionsReached",
                "message": "Reached expected number of succeeded pods"}]}}),
    );
}

#[test]
fn services_accounts_namespaces_and_rbac() {
    round_trip(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": meta("db", "default"),
        "spec": {"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"],
            "selector": {"app": "db"}, "publishNotReadyAddresses": true,
            "ports": [{"name": "raft", "port": 7100, "targetPort": "raft", "protocol": "TCP"},
                {"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"}],
            "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster"},
        "status": {"loadBalancer": {}}}),
    );
    round_trip(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": meta("cairn", "kube-system"), "automountServiceAccountToken": false,
        "secrets": [{"name": "t"}], "imagePullSecrets": [{"name": "reg"}]}));
    round_trip(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "pb", "labels": {"kubernetes.io/metadata.name": "pb"}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Terminating", "conditions": [{"type":
            "NamespaceDeletionContentFailure", "status": "False",
            "lastTransitionTime": "2026-12-07T16:00:00Z", "reason": "ContentDeleted",
            "message": "All content successfully deleted"}]}}));
    round_trip(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "cairn"},
        "rules": [{"apiGroups": [""], "resources": ["persistentvolumes"],
            "verbs": ["get", "list", "watch", "create", "delete"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                "resourceNames": ["cairn"], "verbs": ["*"]},
            {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}],
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"a": "true"}}]}}),
    );
    round_trip(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": meta("cairn", "kube-system"),
        "subjects": [{"kind": "ServiceAccount", "name": "cairn", "namespace": "kube-system"},
            {"kind": "User", "name": "admin", "apiGroup": "rbac.authorization.k8s.io"}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
            "name": "cairn"}}),
    );
    round_trip(json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": meta("db", "default"), "spec": {"replicas": 2},
        "status": {"replicas": 3, "selector": "app=db"}}));
}

#[test]
fn lists_and_status() {
    round_trip(json!({"apiVersion": "v1", "kind": "PodList",
        "metadata": {"resourceVersion": "99", "continue": "6162", "remainingItemCount": 0},
        "items": [
            {"apiVersion": "v1", "kind": "Pod", "metadata": meta("a", "ns"), "spec": pod_spec()},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b", "namespace": "ns"},
                "spec": {"containers": [{"name": "c", "image": "i", "resources": {}}]}}]}));
    round_trip(
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList",
        "metadata": {"resourceVersion": "1"}, "items": []}),
    );
    round_trip(json!({"apiVersion": "v1", "kind": "Status", "metadata": {},
        "status": "Failure", "message": "pods \"x\" not found", "reason": "NotFound",
        "details": {"name": "x", "kind": "pods"}, "code": 404}));
    let invalid = crate::error::Error::Invalid {
        kind: "PersistentVolumeClaim".into(),
        group: "".into(),
        name: "data".into(),
        causes: vec![crate::error::Cause::required("spec.resources")],
    };
    round_trip(invalid.to_status());
    round_trip(json!({"apiVersion": "v1", "kind": "Status", "metadata": {},
        "status": "Success", "details": {"name": "x", "group": "apps", "kind": "deployments",
        "uid": "u"}}));
    assert!(encodable("v1", "PodList") && encodable("apps/v1", "StatefulSetList"));
    assert!(!encodable("example.com/v1", "WidgetList"));
    assert!(!encodable(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition"
    ));
    assert!(!encodable("meta.k8s.io/v1", "Table"));
}

#[test]
fn zero_values_go_omits_are_left_out_and_pointers_kept() {
    let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d", "generation": 0, "namespace": ""},
        "spec": {"replicas": 0, "minReadySeconds": 0, "paused": false,
            "template": {"spec": {"containers": [{"name": "c",
                "env": [{"name": "EMPTY", "value": ""}]}]}}}});
    let back = decode(&encode(&obj).unwrap()).unwrap();
    assert_eq!(
        back,
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"replicas": 0, "template": {"spec": {"containers": [{"name": "c",
                "env": [{"name": "EMPTY"}]}]}}}})
    );
}

#[test]
fn the_envelope_is_upstreams() {
    let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let bytes = encode(&obj).unwrap();
    assert_eq!(&bytes[..4], b"k8s\0");
    let unknown = POOL
        .get_message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown")
        .unwrap();
    let env = DynamicMessage::decode(unknown, &bytes[4..]).unwrap();
    let tm = env.get_field_by_number(1).unwrap();
    let tm = tm.as_message().unwrap();
    assert_eq!(tm.get_field_by_number(1).unwrap().as_str(), Some("v1"));
    assert_eq!(
        tm.get_field_by_number(2).unwrap().as_str(),
        Some("ConfigMap")
    );
    // contentEncoding and contentType are on the wire, empty, as Go writes them.
    for n in [3, 4] {
        assert!(env.has_field_by_number(n), "field {n}");
        assert_eq!(env.get_field_by_number(n).unwrap().as_str(), Some(""));
    }
    // raw is the ConfigMap itself: ObjectMeta (field 1) whose name (field 1) is "c".
    let raw = env.get_field_by_number(2).unwrap();
    assert_eq!(raw.as_bytes().unwrap().as_ref(), b"\x0a\x03\x0a\x01c");
}

#[test]
fn watch_frames_are_length_prefixed_raw_watch_events() {
    let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}});
    let frame = watch_frame("ADDED", &obj).unwrap();
    let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4);
    // No magic, no envelope: the WatchEvent message itself.
    assert_ne!(&frame[4..8], b"k8s\0");
    let desc = POOL
        .get_message_by_name(&format!("{META}.WatchEvent"))
        .unwrap();
    let ev = DynamicMessage::decode(desc, &frame[4..]).unwrap();
    assert_eq!(ev.get_field_by_number(1).unwrap().as_str(), Some("ADDED"));
    let raw_ext = ev.get_field_by_number(2).unwrap();
    let raw = raw_ext
        .as_message()
        .unwrap()
        .get_field_by_number(1)
        .unwrap();
    assert_eq!(decode(raw.as_bytes().unwrap()).unwrap(), obj);
}

#[test]
fn go_durations_parse_exactly() {
    let go = super::super::protobuf::go_duration;
    let mut r = Seeded(7);
    let fixed = [
        0,
        1,
        999,
        1_000,
        1_500_000,
        3_600_000_000_000,
        -90_500_000_000,
        i64::MAX,
    ];
    let random = (0..2000).map(|_| {
        let shift = r.next() % 64;
        (r.next() >> shift) as i64
    });
    for ns in fixed.into_iter().chain(random) {
        let s = go(ns);
        assert_eq!(parse_go_duration(&s), Some(ns), "{s}");
    }
    assert_eq!(parse_go_duration("1h"), Some(3_600_000_000_000));
    assert_eq!(parse_go_duration("1.5h2m"), Some(5_520_000_000_000));
    assert_eq!(parse_go_duration("2x"), None);
}
