//! The four PATCH flavours: JSON merge patch, JSON patch, strategic merge patch
//! (with the merge keys and directives kubectl sends) and apply patch.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Result<Self> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
            _ => Err(Error::UnsupportedMediaType(
                "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
                    .into(),
            )),
        }
    }
}

/// Parses a patch body: JSON, or YAML for apply patches.
pub fn parse_body(pt: PatchType, body: &[u8]) -> Result<Value> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(e) if pt == PatchType::Apply => serde_yaml::from_slice(body)
            .map_err(|y| Error::BadRequest(format!("error decoding YAML: {y} ({e})"))),
        Err(e) => Err(Error::BadRequest(format!("error decoding patch: {e}"))),
    }
}

/// Applies `patch` of type `pt` to `target`.
pub fn apply(pt: PatchType, target: &Value, patch: &Value) -> Result<Value> {
    let mut out = target.clone();
    match pt {
        PatchType::Merge => json_patch::merge(&mut out, patch),
        PatchType::Json => json_patch_ops(&mut out, patch)?,
        PatchType::Strategic | PatchType::Apply => strategic_merge(&mut out, patch),
    }
    Ok(out)
}

/// Applies a JSON patch (RFC 6902) op by op, as kube-apiserver's evanphx/json-patch v4 does:
/// a `replace` of a missing member of an object sets it (the library reads a missing key as
/// null), which csi-snapshotter relies on to replace `/metadata/annotations` on an object that
/// has none. A failed op leaves `out` half-patched; the caller drops it.
fn json_patch_ops(out: &mut Value, patch: &Value) -> Result<()> {
    let malformed = |e: String| Error::BadRequest(format!("the json patch is malformed: {e}"));
    let ops = patch
        .as_array()
        .ok_or_else(|| malformed("not a JSON array".into()))?;
    for op in ops {
        let mut op = op.clone();
        if op["op"] == "replace"
            && let Some(path) = op["path"].as_str()
            && let Some((parent, key)) = path.rsplit_once('/')
        {
            let key = key.replace("~1", "/").replace("~0", "~");
            if out
                .pointer(parent)
                .and_then(Value::as_object)
                .is_some_and(|o| !o.contains_key(&key))
            {
                op["op"] = "add".into();
            }
        }
        let p: json_patch::Patch =
            serde_json::from_value(Value::Array(vec![op])).map_err(|e| malformed(e.to_string()))?;
        json_patch::patch(out, &p).map_err(|e| Error::Invalid {
            kind: String::new(),
            group: String::new(),
            name: String::new(),
            causes: vec![crate::error::Cause::invalid(
                "",
                format!("the json patch could not be applied: {e}"),
            )],
        })?;
    }
    Ok(())
}

/// The merge key of a list field under strategic merge, or None for "replace".
fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "ports" => match sample {
            Some(s) if s.get("containerPort").is_some() => Some("containerPort"),
            Some(s) if s.get("port").is_some() => Some("port"),
            _ => None,
        },
        _ => None,
    }
}

/// Strategic merge patch, covering what kubectl and controllers send.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(pm) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if pm.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = pm.clone();
        clean.remove("$patch");
        *target = Value::Object(clean);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let retain: Option<Vec<String>> = pm.get("$retainKeys").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    });
    for (k, v) in pm {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        let t = target.as_object_mut().expect("object");
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(arr), Some(del)) =
                (t.get_mut(field).and_then(Value::as_array_mut), v.as_array())
            {
                arr.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), v) {
            (Some(cur @ Value::Object(_)), Value::Object(_)) => strategic_merge(cur, v),
            (Some(Value::Array(cur)), Value::Array(items)) => merge_list(k, cur, items),
            (_, Value::Object(o)) => {
                let mut fresh = Value::Object(Map::new());
                strategic_merge(&mut fresh, &Value::Object(o.clone()));
                t.insert(k.clone(), fresh);
            }
            (_, Value::Array(items)) => {
                let kept: Vec<Value> = items
                    .iter()
                    .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                    .cloned()
                    .collect();
                t.insert(k.clone(), Value::Array(kept));
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    if let (Some(retain), Some(t)) = (retain, target.as_object_mut()) {
        t.retain(|k, _| retain.contains(k));
    }
}

fn merge_list(field: &str, cur: &mut Vec<Value>, items: &[Value]) {
    if field == "finalizers" {
        for i in items {
            if !cur.contains(i) {
                cur.push(i.clone());
            }
        }
        return;
    }
    let Some(key) = merge_key(field, items.first().or(cur.first())) else {
        *cur = items.to_vec();
        return;
    };
    for item in items {
        let id = item.get(key);
        let pos = cur.iter().position(|c| id.is_some() && c.get(key) == id);
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(p) = pos {
                cur.remove(p);
            }
            continue;
        }
        match pos {
            Some(p) => strategic_merge(&mut cur[p], item),
            None => {
                let mut fresh = Value::Object(Map::new());
                strategic_merge(&mut fresh, item);
                cur.push(fresh);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "b", "image": "z"}]}});
        let out = apply(PatchType::Strategic, &pod, &patch).unwrap();
        assert_eq!(out["spec"]["containers"][0]["image"], "x");
        assert_eq!(out["spec"]["containers"][1]["image"], "z");
        let del = json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}});
        let out = apply(PatchType::Strategic, &out, &del).unwrap();
        assert_eq!(out["spec"]["containers"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn merge_and_json_patch() {
        let o = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let out = apply(
            PatchType::Merge,
            &o,
            &json!({"metadata": {"labels": {"a": null}}}),
        )
        .unwrap();
        assert_eq!(out, json!({"metadata": {"labels": {"b": "2"}}}));
        let out = apply(
            PatchType::Json,
            &o,
            &json!([{"op": "replace", "path": "/metadata/labels/a", "value": "9"}]),
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"]["a"], "9");
        // A missing object member is replaced (set), as evanphx/json-patch v4 does; a missing
        // parent or array element is still an error.
        let out = apply(
            PatchType::Json,
            &o,
            &json!([{"op": "replace", "path": "/metadata/annotations", "value": {"x": "y"}}]),
        )
        .unwrap();
        assert_eq!(out["metadata"]["annotations"], json!({"x": "y"}));
        for path in ["/spec/annotations", "/metadata/labels/a/b"] {
            let p = json!([{"op": "replace", "path": path, "value": 1}]);
            assert!(apply(PatchType::Json, &o, &p).is_err(), "{path}");
        }
        assert!(
            apply(
                PatchType::Json,
                &o,
                &json!([{"op": "test", "path": "/metadata/labels/a", "value": "0"}])
            )
            .is_err()
        );
    }

    #[test]
    fn apply_patch_accepts_yaml() {
        let v = parse_body(PatchType::Apply, b"metadata:\n  name: x\n").unwrap();
        assert_eq!(v["metadata"]["name"], "x");
    }
}
