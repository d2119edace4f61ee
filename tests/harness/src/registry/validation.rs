//! What the API server rejects as Invalid for the kinds it serves: names,
//! quantities, required fields, and immutable fields on update.

use serde_json::Value;

use super::quantity::{self, QUANTITY_ERROR};
use crate::error::Cause;
use crate::resources::ResourceType;

pub(super) fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

pub(super) fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns_subdomain(s)
}

fn check_quantities(map: &Value, path: &str, causes: &mut Vec<Cause>) {
    for (k, v) in map.as_object().into_iter().flatten() {
        let field = format!("{path}.{k}");
        match v.as_str().and_then(quantity::parse) {
            Some(q) if q.0 < 0.0 => {
                causes.push(Cause::invalid(field, "must be greater than or equal to 0"))
            }
            Some(_) => {}
            None => causes.push(Cause::invalid(
                field,
                format!("Invalid value: {v}: {QUANTITY_ERROR}"),
            )),
        }
    }
}

fn check_access_modes(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let modes = spec["accessModes"].as_array().cloned().unwrap_or_default();
    if modes.is_empty() {
        causes.push(Cause::required(format!("{path}.accessModes")));
    }
    for m in modes {
        let ok = matches!(
            m.as_str(),
            Some("ReadWriteOnce" | "ReadOnlyMany" | "ReadWriteMany" | "ReadWriteOncePod")
        );
        if !ok {
            causes.push(Cause::invalid(
                format!("{path}.accessModes"),
                format!("Unsupported value: {m}"),
            ));
        }
    }
}

fn pvc_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    check_access_modes(spec, path, causes);
    let requests = &spec["resources"]["requests"];
    if requests.get("storage").is_none() {
        causes.push(Cause::required(format!(
            "{path}.resources.requests.storage"
        )));
    }
    check_quantities(requests, &format!("{path}.resources.requests"), causes);
    check_quantities(
        &spec["resources"]["limits"],
        &format!("{path}.resources.limits"),
        causes,
    );
    if let Some(m) = spec["volumeMode"].as_str()
        && m != "Filesystem"
        && m != "Block"
    {
        causes.push(Cause::invalid(
            format!("{path}.volumeMode"),
            format!("Unsupported value: \"{m}\""),
        ));
    }
}

/// `extra_volumes`: names that volumeMounts may reference besides `spec.volumes`
/// (a StatefulSet's volumeClaimTemplates).
fn pod_spec(spec: &Value, path: &str, extra_volumes: &[&str], causes: &mut Vec<Cause>) {
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        causes.push(Cause::required(format!("{path}.containers")));
    }
    let mut volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    volumes.extend_from_slice(extra_volumes);
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        if v["name"].as_str().is_none_or(|n| !is_dns_label(n)) {
            causes.push(Cause::invalid(
                format!("{path}.volumes[{i}].name"),
                "a lowercase RFC 1123 label must be given",
            ));
        }
    }
    for list in ["initContainers", "containers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            let cp = format!("{path}.{list}[{i}]");
            if c["name"].as_str().is_none_or(|n| !is_dns_label(n)) {
                causes.push(Cause::required(format!("{cp}.name")));
            }
            if c["image"].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::required(format!("{cp}.image")));
            }
            check_quantities(
                &c["resources"]["requests"],
                &format!("{cp}.resources.requests"),
                causes,
            );
            check_quantities(
                &c["resources"]["limits"],
                &format!("{cp}.resources.limits"),
                causes,
            );
            for (j, m) in c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let mp = format!("{cp}.volumeMounts[{j}]");
                if !m["name"].as_str().is_some_and(|n| volumes.contains(&n)) {
                    causes.push(Cause {
                        field: format!("{mp}.name"),
                        reason: "FieldValueNotFound".into(),
                        message: format!("Not found: {}", m["name"]),
                    });
                }
                if m["mountPath"].as_str().is_none_or(str::is_empty) {
                    causes.push(Cause::required(format!("{mp}.mountPath")));
                }
            }
        }
    }
}

/// A workload's replicas, selector and pod template (`extra_volumes` as for `pod_spec`).
fn workload(spec: &Value, extra_volumes: &[&str], causes: &mut Vec<Cause>) {
    if spec["replicas"].as_i64().is_some_and(|r| r < 0) {
        causes.push(Cause::invalid(
            "spec.replicas",
            "must be greater than or equal to 0",
        ));
    }
    let sel = super::selectors::LabelSelector::from_object(&spec["selector"]);
    if sel.is_empty() {
        causes.push(Cause::required("spec.selector"));
    } else if !sel.matches(&spec["template"]) {
        causes.push(Cause::invalid(
            "spec.template.metadata.labels",
            "`selector` does not match template `labels`",
        ));
    }
    pod_spec(
        &spec["template"]["spec"],
        "spec.template.spec",
        extra_volumes,
        causes,
    );
}

fn not_supported(field: &str, value: &Value, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
    Cause {
        field: field.into(),
        reason: "FieldValueNotSupported".into(),
        message: format!(
            "Unsupported value: {value}: supported values: {}",
            list.join(", ")
        ),
    }
}

