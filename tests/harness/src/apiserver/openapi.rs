//! A minimal OpenAPI v3 surface: one PATCH operation per kind that declares
//! `fieldValidation`, which is what kubectl probes before it creates or applies.

use serde_json::{Map, Value, json};

use crate::resources::ResourceType;

fn gv_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// GET /openapi/v3: the index of group-version documents.
pub fn index(types: &[ResourceType]) -> Value {
    let mut paths = Map::new();
    let mut gvs = vec![("", "v1")];
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        if !gvs.contains(&(t.group, t.version)) {
            gvs.push((t.group, t.version));
        }
    }
    for (g, v) in gvs {
        let key = gv_key(g, v);
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash=cairn")}),
        );
    }
    json!({"paths": paths})
}

/// GET /openapi/v3/<api/v1 | apis/group/version>.
/// No type lists strategic merge patch: kubectl then builds it from its compiled-in
/// types for built-in kinds and sends a merge patch for custom ones.
pub fn document(types: &[ResourceType], path: &str) -> Option<Value> {
    let mut paths = Map::new();
    for rt in types {
        if gv_key(rt.group, rt.version) != path {
            continue;
        }
        let prefix = if rt.group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{}/{}", rt.group, rt.version)
        };
        let url = if rt.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", rt.plural)
        } else {
            format!("{prefix}/{}/{{name}}", rt.plural)
        };
        let params = json!([
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
        ]);
        let content = json!({
            "application/json-patch+json": {"schema": {"type": "object"}},
            "application/merge-patch+json": {"schema": {"type": "object"}},
            "application/apply-patch+yaml": {"schema": {"type": "object"}},
        });
        let op = json!({
            "operationId": format!("patch{}", rt.kind),
            "parameters": params,
            "requestBody": {"content": content},
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        });
        paths.insert(url, json!({"patch": op}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths,
        "components": {"schemas": {}}}),
    )
}
