//! The catalog of types served for established CustomResourceDefinitions (one
//! `ResourceType` per served version, with its schema) and the registry's type lookups.

use std::collections::HashMap;
use std::sync::{RwLockReadGuard, RwLockWriteGuard};

use serde_json::{Value, json};

use super::Registry;
use crate::resources::{self, ResourceType};

/// One served version of a custom resource.
#[derive(Debug, Clone)]
pub struct CustomType {
    pub rt: ResourceType,
    /// The version's `openAPIV3Schema` (Null when it has none).
    pub schema: Value,
    /// The name of the CRD that defines it.
    pub crd: String,
    /// The CRD is being deleted: no new objects may be created.
    pub terminating: bool,
    /// The version's `additionalPrinterColumns`, for `kubectl get`.
    pub columns: Vec<Value>,
}

/// Served custom types plus the interned `'static` strings their `ResourceType`s
/// point at. A type is leaked once per distinct definition and reused on every rebuild.
#[derive(Default)]
pub struct Catalog {
    pub types: Vec<CustomType>,
    interned: HashMap<String, ResourceType>,
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn leak_list(v: &[String]) -> &'static [&'static str] {
    let items: Vec<&'static str> = v.iter().map(|s| leak(s)).collect();
    Box::leak(items.into_boxed_slice())
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

/// Whether a CRD condition of `ty` is True.
pub fn condition_true(crd: &Value, ty: &str) -> bool {
    crd["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == ty && c["status"] == "True")
}

impl Catalog {
    fn intern(&mut self, fields: &[String], subs: &[String]) -> ResourceType {
        let key = format!("{fields:?}{subs:?}");
        if let Some(rt) = self.interned.get(&key) {
            return *rt;
        }
        let f = |i: usize| leak(&fields[i]);
        let rt = ResourceType {
            group: f(0),
            version: f(1),
            plural: f(2),
            singular: f(3),
            kind: f(4),
            namespaced: fields[5] == "Namespaced",
            short_names: leak_list(&strings(
                &serde_json::from_str(&fields[6]).unwrap_or_default(),
            )),
            subresources: leak_list(subs),
            categories: leak_list(&strings(
                &serde_json::from_str(&fields[7]).unwrap_or_default(),
            )),
        };
        self.interned.insert(key, rt);
        rt
    }

    /// Replaces the served types with those of the established CRDs in `crds`.
    pub fn rebuild(&mut self, crds: &[Value]) {
        let mut types = Vec::new();
        for crd in crds {
            if !condition_true(crd, "Established") {
                continue;
            }
            let names = &crd["status"]["acceptedNames"];
            let spec = &crd["spec"];
            for v in spec["versions"].as_array().into_iter().flatten() {
                if v["served"] != true {
                    continue;
                }
                let fields: Vec<String> = vec![
                    spec["group"].as_str().unwrap_or_default().into(),
                    v["name"].as_str().unwrap_or_default().into(),
                    names["plural"].as_str().unwrap_or_default().into(),
                    names["singular"].as_str().unwrap_or_default().into(),
                    names["kind"].as_str().unwrap_or_default().into(),
                    spec["scope"].as_str().unwrap_or_default().into(),
                    names["shortNames"].to_string(),
                    names["categories"].to_string(),
                ];
                let mut subs = Vec::new();
                if v["subresources"]["status"].is_object() {
                    subs.push("status".to_string());
                }
                let rt = self.intern(&fields, &subs);
                types.push(CustomType {
                    rt,
                    schema: v["schema"]["openAPIV3Schema"].clone(),
                    crd: crd["metadata"]["name"].as_str().unwrap_or_default().into(),
                    terminating: !crd["metadata"]["deletionTimestamp"].is_null(),
                    columns: v["additionalPrinterColumns"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                });
            }
        }
        self.types = types;
    }

    pub fn find(&self, rt: &ResourceType) -> Option<&CustomType> {
        self.types.iter().find(|t| t.rt == *rt)
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.rt.group == group && t.rt.version == version && t.rt.plural == plural)
            .map(|t| t.rt)
    }
}

impl Registry {
    pub(super) fn custom(&self) -> RwLockReadGuard<'_, Catalog> {
        self.custom.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn custom_mut(&self) -> RwLockWriteGuard<'_, Catalog> {
        self.custom.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The type served at `group`/`version`/`plural`: built in, or from a CRD.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        resources::lookup(group, version, plural)
            .or_else(|| self.custom().lookup(group, version, plural))
    }

    /// Every served type: the built-in ones, then those of established CRDs.
    pub fn served_types(&self) -> Vec<ResourceType> {
        let mut all = resources::ALL.to_vec();
        all.extend(self.custom().types.iter().map(|t| t.rt));
        all
    }

    /// The served custom type `rt`, with its schema.
    pub fn custom_type(&self, rt: &ResourceType) -> Option<CustomType> {
        self.custom().find(rt).cloned()
    }

    /// A custom object read through `rt`'s version carries that version (conversion None).
    pub(super) fn as_version(rt: &ResourceType, mut obj: Value) -> Value {
        if !resources::is_builtin(rt) {
            obj["apiVersion"] = json!(rt.api_version());
        }
        obj
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_established_served_versions_are_served_and_types_are_reused() {
        let mut crd = json!({"metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced", "versions": [
                {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
                {"name": "v1beta1", "served": false, "storage": false}]},
            "status": {"acceptedNames": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                "shortNames": ["wd"]}, "conditions": []}});
        let mut c = Catalog::default();
        c.rebuild(std::slice::from_ref(&crd));
        assert!(c.types.is_empty(), "not established yet");
        crd["status"]["conditions"] = json!([{"type": "Established", "status": "True"}]);
        c.rebuild(std::slice::from_ref(&crd));
        let rt = c.lookup("example.com", "v1", "widgets").unwrap();
        assert!(rt.namespaced && rt.has_subresource("status"));
        assert_eq!(rt.short_names, &["wd"]);
        assert!(c.lookup("example.com", "v1beta1", "widgets").is_none());
        c.rebuild(std::slice::from_ref(&crd));
        assert!(std::ptr::eq(
            c.lookup("example.com", "v1", "widgets").unwrap().plural,
            rt.plural
        ));
    }
}
