//! The garbage collector (ownerReferences with background, foreground and
//! orphan propagation) and the namespace controller that empties namespaces.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::client::Client;
use crate::registry::DeleteOptions;
use crate::resources::ResourceType;

pub struct GarbageCollector {
    client: Client,
}

struct Entry {
    rt: ResourceType,
    obj: Value,
}

fn finalizers(o: &Value) -> Vec<String> {
    o["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(String::from))
        .collect()
}

fn deleting(o: &Value) -> bool {
    !o["metadata"]["deletionTimestamp"].is_null()
}

impl GarbageCollector {
    pub fn new(client: Client) -> Self {
        GarbageCollector { client }
    }

    pub fn reconcile(&self) {
        let mut all: Vec<Entry> = Vec::new();
        // Custom types too; a resource served in several versions is read once.
        let mut seen = HashSet::new();
        let types = self.client.registry().served_types();
        for rt in types
            .into_iter()
            .filter(|r| r.group != "events.k8s.io" && seen.insert(r.qualified()))
        {
            for obj in self.client.list_values(&rt) {
                all.push(Entry { rt, obj });
            }
        }
        let by_uid: HashMap<String, &Entry> = all
            .iter()
            .filter_map(|e| {
                e.obj["metadata"]["uid"]
                    .as_str()
                    .map(|u| (u.to_string(), e))
            })
            .collect();
        let mut dependents: HashMap<String, usize> = HashMap::new();
        for e in &all {
            let refs = e.obj["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if refs.is_empty() {
                continue;
            }
            let ns = e.obj["metadata"]["namespace"].as_str();
            let name = e.obj["metadata"]["name"].as_str().unwrap_or_default();
            let mut live_owner = false;
            let mut foreground = false;
            let mut orphaned: Vec<String> = Vec::new();
            for r in &refs {
                let uid = r["uid"].as_str().unwrap_or_default();
                *dependents.entry(uid.to_string()).or_default() += 1;
                if let Some(owner) = by_uid.get(uid) {
                    live_owner = true;
                    let fins = finalizers(&owner.obj);
                    if deleting(&owner.obj) && fins.iter().any(|f| f == "foregroundDeletion") {
                        foreground = true;
                    }
                    if deleting(&owner.obj) && fins.iter().any(|f| f == "orphan") {
                        orphaned.push(uid.to_string());
                    }
                }
            }
            if !orphaned.is_empty() {
                let kept: Vec<&Value> = refs
                    .iter()
                    .filter(|r| !orphaned.iter().any(|u| r["uid"] == u.as_str()))
                    .collect();
                let _ = self.client.patch_rt(
                    &e.rt,
                    ns,
                    name,
                    &json!({"metadata": {"ownerReferences": kept}}),
                );
                continue;
            }
            if (!live_owner || foreground) && !deleting(&e.obj) {
                tracing::info!(
                    kind = e.rt.kind,
                    namespace = ns.unwrap_or_default(),
                    name,
                    "garbage collecting dependent"
                );
                let opts = DeleteOptions {
                    propagation_policy: Some("Background".into()),
                    ..Default::default()
                };
                let _ = self.client.delete_rt(&e.rt, ns, name, &opts);
            }
        }
        // Owners waiting on foreground or orphan deletion finish once no dependents point at them.
        for e in all.iter().filter(|e| deleting(&e.obj)) {
            let fins = finalizers(&e.obj);
            let uid = e.obj["metadata"]["uid"].as_str().unwrap_or_default();
            if dependents.get(uid).copied().unwrap_or(0) > 0 {
                continue;
            }
            if fins
                .iter()
                .any(|f| f == "foregroundDeletion" || f == "orphan")
            {
                let kept: Vec<&String> = fins
                    .iter()
                    .filter(|f| *f != "foregroundDeletion" && *f != "orphan")
                    .collect();
                let (ns, name) = (
                    e.obj["metadata"]["namespace"].as_str(),
                    e.obj["metadata"]["name"].as_str().unwrap_or_default(),
                );
                let _ = self.client.patch_rt(
                    &e.rt,
                    ns,
                    name,
                    &json!({"metadata": {"finalizers": kept}}),
                );
            }
        }
        self.namespaces(&all);
    }

    /// Deletes everything in a terminating namespace, then the namespace itself.
    fn namespaces(&self, all: &[Entry]) {
        for ns in all
            .iter()
            .filter(|e| e.rt.kind == "Namespace" && deleting(&e.obj))
        {
            let name = ns.obj["metadata"]["name"].as_str().unwrap_or_default();
            let content: Vec<&Entry> = all
                .iter()
                .filter(|e| e.rt.namespaced && e.obj["metadata"]["namespace"] == name)
                .collect();
            if content.is_empty() {
                if self.client.registry().finalize_namespace(name).is_ok() {
                    tracing::info!(namespace = name, "namespace finalized");
                }
                continue;
            }
            for e in content.iter().filter(|e| !deleting(&e.obj)) {
                let n = e.obj["metadata"]["name"].as_str().unwrap_or_default();
                let _ = self
                    .client
                    .delete_rt(&e.rt, Some(name), n, &DeleteOptions::default());
            }
        }
    }
}
