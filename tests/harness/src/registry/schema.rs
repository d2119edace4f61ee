//! Structural schemas for custom resources, as apiextensions-apiserver applies
//! them: unknown fields pruned (named under strict validation), defaults, basic checks.

use serde_json::Value;

use crate::error::Cause;

fn child(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

fn preserves(s: &Value) -> bool {
    s["x-kubernetes-preserve-unknown-fields"] == true
}

/// The schema a key of an object with schema `s` falls under, if any.
fn property<'a>(s: &'a Value, k: &str) -> Option<&'a Value> {
    s["properties"].get(k).or_else(|| {
        s["additionalProperties"]
            .as_object()
            .map(|_| &s["additionalProperties"])
    })
}

/// Removes the fields of `v` that `s` does not specify, recording their paths in `unknown`.
/// At the root, `apiVersion`, `kind` and `metadata` are always kept.
pub fn prune(v: &mut Value, s: &Value, path: &str, unknown: &mut Vec<String>) {
    if s.is_null() {
        return;
    }
    match v {
        Value::Object(m) => {
            let embedded = path.is_empty() || s["x-kubernetes-embedded-resource"] == true;
            let keep_all = preserves(s) || s["additionalProperties"] == true;
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                if embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                match property(s, &k) {
                    Some(ps) => {
                        if let Some(cv) = m.get_mut(&k) {
                            prune(cv, ps, &child(path, &k), unknown);
                        }
                    }
                    None if keep_all => {}
                    None => {
                        m.remove(&k);
                        unknown.push(child(path, &k));
                    }
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                prune(item, &s["items"], &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

/// Applies `default:` values: a missing property (or a null one that is not
/// nullable) takes its default, then defaulting descends into every present field.
pub fn apply_defaults(v: &mut Value, s: &Value, root: bool) {
    match v {
        Value::Object(m) => {
            for (k, ps) in s["properties"].as_object().into_iter().flatten() {
                if root && k == "metadata" {
                    continue;
                }
                let Some(d) = ps.get("default") else { continue };
                let absent = m
                    .get(k)
                    .is_none_or(|x| x.is_null() && ps["nullable"] != true);
                if absent {
                    m.insert(k.clone(), d.clone());
                }
            }
            for (k, cv) in m.iter_mut() {
                if root && k == "metadata" {
                    continue;
                }
                if let Some(ps) = property(s, k) {
                    apply_defaults(cv, ps, false);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                apply_defaults(item, &s["items"], false);
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_ok(v: &Value, s: &Value) -> bool {
    let actual = type_name(v);
    if s["x-kubernetes-int-or-string"] == true {
        return matches!(actual, "integer" | "string");
    }
    match s["type"].as_str() {
        None | Some("") => true,
        Some("number") => matches!(actual, "integer" | "number"),
        Some(t) => t == actual,
    }
}

/// The type, `required` and `enum` violations of `v` against `s`.
pub fn validate(v: &Value, s: &Value, path: &str, causes: &mut Vec<Cause>) {
    if s.is_null() {
        return;
    }
    if v.is_null() {
        if s["nullable"] != true && !path.is_empty() {
            causes.push(Cause::invalid(
                path,
                format!(
                    "Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                    s["type"].as_str().unwrap_or("object")
                ),
            ));
        }
        return;
    }
    if !type_ok(v, s) {
        let t = s["type"].as_str().unwrap_or("string");
        let actual = type_name(v);
        causes.push(Cause::invalid(
            path,
            format!(
                "Invalid value: \"{actual}\": {path} in body must be of type {t}: \"{actual}\""
            ),
        ));
        return;
    }
    if let Some(allowed) = s["enum"].as_array()
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        causes.push(Cause {
            field: path.to_string(),
            reason: "FieldValueNotSupported".into(),
            message: format!(
                "Unsupported value: {v}: supported values: {}",
                list.join(", ")
            ),
        });
    }
    match v {
        Value::Object(m) => {
            for r in s["required"].as_array().into_iter().flatten() {
                if let Some(r) = r.as_str()
                    && m.get(r).is_none()
                {
                    causes.push(Cause::required(child(path, r)));
                }
            }
            for (k, cv) in m {
                if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(ps) = property(s, k) {
                    validate(cv, ps, &child(path, k), causes);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                validate(item, &s["items"], &format!("{path}[{i}]"), causes);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["driver"], "properties": {
                "driver": {"type": "string"},
                "deletionPolicy": {"type": "string", "enum": ["Delete", "Retain"], "default": "Delete"},
                "params": {"type": "object", "additionalProperties": {"type": "string"}},
                "list": {"type": "array", "items": {"type": "object", "properties": {
                    "n": {"type": "integer", "default": 3}}}}}},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}})
    }

    #[test]
    fn prunes_unknown_fields_and_names_them() {
        let mut v = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"}, "extra": 1,
            "spec": {"driver": "d", "bogus": true, "params": {"a": "b"}, "list": [{"n": 1, "z": 2}]},
            "status": {"anything": {"goes": 1}}});
        let mut unknown = Vec::new();
        prune(&mut v, &schema(), "", &mut unknown);
        assert_eq!(unknown, vec!["extra", "spec.bogus", "spec.list[0].z"]);
        assert_eq!(v["spec"]["params"]["a"], "b");
        assert_eq!(v["status"]["anything"]["goes"], 1);
        assert_eq!(v["metadata"]["name"], "a");
    }

    #[test]
    fn defaults_fill_missing_fields_recursively() {
        let mut v = json!({"spec": {"driver": "d", "list": [{}, {"n": 7}]}});
        apply_defaults(&mut v, &schema(), true);
        assert_eq!(v["spec"]["deletionPolicy"], "Delete");
        assert_eq!(v["spec"]["list"][0]["n"], 3);
        assert_eq!(v["spec"]["list"][1]["n"], 7);
        let mut none = json!({});
        apply_defaults(&mut none, &schema(), true);
        assert_eq!(none, json!({}), "no parent object is created");
    }

    #[test]
    fn validation_names_the_field() {
        let v = json!({"spec": {"deletionPolicy": "Keep", "list": [{"n": "x"}]}});
        let mut causes = Vec::new();
        validate(&v, &schema(), "", &mut causes);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["spec.driver", "spec.deletionPolicy", "spec.list[0].n"]
        );
    }
}
