//! REST semantics on top of the store: create, update, patch, delete with
//! finalizers and grace periods, status/binding/scale subresources.

mod cluster_ip;
mod crd;
pub mod custom;
pub mod defaults;
pub mod patch;
pub mod quantity;
pub mod schema;
pub mod selectors;
pub mod typed;
pub mod validation;

use std::sync::{Arc, RwLock};

use serde_json::{Value, json};

use crate::error::{Cause, Error, Result};
use crate::resources::{self, ResourceType};
use crate::store::{Mutation, ObjectKey, Store};
use patch::PatchType;
use selectors::{FieldSelector, LabelSelector};

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    Main,
    Status,
}

/// Options common to writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// `fieldValidation=Strict`: unknown fields are an error.
    pub strict: bool,
    /// `dryRun=All`: validate and return, store nothing.
    pub dry_run: bool,
}

/// The parts of `DeleteOptions` the harness honours.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    pub fn from_body(v: &Value) -> Self {
        DeleteOptions {
            grace_period_seconds: v["gracePeriodSeconds"].as_i64(),
            propagation_policy: v["propagationPolicy"].as_str().map(String::from),
            precondition_uid: v["preconditions"]["uid"].as_str().map(String::from),
            precondition_rv: v["preconditions"]["resourceVersion"]
                .as_str()
                .map(String::from),
            dry_run: v["dryRun"].as_array().is_some_and(|a| !a.is_empty()),
        }
    }
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The core/v1 view of an events.k8s.io/v1 Event (the API server stores both as one).
fn core_event_of(e: &Value) -> Value {
    let when = e["eventTime"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .unwrap_or_else(now);
    let count = e["series"]["count"].as_i64().unwrap_or(1);
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": e["metadata"]["name"], "namespace": e["metadata"]["namespace"]},
        "involvedObject": e["regarding"],
        "reason": e["reason"],
        "message": e["note"],
        "type": e["type"],
        "action": e["action"],
        "source": {"component": e["reportingController"]},
        "reportingComponent": e["reportingController"],
        "reportingInstance": e["reportingInstance"],
        "firstTimestamp": when,
        "lastTimestamp": when,
        "count": count,
    })
}

pub fn now_micro() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

const NAME_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn random_suffix() -> String {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[..5]
        .iter()
        .map(|b| NAME_CHARS[*b as usize % NAME_CHARS.len()] as char)
        .collect()
}

fn not_found(rt: &ResourceType, name: &str) -> Error {
    Error::NotFound {
        resource: rt.plural.into(),
        group: rt.group.into(),
        name: name.into(),
    }
}

fn conflict(rt: &ResourceType, name: &str, message: &str) -> Error {
    Error::Conflict {
        resource: rt.qualified(),
        group: rt.group.into(),
        name: name.into(),
        message: message.into(),
    }
}

fn invalid(rt: &ResourceType, name: &str, causes: Vec<Cause>) -> Error {
    Error::Invalid {
        kind: rt.kind.into(),
        group: rt.group.into(),
        name: name.into(),
        causes,
    }
}

const STALE: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

pub struct Registry {
    store: Arc<Store>,
    custom: RwLock<custom::Catalog>,
    cluster_ips: cluster_ip::Allocator,
}

impl Registry {
    pub fn new(store: Arc<Store>) -> Arc<Registry> {
        let r = Registry {
            store,
            custom: RwLock::default(),
            cluster_ips: cluster_ip::Allocator::default(),
        };
        r.refresh_custom();
        Arc::new(r)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> Result<Value> {
        self.store
            .get(&ObjectKey::new(rt, ns, name))
            .map(|o| Self::as_version(rt, o))
            .ok_or_else(|| not_found(rt, name))
    }

    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        ls: &LabelSelector,
        fs: &FieldSelector,
    ) -> (Vec<Value>, u64) {
        let (items, rv) = self.store.list(&rt.qualified(), ns);
        (
            items
                .into_iter()
                .filter(|o| ls.matches(o) && fs.matches(o))
                .map(|o| Self::as_version(rt, o))
                .collect(),
            rv,
        )
    }

    fn default_class(&self) -> Option<String> {
        let (classes, _) = self
            .store
            .list(&resources::STORAGECLASSES.qualified(), None);
        classes
            .iter()
            .find(|c| {
                c["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"]
                    == "true"
            })
            .and_then(|c| c["metadata"]["name"].as_str().map(String::from))
    }

