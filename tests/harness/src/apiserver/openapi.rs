//! A minimal OpenAPI v3 surface: one PATCH operation per kind that declares
//! `fieldValidation`, which is what kubectl probes before it creates or applies.

use serde_json::{Map, Value, json};

use crate::resources;

fn gv_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// GET /openapi/v3: the index of group-version documents.
pub fn index() -> Value {
    let mut paths = Map::new();
    let mut gvs = vec![("", "v1")];
    gvs.extend(resources::groups());
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
pub fn document(path: &str) -> Option<Value> {
    let mut paths = Map::new();
    for rt in resources::ALL {
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
        let op = json!({
            "operationId": format!("patch{}", rt.kind),
            "parameters": params,
            "requestBody": {"content": {
                "application/json-patch+json": {"schema": {"type": "object"}},
                "application/merge-patch+json": {"schema": {"type": "object"}},
                "application/apply-patch+yaml": {"schema": {"type": "object"}},
            }},
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