/// A Job's spec (upstream's `ValidateJobSpec`, less what the harness does not run).
fn job(spec: &Value, causes: &mut Vec<Cause>) {
    workload(spec, &[], causes);
    let policy = &spec["template"]["spec"]["restartPolicy"];
    if policy != "OnFailure" && policy != "Never" {
        causes.push(not_supported(
            "spec.template.spec.restartPolicy",
            policy,
            &["OnFailure", "Never"],
        ));
    }
    for f in [
        "parallelism",
        "completions",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        if spec[f].as_i64().is_some_and(|n| n < 0) {
            causes.push(Cause::invalid(
                format!("spec.{f}"),
                "must be greater than or equal to 0",
            ));
        }
    }
    if spec["activeDeadlineSeconds"]
        .as_i64()
        .is_some_and(|n| n <= 0)
    {
        causes.push(Cause::invalid(
            "spec.activeDeadlineSeconds",
            "must be greater than 0",
        ));
    }
    // Indexed mode, pod failure and success policies are not run by the harness (decision 063).
    if spec["completionMode"] != "NonIndexed" {
        causes.push(not_supported(
            "spec.completionMode",
            &spec["completionMode"],
            &["NonIndexed"],
        ));
    }
    for f in ["podFailurePolicy", "successPolicy", "backoffLimitPerIndex"] {
        if !spec[f].is_null() {
            causes.push(Cause::forbidden(
                format!("spec.{f}"),
                "not supported by the cairn harness",
            ));
        }
    }
}

/// Checks that apply on create and update alike.
pub fn validate(rt: &ResourceType, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let name_ok = match rt.kind {
        "Namespace" | "Service" => is_dns_label(name),
        _ => is_dns_subdomain(name),
    };
    if !name_ok {
        causes.push(Cause::invalid(
            "metadata.name",
            format!("Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"),
        ));
    }
    let spec = &obj["spec"];
    match (rt.group, rt.kind) {
        ("", "PersistentVolumeClaim") => pvc_spec(spec, "spec", &mut causes),
        ("", "PersistentVolume") => {
            check_access_modes(spec, "spec", &mut causes);
            if spec["capacity"].get("storage").is_none() {
                causes.push(Cause::required("spec.capacity.storage"));
            }
            check_quantities(&spec["capacity"], "spec.capacity", &mut causes);
            const SOURCES: [&str; 6] = ["hostPath", "local", "csi", "nfs", "iscsi", "fc"];
            let n = SOURCES.iter().filter(|s| spec.get(**s).is_some()).count();
            if n != 1 {
                causes.push(
                    Cause::required("spec").with_message("must specify exactly one volume type"),
                );
            }
            if spec.get("local").is_some() && spec["nodeAffinity"].is_null() {
                causes.push(
                    Cause::required("spec.nodeAffinity")
                        .with_message("Local volume requires node affinity"),
                );
            }
            if spec.get("local").is_some()
                && spec["local"]["path"].as_str().is_none_or(str::is_empty)
            {
                causes.push(Cause::required("spec.local.path"));
            }
        }
        ("", "Pod") => pod_spec(spec, "spec", &[], &mut causes),
        ("apps", "DaemonSet" | "Deployment" | "ReplicaSet") => workload(spec, &[], &mut causes),
        ("batch", "Job") => job(spec, &mut causes),
        ("apps", "StatefulSet") => {
            let templates: Vec<&str> = spec["volumeClaimTemplates"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["metadata"]["name"].as_str())
                .collect();
            workload(spec, &templates, &mut causes);
            for (i, t) in spec["volumeClaimTemplates"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                pvc_spec(
                    &t["spec"],
                    &format!("spec.volumeClaimTemplates[{i}].spec"),
                    &mut causes,
                );
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            if obj["provisioner"].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::required("provisioner"));
            }
            if let Some(m) = obj["volumeBindingMode"].as_str()
                && m != "Immediate"
                && m != "WaitForFirstConsumer"
            {
                causes.push(Cause::invalid(
                    "volumeBindingMode",
                    format!("Unsupported value: \"{m}\""),
                ));
            }
        }
        ("storage.k8s.io", "VolumeAttachment") => {
            if spec["attacher"].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::required("spec.attacher"));
            }
            if spec["nodeName"].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::required("spec.nodeName"));
            }
        }
        _ => {}
    }
    causes
}

/// Context an update check needs from the rest of the store.
pub struct UpdateContext {
    /// Whether the claim's StorageClass has `allowVolumeExpansion: true`.
    pub class_allows_expansion: bool,
}

fn without(v: &Value, fields: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for f in fields {
            o.remove(*f);
        }
    }
    v
}

