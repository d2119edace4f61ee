//! Discovery documents: /version, /api, /apis, group and group-version
//! resource lists, built from the served types (built-in and from CRDs).

use serde_json::{Value, json};

use crate::resources::ResourceType;

pub fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-cairn", "gitCommit": "cairn-harness",
        "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub fn core_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
}

/// Kubernetes version order: GA before beta before alpha, higher numbers first
/// (the key sorts ascending; v2 < v1 < v1beta2 < v1beta1 < v1alpha1 < other).
fn version_key(v: &str) -> (u8, i64, i64, String) {
    let Some(rest) = v.strip_prefix('v') else {
        return (3, 0, 0, v.to_string());
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let Ok(major) = digits.parse::<i64>() else {
        return (3, 0, 0, v.to_string());
    };
    let tail = &rest[digits.len()..];
    let (level, num) = match tail {
        "" => (0, "0"),
        t if t.starts_with("beta") => (1, &t[4..]),
        t if t.starts_with("alpha") => (2, &t[5..]),
        _ => return (3, 0, 0, v.to_string()),
    };
    match num.parse::<i64>() {
        Ok(n) => (level, -major, -n, String::new()),
        Err(_) => (3, 0, 0, v.to_string()),
    }
}

/// Groups in first-served order, each with its versions, preferred first.
fn groups(types: &[ResourceType]) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for r in types.iter().filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, vs)) if !vs.contains(&r.version) => vs.push(r.version),
            Some(_) => {}
            None => out.push((r.group, vec![r.version])),
        }
    }
    for (_, vs) in &mut out {
        vs.sort_by_key(|v| version_key(v));
    }
    out
}

fn group_entry(group: &str, versions: &[&str]) -> Value {
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": gvs, "preferredVersion": gvs[0]})
}

pub fn group_list(types: &[ResourceType]) -> Value {
    let groups: Vec<Value> = groups(types)
        .into_iter()
        .map(|(g, vs)| group_entry(g, &vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(types: &[ResourceType], name: &str) -> Option<Value> {
    let (g, vs) = groups(types).into_iter().find(|(g, _)| *g == name)?;
    let mut out = group_entry(g, &vs);
    out["kind"] = json!("APIGroup");
    out["apiVersion"] = json!("v1");
    Some(out)
}

fn verbs(rt: &ResourceType) -> Vec<&'static str> {
    vec![
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ]
    .into_iter()
    .filter(|v| !(rt.kind == "Namespace" && *v == "deletecollection"))
    .collect()
}

fn sub_entry(rt: &ResourceType, sub: &str) -> Value {
    let (kind, group, version, verbs) = match sub {
        "binding" => ("Binding", "", "v1", vec!["create"]),
        "log" => ("Pod", "", "v1", vec!["get"]),
        "scale" => ("Scale", "autoscaling", "v1", vec!["get", "patch", "update"]),
        _ => (
            rt.kind,
            rt.group,
            rt.version,
            vec!["get", "patch", "update"],
        ),
    };
    let mut e = json!({"name": format!("{}/{sub}", rt.plural), "singularName": "", "namespaced": rt.namespaced,
        "kind": kind, "verbs": verbs});
    if sub == "scale" {
        e["group"] = json!(group);
        e["version"] = json!(version);
    }
    e
}

/// The APIResourceList for `group`/`version` (`""` for the core group).
pub fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut list = Vec::new();
    for rt in types
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut e = json!({"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
            "kind": rt.kind, "verbs": verbs(rt), "storageVersionHash": ""});
        if !rt.short_names.is_empty() {
            e["shortNames"] = json!(rt.short_names);
        }
        if !rt.categories.is_empty() {
            e["categories"] = json!(rt.categories);
        }
        list.push(e);
        for sub in rt.subresources {
            list.push(sub_entry(rt, sub));
        }
    }
    if list.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferred_version_is_the_most_stable() {
        let mut vs = vec!["v1alpha1", "v1beta1", "v2", "v1", "v1beta2", "foo"];
        vs.sort_by_key(|v| version_key(v));
        assert_eq!(
            vs,
            vec!["v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
        );
    }
}
