//! Server-side printing: `meta.k8s.io/v1` Table responses for `kubectl get`,
//! with the columns upstream prints for the storage kinds.

use serde_json::{Value, json};

use crate::resources::ResourceType;

fn age(obj: &Value) -> String {
    since(obj["metadata"]["creationTimestamp"].as_str())
}

/// The time since an RFC 3339 timestamp, as kubectl prints ages.
fn since(ts: Option<&str>) -> String {
    let Some(ts) = ts else {
        return "<unknown>".into();
    };
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(ts) else {
        return "<unknown>".into();
    };
    human((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
}

/// A number of seconds as kubectl prints ages and durations.
fn human(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "<none>".into(),
        Value::String(x) if x.is_empty() => "<none>".into(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

fn modes(v: &Value) -> String {
    let short: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m.as_str()? {
            "ReadWriteOnce" => Some("RWO"),
            "ReadOnlyMany" => Some("ROX"),
            "ReadWriteMany" => Some("RWX"),
            "ReadWriteOncePod" => Some("RWOP"),
            _ => None,
        })
        .collect();
    short.join(",")
}

/// The pod STATUS column: the reason a user would see (ContainerCreating, Terminating...).
pub fn pod_status(pod: &Value) -> String {
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        return "Terminating".into();
    }
    for cs in pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(r) = cs["state"]["waiting"]["reason"].as_str() {
            return r.into();
        }
        if let Some(r) = cs["state"]["terminated"]["reason"].as_str()
            && pod["status"]["phase"] == "Running"
        {
            return r.into();
        }
    }
    pod["status"]["phase"].as_str().unwrap_or("Pending").into()
}

fn columns(rt: &ResourceType) -> Vec<(&'static str, i32)> {
    match rt.kind {
        "Pod" => vec![
            ("Name", 0),
            ("Ready", 0),
            ("Status", 0),
            ("Restarts", 0),
            ("Age", 0),
            ("IP", 1),
            ("Node", 1),
        ],
        "PersistentVolumeClaim" => {
            vec![
                ("Name", 0),
                ("Status", 0),
                ("Volume", 0),
                ("Capacity", 0),
                ("Access Modes", 0),
                ("StorageClass", 0),
                ("Age", 0),
            ]
        }
        "PersistentVolume" => vec![
            ("Name", 0),
            ("Capacity", 0),
            ("Access Modes", 0),
            ("Reclaim Policy", 0),
            ("Status", 0),
            ("Claim", 0),
            ("StorageClass", 0),
            ("Age", 0),
        ],
        "StatefulSet" => vec![("Name", 0), ("Ready", 0), ("Age", 0)],
        "Deployment" => vec![
            ("Name", 0),
            ("Ready", 0),
            ("Up-to-date", 0),
            ("Available", 0),
            ("Age", 0),
        ],
        "ReplicaSet" => vec![
            ("Name", 0),
            ("Desired", 0),
            ("Current", 0),
            ("Ready", 0),
            ("Age", 0),
        ],
        "DaemonSet" => vec![
            ("Name", 0),
            ("Desired", 0),
            ("Current", 0),
            ("Ready", 0),
            ("Up-to-date", 0),
            ("Available", 0),
            ("Node Selector", 0),
            ("Age", 0),
        ],
        "Job" => vec![
            ("Name", 0),
            ("Status", 0),
            ("Completions", 0),
            ("Duration", 0),
            ("Age", 0),
            ("Containers", 1),
            ("Images", 1),
            ("Selector", 1),
        ],
        "Node" => vec![
            ("Name", 0),
            ("Status", 0),
            ("Roles", 0),
            ("Age", 0),
            ("Version", 0),
        ],
        "StorageClass" => vec![
            ("Name", 0),
            ("Provisioner", 0),
            ("ReclaimPolicy", 0),
            ("VolumeBindingMode", 0),
            ("AllowVolumeExpansion", 0),
            ("Age", 0),
        ],
        "VolumeAttachment" => vec![
            ("Name", 0),
            ("Attacher", 0),
            ("PV", 0),
            ("Node", 0),
            ("Attached", 0),
            ("Age", 0),
        ],
        "Event" => vec![
            ("Last Seen", 0),
            ("Type", 0),
            ("Reason", 0),
            ("Object", 0),
            ("Message", 0),
        ],
        "Namespace" => vec![("Name", 0), ("Status", 0), ("Age", 0)],
        "Service" => vec![
            ("Name", 0),
            ("Type", 0),
            ("Cluster-IP", 0),
            ("External-IP", 0),
            ("Port(s)", 0),
            ("Age", 0),
            ("Selector", 1),
        ],
        _ => vec![("Name", 0), ("Age", 0)],
    }
}

fn cells(rt: &ResourceType, o: &Value) -> Vec<Value> {
    let name = json!(o["metadata"]["name"]);
    let (spec, st) = (&o["spec"], &o["status"]);
    match rt.kind {
        "Pod" => {
            let statuses = st["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let total = spec["containers"].as_array().map_or(0, Vec::len);
            let restarts: i64 = statuses
                .iter()
                .filter_map(|c| c["restartCount"].as_i64())
                .sum();
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(o)),
                json!(restarts),
                json!(age(o)),
                json!(s(&st["podIP"])),
                json!(s(&spec["nodeName"])),
            ]
        }
        "PersistentVolumeClaim" => vec![
            name,
            json!(s(&st["phase"])),
            json!(spec["volumeName"].as_str().unwrap_or("")),
            json!(st["capacity"]["storage"].as_str().unwrap_or("")),
            json!(modes(&st["accessModes"])),
            json!(s(&spec["storageClassName"])),
            json!(age(o)),
        ],
        "PersistentVolume" => {
            let claim = match spec["claimRef"]["name"].as_str() {
                Some(n) => format!(
                    "{}/{n}",
                    spec["claimRef"]["namespace"].as_str().unwrap_or_default()
                ),
                None => String::new(),
            };
            vec![
                name,
                json!(s(&spec["capacity"]["storage"])),
                json!(modes(&spec["accessModes"])),
                json!(s(&spec["persistentVolumeReclaimPolicy"])),
                json!(s(&st["phase"])),
                json!(claim),
                json!(spec["storageClassName"].as_str().unwrap_or("")),
                json!(age(o)),
            ]
        }
        "StatefulSet" => {
            let ready = st["readyReplicas"].as_i64().unwrap_or(0);
            vec![
                name,
                json!(format!(
                    "{ready}/{}",
                    spec["replicas"].as_i64().unwrap_or(0)
                )),
                json!(age(o)),
            ]
        }
        "Deployment" => vec![
            name,
            json!(format!(
                "{}/{}",
                n(&st["readyReplicas"]),
                n(&spec["replicas"])
            )),
            json!(n(&st["updatedReplicas"])),
            json!(n(&st["availableReplicas"])),
            json!(age(o)),
        ],
        "ReplicaSet" => vec![
            name,
            json!(n(&spec["replicas"])),
            json!(n(&st["replicas"])),
            json!(n(&st["readyReplicas"])),
            json!(age(o)),
        ],
        "DaemonSet" => {
            let sel: Vec<String> = spec["template"]["spec"]["nodeSelector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            vec![
                name,
                json!(n(&st["desiredNumberScheduled"])),
                json!(n(&st["currentNumberScheduled"])),
                json!(n(&st["numberReady"])),
                json!(n(&st["updatedNumberScheduled"])),
                json!(n(&st["numberAvailable"])),
                json!(if sel.is_empty() {
                    "<none>".into()
                } else {
                    sel.join(",")
                }),
                json!(age(o)),
            ]
        }
        "Node" => {
            let ready = st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            vec![
                name,
                json!(if ready { "Ready" } else { "NotReady" }),
                json!("<none>"),
                json!(age(o)),
                json!(s(&st["nodeInfo"]["kubeletVersion"])),
            ]
        }
        "StorageClass" => vec![
            name,
            json!(s(&o["provisioner"])),
            json!(s(&o["reclaimPolicy"])),
            json!(s(&o["volumeBindingMode"])),
            json!(o["allowVolumeExpansion"].as_bool().unwrap_or(false)),
            json!(age(o)),
        ],
        "VolumeAttachment" => vec![
            name,
            json!(s(&spec["attacher"])),
            json!(s(&spec["source"]["persistentVolumeName"])),
            json!(s(&spec["nodeName"])),
            json!(st["attached"].as_bool().unwrap_or(false)),
            json!(age(o)),
        ],
        "Event" => {
            let io = &o["involvedObject"];
            let obj = format!(
                "{}/{}",
                io["kind"].as_str().unwrap_or_default().to_lowercase(),
                io["name"].as_str().unwrap_or_default()
            );
            vec![
                json!(age(o)),
                json!(s(&o["type"])),
                json!(s(&o["reason"])),
                json!(obj),
                json!(s(&o["message"])),
            ]
        }
        "Namespace" => vec![name, json!(s(&st["phase"])), json!(age(o))],
        "Job" => {
            let mut cells = vec![name];
            cells.extend(job_cells(o));
            cells.insert(4, json!(age(o)));
            cells
        }
        "Service" => {
            let mut cells = vec![name];
            cells.extend(service_cells(spec));
            cells.insert(5, json!(age(o)));
            cells
        }
        _ => vec![name, json!(age(o))],
    }
}