/// `v` without null members (an absent field and a null one are the same field).
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, x)| (k.clone(), without_nulls(x)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Immutability rules for updates of the main resource.
pub fn validate_update(
    rt: &ResourceType,
    old: &Value,
    new: &Value,
    ctx: &UpdateContext,
) -> Vec<Cause> {
    let mut causes = Vec::new();
    let (os, ns) = (&old["spec"], &new["spec"]);
    match (rt.group, rt.kind) {
        ("", "PersistentVolumeClaim") => {
            let mut o = without(os, &["resources", "volumeAttributesClassName"]);
            let n = without(ns, &["resources", "volumeAttributesClassName"]);
            // The binder may set volumeName once on an unbound claim.
            if os["volumeName"].as_str().is_none_or(str::is_empty) {
                o["volumeName"] = n["volumeName"].clone();
                if o["volumeName"].is_null() {
                    o.as_object_mut().map(|m| m.remove("volumeName"));
                }
            }
            if o != n {
                causes.push(Cause::forbidden(
                    "spec",
                    "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
                ));
            }
            let size = |v: &Value| {
                v["resources"]["requests"]["storage"]
                    .as_str()
                    .and_then(quantity::parse)
            };
            if let (Some(a), Some(b)) = (size(os), size(ns))
                && a != b
            {
                let bound = old["status"]["phase"] == "Bound";
                if b < a {
                    causes.push(Cause::forbidden(
                        "spec.resources.requests.storage",
                        "field can not be less than previous value",
                    ));
                } else if !bound || !ctx.class_allows_expansion {
                    causes.push(Cause::forbidden(
                        "spec.resources.requests.storage",
                        "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize",
                    ));
                }
            }
        }
        ("", "PersistentVolume") => {
            if os["persistentVolumeSource"] != ns["persistentVolumeSource"]
                || os["local"] != ns["local"]
                || os["csi"]["volumeHandle"] != ns["csi"]["volumeHandle"]
            {
                causes.push(Cause::forbidden(
                    "spec.persistentvolumesource",
                    "spec.persistentvolumesource is immutable after creation",
                ));
            }
            if os["volumeMode"] != ns["volumeMode"] {
                causes.push(Cause::forbidden("spec.volumeMode", "field is immutable"));
            }
        }
        ("", "Pod") => {
            let mutable = |s: &Value| {
                let mut s = without(
                    s,
                    &["activeDeadlineSeconds", "tolerations", "schedulingGates"],
                );
                for c in s["containers"].as_array_mut().into_iter().flatten() {
                    c.as_object_mut().map(|m| m.remove("image"));
                }
                s
            };
            if mutable(os) != mutable(ns) {
                causes.push(Cause::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations)",
                ));
            }
        }
        ("apps", "StatefulSet") => {
            const MUTABLE: [&str; 7] = [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
                "revisionHistoryLimit",
            ];
            if without(os, &MUTABLE) != without(ns, &MUTABLE) {
                causes.push(Cause::forbidden(
                    "spec",
                    "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                ));
            }
        }
        ("apps", "DaemonSet" | "Deployment" | "ReplicaSet") if os["selector"] != ns["selector"] => {
            causes.push(Cause::invalid("spec.selector", "field is immutable"));
        }
        ("batch", "Job") => {
            for f in ["selector", "template", "completions", "completionMode"] {
                if without_nulls(&os[f]) != without_nulls(&ns[f]) {
                    causes.push(Cause::invalid(format!("spec.{f}"), "field is immutable"));
                }
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            for f in [
                "provisioner",
                "parameters",
                "reclaimPolicy",
                "volumeBindingMode",
            ] {
                if old[f] != new[f] {
                    causes.push(Cause::forbidden(f, "updates to this field are forbidden"));
                }
            }
        }
        ("storage.k8s.io", "VolumeAttachment") if os != ns => {
            causes.push(Cause::invalid("spec", "field is immutable"));
        }
        _ => {}
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;
    use serde_json::json;

    fn pvc(storage: &str) -> Value {
        json!({"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": storage}}}, "status": {"phase": "Bound"}})
    }

    #[test]
    fn pvc_storage_must_be_a_quantity() {
        let causes = validate(&resources::PVCS, &pvc("lots"));
        assert_eq!(causes[0].field, "spec.resources.requests.storage");
        assert!(validate(&resources::PVCS, &pvc("1Gi")).is_empty());
    }

    #[test]
    fn pvc_spec_is_immutable_except_requests() {
        let ctx = UpdateContext {
            class_allows_expansion: true,
        };
        let mut changed = pvc("1Gi");
        changed["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert_eq!(
            validate_update(&resources::PVCS, &pvc("1Gi"), &changed, &ctx)[0].field,
            "spec"
        );
        assert!(validate_update(&resources::PVCS, &pvc("1Gi"), &pvc("2Gi"), &ctx).is_empty());
        assert!(!validate_update(&resources::PVCS, &pvc("2Gi"), &pvc("1Gi"), &ctx).is_empty());
        let no_expand = UpdateContext {
            class_allows_expansion: false,
        };
        assert!(
            !validate_update(&resources::PVCS, &pvc("1Gi"), &pvc("2Gi"), &no_expand).is_empty()
        );
    }
}
