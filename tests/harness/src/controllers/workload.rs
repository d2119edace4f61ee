//! What the workload controllers share: pod readiness and availability, controller
//! references, template hashes, pods stamped from a template, int-or-percent values.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The letters upstream's `rand.SafeEncodeString` maps to (no vowels, no look-alikes).
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub fn is_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

/// When the pod's Ready condition last became True, if it is True.
fn ready_since(p: &Pod) -> Option<chrono::DateTime<chrono::Utc>> {
    let c = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    let at = serde_json::to_value(&c.last_transition_time).unwrap_or_default();
    Some(
        at.as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map_or(chrono::DateTime::UNIX_EPOCH, |t| t.to_utc()),
    )
}

/// Ready for at least `min_ready_seconds` (upstream's "available").
pub fn is_available(p: &Pod, min_ready_seconds: i32) -> bool {
    ready_since(p).is_some_and(|t| {
        min_ready_seconds <= 0
            || t + chrono::Duration::seconds(i64::from(min_ready_seconds)) <= chrono::Utc::now()
    })
}

pub fn is_terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Neither finished nor being deleted: the pods a controller counts.
pub fn is_active(p: &Pod) -> bool {
    !is_terminal(p) && p.metadata.deletion_timestamp.is_none()
}

/// Whether `meta`'s controller reference points at the object with `uid`.
pub fn controlled_by(meta: &ObjectMeta, uid: Option<&String>) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid)
}

/// The controller reference to the owner `meta` of kind `kind` (group apps/v1).
pub fn controller_ref(kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: kind.into(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A short, stable, label-safe hash of a pod template (upstream hashes with FNV and
/// encodes with `SafeEncodeString`; the letters are the same, the digits differ).
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let d = Sha256::digest(&bytes);
    let n = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    n.to_string()
        .bytes()
        .map(|b| SAFE[usize::from(b) % SAFE.len()] as char)
        .collect()
}

/// A pod stamped from `template` for `owner`, named `name` or generated from `<prefix>-`.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: Option<String>,
    generate_prefix: &str,
    owner: OwnerReference,
    extra_labels: BTreeMap<String, String>,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.extend(extra_labels);
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{generate_prefix}-")),
            namespace,
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// An int-or-percent (`1`, `"25%"`) scaled to `total`, rounding percentages up or down.
pub fn scaled(v: Option<&Value>, total: i32, round_up: bool, default: i32) -> i32 {
    match v {
        Some(Value::Number(n)) => n.as_i64().map_or(default, |n| n as i32),
        Some(Value::String(s)) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) => {
                let x = p * i64::from(total);
                (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
            }
            None => s.parse().unwrap_or(default),
        },
        _ => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn int_or_percent_rounds_as_upstream() {
        assert_eq!(scaled(Some(&json!("25%")), 3, true, 0), 1);
        assert_eq!(scaled(Some(&json!("25%")), 3, false, 0), 0);
        assert_eq!(scaled(Some(&json!(2)), 3, false, 0), 2);
        assert_eq!(scaled(Some(&json!("2")), 3, false, 0), 2);
        assert_eq!(scaled(None, 3, false, 7), 7);
    }

    #[test]
    fn template_hash_is_stable_and_label_safe() {
        let a: PodTemplateSpec =
            serde_json::from_value(json!({"metadata": {"labels": {"app": "a"}}})).unwrap();
        let b: PodTemplateSpec =
            serde_json::from_value(json!({"metadata": {"labels": {"app": "b"}}})).unwrap();
        assert_eq!(template_hash(&a), template_hash(&a));
        assert_ne!(template_hash(&a), template_hash(&b));
        assert!(template_hash(&a).bytes().all(|c| SAFE.contains(&c)));
    }
}
