//! The in-process client the controllers, scheduler and kubelets use: typed
//! `k8s-openapi` objects in and out, the same registry semantics as HTTP.

use std::sync::Arc;

use k8s_openapi::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::registry::patch::PatchType;
use crate::registry::selectors::{FieldSelector, LabelSelector};
use crate::registry::{DeleteOptions, Registry, Sub, WriteOptions};
use crate::resources::{self, ResourceType};

#[derive(Clone)]
pub struct Client {
    reg: Arc<Registry>,
}

/// The served resource type of a `k8s-openapi` kind.
pub fn rt_of<K: Resource>() -> ResourceType {
    resources::for_kind(K::API_VERSION, K::KIND)
        .unwrap_or_else(|| panic!("{} is not served", K::KIND))
}

fn decode<K: DeserializeOwned>(v: Value) -> Result<K> {
    serde_json::from_value(v).map_err(Error::internal)
}

fn encode<K: Serialize>(k: &K) -> Result<Value> {
    serde_json::to_value(k).map_err(Error::internal)
}

/// Namespace-ness without a trait bound per call site.
pub trait Scoped: Resource + Serialize + DeserializeOwned + Clone {}
impl<K: Resource + Serialize + DeserializeOwned + Clone> Scoped for K {}

impl Client {
    pub fn new(reg: Arc<Registry>) -> Self {
        Client { reg }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.reg
    }

    pub fn get<K: Scoped>(&self, ns: Option<&str>, name: &str) -> Result<Option<K>> {
        match self.reg.get(&rt_of::<K>(), ns, name) {
            Ok(v) => decode(v).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn list<K: Scoped>(&self, ns: Option<&str>) -> Vec<K> {
        self.list_selected(ns, &LabelSelector::default(), &FieldSelector::default())
    }

    pub fn list_selected<K: Scoped>(
        &self,
        ns: Option<&str>,
        ls: &LabelSelector,
        fs: &FieldSelector,
    ) -> Vec<K> {
        let (items, _) = self.reg.list(&rt_of::<K>(), ns, ls, fs);
        items
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect()
    }

    pub fn list_values(&self, rt: &ResourceType) -> Vec<Value> {
        self.reg
            .list(
                rt,
                None,
                &LabelSelector::default(),
                &FieldSelector::default(),
            )
            .0
    }

    pub fn create<K: Scoped>(&self, obj: &K) -> Result<K> {
        let v = encode(obj)?;
        let ns = v["metadata"]["namespace"].as_str().map(String::from);
        decode(
            self.reg
                .create(&rt_of::<K>(), ns.as_deref(), v, WriteOptions::default())?,
        )
    }

    /// Replaces the object; a stale resourceVersion is a Conflict.
    pub fn replace<K: Scoped>(&self, obj: &K) -> Result<K> {
        self.put(obj, Sub::Main)
    }

    pub fn replace_status<K: Scoped>(&self, obj: &K) -> Result<K> {
        self.put(obj, Sub::Status)
    }

    fn put<K: Scoped>(&self, obj: &K, sub: Sub) -> Result<K> {
        let v = encode(obj)?;
        let ns = v["metadata"]["namespace"].as_str().map(String::from);
        let name = v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        decode(self.reg.replace(
            &rt_of::<K>(),
            ns.as_deref(),
            &name,
            v,
            sub,
            WriteOptions::default(),
        )?)
    }

    pub fn patch<K: Scoped>(&self, ns: Option<&str>, name: &str, patch: &Value) -> Result<K> {
        decode(self.reg.patch(
            &rt_of::<K>(),
            ns,
            name,
            PatchType::Merge,
            patch,
            Sub::Main,
            WriteOptions::default(),
        )?)
    }

    pub fn patch_status<K: Scoped>(
        &self,
        ns: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<K> {
        decode(self.reg.patch(
            &rt_of::<K>(),
            ns,
            name,
            PatchType::Merge,
            patch,
            Sub::Status,
            WriteOptions::default(),
        )?)
    }

    /// Deletes; an object that is already gone is not an error.
    pub fn delete<K: Scoped>(
        &self,
        ns: Option<&str>,
        name: &str,
        grace: Option<i64>,
    ) -> Result<()> {
        let opts = DeleteOptions {
            grace_period_seconds: grace,
            ..Default::default()
        };
        match self.reg.delete(&rt_of::<K>(), ns, name, &opts) {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn delete_rt(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<()> {
        match self.reg.delete(rt, ns, name, opts) {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn patch_rt(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<Value> {
        self.reg.patch(
            rt,
            ns,
            name,
            PatchType::Merge,
            patch,
            Sub::Main,
            WriteOptions::default(),
        )
    }

    pub fn bind_pod(&self, ns: &str, name: &str, node: &str) -> Result<()> {
        let binding = serde_json::json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
        self.reg.bind(ns, name, &binding).map(|_| ())
    }
}
