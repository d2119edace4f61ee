//! Discovery documents: /version, /api, /apis, group and group-version
//! resource lists, built from the resource table.

use serde_json::{Value, json};

use crate::resources::{self, ResourceType};

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

fn group_entry(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

pub fn group_list() -> Value {
    let groups: Vec<Value> = resources::groups()
        .into_iter()
        .map(|(g, v)| group_entry(g, v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(name: &str) -> Option<Value> {
    let (g, v) = resources::groups().into_iter().find(|(g, _)| *g == name)?;
    let mut out = group_entry(g, v);
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
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut list = Vec::new();
    for rt in resources::ALL
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