    fn check_identity(rt: &ResourceType, ns: Option<&str>, body: &mut Value) -> Result<()> {
        if !body.is_object() {
            return Err(Error::BadRequest(
                "the body of the request must be a JSON object".into(),
            ));
        }
        let want = rt.api_version();
        match body["apiVersion"].as_str() {
            None | Some("") => body["apiVersion"] = json!(want),
            Some(v) if v != want => {
                return Err(Error::BadRequest(format!(
                    "the API version in the data ({v}) does not match the expected API version ({want})"
                )));
            }
            _ => {}
        }
        match body["kind"].as_str() {
            None | Some("") => body["kind"] = json!(rt.kind),
            Some(k) if k != rt.kind => {
                return Err(Error::BadRequest(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    rt.kind
                )));
            }
            _ => {}
        }
        if !body["metadata"].is_object() {
            body["metadata"] = json!({});
        }
        if rt.namespaced {
            let url_ns = ns.ok_or_else(|| {
                Error::BadRequest("a namespace is required for this resource".into())
            })?;
            match body["metadata"]["namespace"].as_str() {
                Some(n) if !n.is_empty() && n != url_ns => {
                    return Err(Error::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    ));
                }
                _ => body["metadata"]["namespace"] = json!(url_ns),
            }
        } else if let Some(m) = body["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        Ok(())
    }

    pub fn create(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        mut body: Value,
        opts: WriteOptions,
    ) -> Result<Value> {
        Self::check_identity(rt, ns, &mut body)?;
        if body["metadata"]["name"].as_str().is_none_or(str::is_empty) {
            match body["metadata"]["generateName"].as_str() {
                Some(g) if !g.is_empty() => {
                    body["metadata"]["name"] = json!(format!("{g}{}", random_suffix()))
                }
                _ => {
                    return Err(invalid(
                        rt,
                        "",
                        vec![
                            Cause::required("metadata.name")
                                .with_message("name or generateName is required"),
                        ],
                    ));
                }
            }
        }
        let name = body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(n) = ns.filter(|_| rt.namespaced) {
            let nsobj = self
                .store
                .get(&ObjectKey::new(&resources::NAMESPACES, None, n))
                .ok_or_else(|| not_found(&resources::NAMESPACES, n))?;
            if !nsobj["metadata"]["deletionTimestamp"].is_null() {
                return Err(Error::Forbidden(format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {n} because it is being terminated",
                    rt.plural
                )));
            }
        }
        if self.custom().find(rt).is_some_and(|t| t.terminating) {
            return Err(Error::MethodNotAllowed);
        }
        let mut obj = self.normalize(rt, &body, opts.strict)?;
        // The uid comes first: a Job's generated selector and labels are made of it.
        let uid = uuid::Uuid::new_v4().to_string();
        obj["metadata"]["uid"] = json!(uid);
        defaults::on_create(rt, &mut obj, self.default_class().as_deref());
        let _allocating = self.allocate_cluster_ip(rt, &name, &mut obj)?;
        if *rt == resources::CRDS {
            crd::prepare_create(&mut obj);
        } else if !resources::is_builtin(rt) && rt.has_subresource("status") {
            obj.as_object_mut().map(|m| m.remove("status"));
        }
        let causes = validation::validate(rt, &obj);
        if !causes.is_empty() {
            return Err(invalid(rt, &name, causes));
        }
        let meta = obj["metadata"].as_object_mut().expect("metadata object");
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(f);
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        if opts.dry_run {
            return Ok(obj);
        }
        let key = ObjectKey::new(rt, ns.filter(|_| rt.namespaced), &name);
        let out = self.store.mutate(&key, |prev| {
            if prev.is_some() {
                return Err(Error::AlreadyExists {
                    resource: rt.plural.into(),
                    group: rt.group.into(),
                    name: name.clone(),
                });
            }
            Ok(Mutation::Put(obj))
        })?;
        let out = out.unwrap_or_default();
        if *rt == resources::CRDS {
            self.crd_changed(&name);
            return Ok(self.get(rt, None, &name).unwrap_or(out));
        }
        if rt.group == resources::EVENTS_V1.group && rt.kind == "Event" {
            // One store on a real API server: `kubectl describe` must show these too.
            if let Err(e) = self.create(&resources::EVENTS, ns, core_event_of(&out), opts) {
                tracing::debug!(event = %name, error = %e, "events.k8s.io event not mirrored");
            }
        }
        Ok(out)
    }

    /// The shared update path: `f` turns the current object into the desired one.
    fn write<F>(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        sub: Sub,
        opts: WriteOptions,
        f: F,
    ) -> Result<Value>
    where
        F: FnOnce(&Value) -> Result<Value>,
    {
        let ns = ns.filter(|_| rt.namespaced);
        let key = ObjectKey::new(rt, ns, name);
        let ctx = self.update_context(rt, &key);
        let mut dry = None;
        let out = self.store.mutate(&key, |prev| {
            let old = prev.ok_or_else(|| not_found(rt, name))?;
            let mut body = f(old)?;
            Self::check_identity(rt, ns, &mut body)?;
            if body["metadata"]["name"].as_str().is_some_and(|n| n != name) {
                return Err(Error::BadRequest(
                    "the name of the object does not match the name on the URL".into(),
                ));
            }
            body["metadata"]["name"] = json!(name);
            if let Some(rv) = body["metadata"]["resourceVersion"]
                .as_str()
                .filter(|s| !s.is_empty())
                && Some(rv) != old["metadata"]["resourceVersion"].as_str()
            {
                return Err(conflict(rt, name, STALE));
            }
            let mut new = self.normalize(rt, &body, opts.strict)?;
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match old["metadata"].get(field) {
                    Some(v) => new["metadata"][field] = v.clone(),
                    None => {
                        new["metadata"].as_object_mut().map(|m| m.remove(field));
                    }
                }
            }
            let has_status = rt.has_subresource("status");
            match sub {
                Sub::Status => {
                    let status = new["status"].clone();
                    new = old.clone();
                    new["status"] = status;
                }
                Sub::Main if has_status && rt.kind != "Namespace" => match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        new.as_object_mut().map(|m| m.remove("status"));
                    }
                },
                Sub::Main => {}
            }
            let mut causes = validation::validate(rt, &new);
            if sub == Sub::Main && *rt == resources::SERVICES {
                causes.extend(cluster_ip::on_update(old, &mut new));
            }
            if sub == Sub::Main {
                causes.extend(validation::validate_update(rt, old, &new, &ctx));
                if *rt == resources::CRDS {
                    causes.extend(crd::validate_update(old, &new));
                }
            }
            if !old["metadata"]["deletionTimestamp"].is_null() {
                let oldf = old["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if new["metadata"]["finalizers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|f| !oldf.contains(f))
                {
                    causes.push(Cause::forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    ));
                }
            }
            if !causes.is_empty() {
                return Err(invalid(rt, name, causes));
            }
            // A custom object's generation counts every change outside metadata but /status.
            let body_of = |o: &Value| {
                let mut o = o.clone();
                o.as_object_mut().map(|m| m.remove("metadata"));
                o
            };
            let changed = if resources::is_builtin(rt) {
                old.get("spec") != new.get("spec")
            } else {
                sub == Sub::Main && body_of(old) != body_of(&new)
            };
            if changed {
                let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                new["metadata"]["generation"] = json!(g + 1);
            }
            if &new == old {
                return Ok(Mutation::Unchanged);
            }
            if opts.dry_run {
                dry = Some(new);
                return Ok(Mutation::Unchanged);
            }
            if Self::deletion_complete(rt, &new) {
                return Ok(Mutation::Delete);
            }
            Ok(Mutation::Put(new))
        })?;
        self.changed(rt, name, opts.dry_run);
        Ok(dry.or(out).unwrap_or_default())
    }

    fn update_context(&self, rt: &ResourceType, key: &ObjectKey) -> validation::UpdateContext {
        let mut ctx = validation::UpdateContext {
            class_allows_expansion: false,
        };
        if rt.kind == "PersistentVolumeClaim"
            && let Some(pvc) = self.store.get(key)
            && let Some(class) = pvc["spec"]["storageClassName"].as_str()
            && let Some(sc) =
                self.store
                    .get(&ObjectKey::new(&resources::STORAGECLASSES, None, class))
        {
            ctx.class_allows_expansion = sc["allowVolumeExpansion"] == true;
        }
        ctx
    }

    /// An object being deleted goes once its finalizers are gone (and, for a
    /// pod, once the kubelet has confirmed with a zero grace period).
    fn deletion_complete(rt: &ResourceType, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if meta["deletionTimestamp"].is_null() || rt.kind == "Namespace" {
            return false;
        }
        let no_finalizers = meta["finalizers"].as_array().is_none_or(Vec::is_empty);
        let grace_done =
            rt.kind != "Pod" || meta["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) == 0;
        no_finalizers && grace_done
    }

    /// PUT.
    pub fn replace(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        body: Value,
        sub: Sub,
        opts: WriteOptions,
    ) -> Result<Value> {
        self.write(rt, ns, name, sub, opts, |_| Ok(body))
    }

    /// PATCH; an apply patch creates the object when it does not exist.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        pt: PatchType,
        patch: &Value,
        sub: Sub,
        opts: WriteOptions,
    ) -> Result<Value> {
        if pt == PatchType::Apply && sub == Sub::Main && self.get(rt, ns, name).is_err() {
            let mut body = patch.clone();
            if body["metadata"]["name"].is_null() {
                body["metadata"]["name"] = json!(name);
            }
            return self.create(rt, ns, body, opts);
        }
        self.write(rt, ns, name, sub, opts, |old| {
            let mut base = old.clone();
            // An apply or merge patch carrying no resourceVersion is unconditional.
            let merged = patch::apply(pt, &base, patch)?;
            if patch["metadata"]["resourceVersion"].is_null() && pt != PatchType::Json {
                base = merged;
                base["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
                return Ok(base);
            }
            Ok(merged)
        })
    }

    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value> {
        if *rt == resources::CRDS {
            return self.delete_crd(name, opts);
        }
        let key = ObjectKey::new(rt, ns.filter(|_| rt.namespaced), name);
        let mut result = None;
        let out = self.store.mutate(&key, |prev| {
            let old = prev.ok_or_else(|| not_found(rt, name))?;
            let meta = &old["metadata"];
            if opts
                .precondition_uid
                .as_deref()
                .is_some_and(|u| meta["uid"] != u)
            {
                return Err(conflict(
                    rt,
                    name,
                    "Precondition failed: UID in precondition does not match the UID in record",
                ));
            }
            if opts
                .precondition_rv
                .as_deref()
                .is_some_and(|r| meta["resourceVersion"] != r)
            {
                return Err(conflict(rt, name, STALE));
            }
            let mut new = old.clone();
            let deleting = !meta["deletionTimestamp"].is_null();
            if rt.kind == "Namespace" {
                if deleting {
                    return Ok(Mutation::Unchanged);
                }
                new["metadata"]["deletionTimestamp"] = json!(now());
                new["status"]["phase"] = json!("Terminating");
                return Self::commit(opts, new, &mut result);
            }
            if rt.kind == "Pod" {
                let terminal = matches!(
                    old["status"]["phase"].as_str(),
                    Some("Succeeded" | "Failed")
                );
                let scheduled = old["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty());
                let default = old["spec"]["terminationGracePeriodSeconds"]
                    .as_i64()
                    .unwrap_or(30);
                let mut grace = opts.grace_period_seconds.unwrap_or(default).max(0);
                if !scheduled || terminal {
                    grace = 0;
                }
                let current = meta["deletionGracePeriodSeconds"].as_i64();
                if deleting && current.is_some_and(|c| c <= grace) {
                    return Ok(Mutation::Unchanged);
                }
                let at = chrono::Utc::now() + chrono::Duration::seconds(grace);
                new["metadata"]["deletionTimestamp"] =
                    json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            }
            let policy_finalizer = match opts.propagation_policy.as_deref() {
                Some("Foreground") => Some("foregroundDeletion"),
                Some("Orphan") => Some("orphan"),
                // batch/v1 Jobs default to orphaning their pods, as upstream's job strategy.
                None if *rt == resources::JOBS => Some("orphan"),
                _ => None,
            };
            if let Some(f) = policy_finalizer
                && !deleting
            {
                let list = new["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if !list.iter().any(|x| x == f) {
                    let mut list = list;
                    list.push(json!(f));
                    new["metadata"]["finalizers"] = json!(list);
                }
            }
            if new["metadata"]["deletionTimestamp"].is_null() {
                new["metadata"]["deletionTimestamp"] = json!(now());
                new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
            if Self::deletion_complete(rt, &new) {
                if opts.dry_run {
                    result = Some(old.clone());
                    return Ok(Mutation::Unchanged);
                }
                return Ok(Mutation::Delete);
            }
            if new == *old {
                return Ok(Mutation::Unchanged);
            }
            Self::commit(opts, new, &mut result)
        })?;
        self.changed(rt, name, opts.dry_run);
        Ok(result.or(out).unwrap_or_default())
    }

    fn commit(opts: &DeleteOptions, new: Value, result: &mut Option<Value>) -> Result<Mutation> {
        if opts.dry_run {
            *result = Some(new);
            return Ok(Mutation::Unchanged);
        }
        Ok(Mutation::Put(new))
    }

    /// The namespace controller's last step: remove a terminating, empty namespace.
    pub fn finalize_namespace(&self, name: &str) -> Result<()> {
        let key = ObjectKey::new(&resources::NAMESPACES, None, name);
        self.store.mutate(&key, |prev| match prev {
            Some(ns) if !ns["metadata"]["deletionTimestamp"].is_null() => Ok(Mutation::Delete),
            _ => Ok(Mutation::Unchanged),
        })?;
        Ok(())
    }

    /// POST pods/<name>/binding: assigns the pod to the target node once.
    pub fn bind(&self, ns: &str, name: &str, binding: &Value) -> Result<Value> {
        let rt = resources::PODS;
        let node = binding["target"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(String::from);
        let node = node.ok_or_else(|| invalid(&rt, name, vec![Cause::required("target.name")]))?;
        let key = ObjectKey::new(&rt, Some(ns), name);
        self.store.mutate(&key, |prev| {
            let old = prev.ok_or_else(|| not_found(&rt, name))?;
            if let Some(cur) = old["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                return Err(conflict(
                    &rt,
                    name,
                    &format!("pod {name} is already assigned to node \"{cur}\""),
                ));
            }
            if !old["metadata"]["deletionTimestamp"].is_null() {
                return Err(conflict(
                    &rt,
                    name,
                    &format!("pod {name} is being deleted, cannot be assigned to a host"),
                ));
            }
            let mut new = old.clone();
            new["spec"]["nodeName"] = json!(node);
            set_condition(&mut new, "PodScheduled", "True", None, None);
            Ok(Mutation::Put(new))
        })?;
        Ok(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        )
    }

    /// GET <workload>/<name>/scale (statefulsets, deployments, replicasets).
    pub fn get_scale(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value> {
        let sts = self.get(rt, Some(ns), name)?;
        let sel = &sts["spec"]["selector"]["matchLabels"];
        let selector: Vec<String> = sel
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        let m = &sts["metadata"];
        Ok(json!({
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": name, "namespace": ns, "uid": m["uid"], "resourceVersion": m["resourceVersion"],
                "creationTimestamp": m["creationTimestamp"]},
            "spec": {"replicas": sts["spec"]["replicas"]},
            "status": {"replicas": sts["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector.join(",")},
        }))
    }

    /// PUT or PATCH <workload>/<name>/scale with the desired Scale.
    pub fn set_scale(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        scale: &Value,
    ) -> Result<Value> {
        let replicas = scale["spec"]["replicas"].as_i64();
        let replicas = replicas.filter(|r| *r >= 0).ok_or_else(|| {
            invalid(
                rt,
                name,
                vec![Cause::invalid(
                    "spec.replicas",
                    "must be greater than or equal to 0",
                )],
            )
        })?;
        let rv = scale["metadata"]["resourceVersion"].clone();
        self.write(
            rt,
            Some(ns),
            name,
            Sub::Main,
            WriteOptions::default(),
            |old| {
                let mut new = old.clone();
                new["spec"]["replicas"] = json!(replicas);
                new["metadata"]["resourceVersion"] = if rv.is_null() {
                    old["metadata"]["resourceVersion"].clone()
                } else {
                    rv
                };
                Ok(new)
            },
        )?;
        self.get_scale(rt, ns, name)
    }
}

/// Sets (or replaces) a condition of `type` on `obj.status.conditions`,
/// keeping lastTransitionTime when the status is unchanged.
pub fn set_condition(
    obj: &mut Value,
    ty: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) {
    if !obj["status"]["conditions"].is_array() {
        obj["status"]["conditions"] = json!([]);
    }
    let conds = obj["status"]["conditions"].as_array_mut().expect("array");
    let mut c =
        json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": now()});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = message {
        c["message"] = json!(m);
    }
    match conds.iter_mut().find(|x| x["type"] == ty) {
        Some(existing) => {
            if existing["status"] == status {
                c["lastTransitionTime"] = existing["lastTransitionTime"].clone();
            }
            *existing = c;
        }
        None => conds.push(c),
    }
}