/// A Service's Type, Cluster-IP, External-IP, Port(s) and Selector, as upstream prints them.
fn service_cells(spec: &Value) -> Vec<Value> {
    let or_none = |v: String| {
        if v.is_empty() {
            "<none>".to_string()
        } else {
            v
        }
    };
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    let external = match ty {
        "ExternalName" => s(&spec["externalName"]),
        "LoadBalancer" => "<pending>".into(),
        _ => {
            let ips = spec["externalIPs"].as_array().into_iter().flatten();
            or_none(ips.filter_map(Value::as_str).collect::<Vec<_>>().join(","))
        }
    };
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(np) => format!("{}:{np}/{proto}", n(&p["port"])),
                None => format!("{}/{proto}", n(&p["port"])),
            }
        })
        .collect();
    let mut selector: Vec<String> = spec["selector"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    selector.sort();
    vec![
        json!(ty),
        json!(s(&spec["clusterIP"])),
        json!(external),
        json!(or_none(ports.join(","))),
        json!(or_none(selector.join(","))),
    ]
}

/// A Job's Status, Completions, Duration, Containers, Images and Selector (upstream's printJob).
fn job_cells(o: &Value) -> Vec<Value> {
    let (spec, st) = (&o["spec"], &o["status"]);
    let has = |ty: &str| {
        st["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == ty && c["status"] == "True")
    };
    let status = [
        "Complete",
        "Failed",
        "Suspended",
        "FailureTarget",
        "SuccessCriteriaMet",
    ]
    .into_iter()
    .find(|t| has(t))
    .unwrap_or(if o["metadata"]["deletionTimestamp"].is_null() {
        "Running"
    } else {
        "Terminating"
    });
    let completions = match spec["completions"].as_i64() {
        Some(c) => format!("{}/{c}", n(&st["succeeded"])),
        None if n(&spec["parallelism"]) > 1 => {
            format!("{}/1 of {}", n(&st["succeeded"]), n(&spec["parallelism"]))
        }
        None => format!("{}/1", n(&st["succeeded"])),
    };
    let time = |f: &str| {
        st[f]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let duration = match (time("startTime"), time("completionTime")) {
        (Some(a), Some(b)) => human((b - a).num_seconds()),
        (Some(_), None) => since(st["startTime"].as_str()),
        _ => String::new(),
    };
    let containers = spec["template"]["spec"]["containers"].as_array();
    let join = |f: &str| {
        let v: Vec<&str> = containers
            .into_iter()
            .flatten()
            .filter_map(|c| c[f].as_str())
            .collect();
        v.join(",")
    };
    let mut sel: Vec<String> = spec["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    sel.sort();
    vec![
        json!(status),
        json!(completions),
        json!(duration),
        json!(join("name")),
        json!(join("image")),
        json!(sel.join(",")),
    ]
}

/// An integer field, 0 when absent.
fn n(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// A Table of `items`; each row carries the object's metadata as upstream does.
pub fn table(rt: &ResourceType, items: &[Value], rv: u64) -> Value {
    let defs: Vec<Value> = columns(rt)
        .into_iter()
        .map(|(n, p)| json!({"name": n, "type": "string", "format": if n == "Name" {"name"} else {""}, "description": "", "priority": p}))
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({"cells": cells(rt, o), "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": defs, "rows": rows})
}

/// The value at a simple JSONPath (`.status.readyToUse`); Null when absent or not simple.
fn at_path<'a>(obj: &'a Value, path: &str) -> &'a Value {
    path.trim_start_matches('.')
        .split('.')
        .fold(obj, |v, seg| v.get(seg).unwrap_or(&Value::Null))
}

/// A printer column's cell: strings as text, dates as ages, other types only when the
/// value has the column's type (null otherwise, as apiextensions-apiserver does).
fn cell(ty: &str, v: &Value) -> Value {
    match (ty, v) {
        (_, Value::Null) => Value::Null,
        ("string", Value::String(_)) => v.clone(),
        ("string", other) => json!(other.to_string()),
        ("date", Value::String(ts)) => match chrono::DateTime::parse_from_rfc3339(ts) {
            Ok(_) => json!(since(Some(ts))),
            Err(_) => json!("<invalid>"),
        },
        ("integer", Value::Number(n)) => n.as_f64().map_or(Value::Null, |f| json!(f as i64)),
        ("number", Value::Number(_)) | ("boolean", Value::Bool(_)) => v.clone(),
        _ => Value::Null,
    }
}

/// A Table of custom objects, as apiextensions-apiserver prints them: NAME, then the
/// version's additionalPrinterColumns (AGE when it declares none); dates print as ages.
pub fn custom_table(columns: &[Value], items: &[Value], rv: u64) -> Value {
    let age = [json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})];
    let cols = if columns.is_empty() {
        &age[..]
    } else {
        columns
    };
    let mut defs = vec![json!({"name": "Name", "type": "string", "format": "name",
        "description": "", "priority": 0})];
    defs.extend(cols.iter().map(|c| {
        json!({"name": c["name"], "type": c["type"], "format": c["format"].as_str().unwrap_or_default(),
            "description": c["description"].as_str().unwrap_or_default(),
            "priority": c["priority"].as_i64().unwrap_or(0)})
    }));
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for c in cols {
                let v = at_path(o, c["jsonPath"].as_str().unwrap_or_default());
                cells.push(cell(c["type"].as_str().unwrap_or_default(), v));
            }
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": defs, "rows": rows})
}
