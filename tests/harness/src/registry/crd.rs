//! CustomResourceDefinitions as apiextensions-apiserver handles them: defaults,
//! validation, and the naming, establishing and instance-cleanup steps, run in-line.

use serde_json::{Value, json};

use super::custom::condition_true;
use super::validation::{is_dns_label, is_dns_subdomain};
use super::{DeleteOptions, Registry, invalid, not_found, now};
use crate::error::{Cause, Result};
use crate::resources::{self, ResourceType};
use crate::store::{Mutation, ObjectKey};

/// The finalizer that holds a deleted CRD until its objects are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

fn is_dns1035_label(s: &str) -> bool {
    is_dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Decode-time defaults (SetDefaults_CustomResourceDefinition): singular, listKind,
/// conversion strategy; an absent `served`/`storage` decodes as false.
pub fn set_defaults(crd: &mut Value) {
    let names = &mut crd["spec"]["names"];
    if let Some(kind) = names["kind"].as_str().map(String::from) {
        if names["singular"].as_str().is_none_or(str::is_empty) {
            names["singular"] = json!(kind.to_lowercase());
        }
        if names["listKind"].as_str().is_none_or(str::is_empty) {
            names["listKind"] = json!(format!("{kind}List"));
        }
    }
    if crd["spec"]["conversion"].is_null() {
        crd["spec"]["conversion"] = json!({"strategy": "None"});
    }
    for v in crd["spec"]["versions"].as_array_mut().into_iter().flatten() {
        for f in ["served", "storage"] {
            if v.is_object() && v[f].is_null() {
                v[f] = json!(false);
            }
        }
    }
}

fn str_at<'a>(v: &'a Value, f: &str) -> &'a str {
    v[f].as_str().unwrap_or_default()
}

fn check_names(names: &Value, path: &str, causes: &mut Vec<Cause>) {
    for f in ["plural", "singular", "kind", "listKind"] {
        let v = str_at(names, f);
        if v.is_empty() {
            causes.push(Cause::required(format!("{path}.{f}")));
            continue;
        }
        if !is_dns1035_label(&v.to_lowercase()) {
            causes.push(Cause::invalid(
                format!("{path}.{f}"),
                format!("Invalid value: \"{v}\": a DNS-1035 label must consist of lower case alphanumeric characters or '-'"),
            ));
        }
    }
    if !str_at(names, "kind").is_empty() && names["kind"] == names["listKind"] {
        causes.push(Cause::invalid(
            format!("{path}.listKind"),
            "kind and listKind may not be the same",
        ));
    }
}

fn check_versions(spec: &Value, causes: &mut Vec<Cause>) {
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    let mut seen = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let p = format!("spec.versions[{i}]");
        let name = str_at(v, "name");
        if !is_dns1035_label(name) {
            causes.push(Cause::invalid(
                format!("{p}.name"),
                format!("Invalid value: \"{name}\": a DNS-1035 label must consist of lower case alphanumeric characters or '-'"),
            ));
        }
        if seen.contains(&name) {
            causes.push(Cause::invalid(
                "spec.versions",
                "must contain unique version names",
            ));
        }
        seen.push(name);
        let schema = &v["schema"]["openAPIV3Schema"];
        if !schema.is_object() {
            causes.push(
                Cause::required(format!("{p}.schema.openAPIV3Schema"))
                    .with_message("Required value: schemas are required"),
            );
        } else if schema["type"] != "object" {
            let field = format!("{p}.schema.openAPIV3Schema.type");
            causes.push(match schema["type"].as_str() {
                None | Some("") => Cause::required(field)
                    .with_message("Required value: must not be empty at the root"),
                Some(t) => Cause::invalid(
                    field,
                    format!("Unsupported value: \"{t}\": supported values: \"object\""),
                ),
            });
        }
    }
    if versions.iter().filter(|v| v["storage"] == true).count() != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    }
}

/// ValidateCustomResourceDefinition, for the fields the harness uses.
pub fn validate(crd: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = &crd["spec"];
    let (group, plural) = (str_at(spec, "group"), str_at(&spec["names"], "plural"));
    let name = str_at(&crd["metadata"], "name");
    if name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    } else if !is_dns_subdomain(group) || !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            format!("Invalid value: \"{group}\": should be a domain with at least one dot"),
        ));
    }
    match str_at(spec, "scope") {
        "" => causes.push(Cause::required("spec.scope")),
        "Cluster" | "Namespaced" => {}
        s => causes.push(Cause {
            field: "spec.scope".into(),
            reason: "FieldValueNotSupported".into(),
            message: format!(
                "Unsupported value: \"{s}\": supported values: \"Cluster\", \"Namespaced\""
            ),
        }),
    }
    check_names(&spec["names"], "spec.names", &mut causes);
    check_versions(spec, &mut causes);
    causes
}

/// ValidateCustomResourceDefinitionUpdate's immutable fields.
pub fn validate_update(old: &Value, new: &Value) -> Vec<Cause> {
    let mut fields = vec![
        ("spec.group", "group", ""),
        ("spec.names.plural", "names", "plural"),
    ];
    if condition_true(old, "Established") {
        fields.push(("spec.scope", "scope", ""));
        fields.push(("spec.names.kind", "names", "kind"));
    }
    fields
        .into_iter()
        .filter_map(|(f, a, b)| {
            let (o, n) = (&old["spec"][a], &new["spec"][a]);
            let (o, n) = if b.is_empty() { (o, n) } else { (&o[b], &n[b]) };
            (o != n).then(|| Cause::invalid(f, format!("Invalid value: {n}: field is immutable")))
        })
        .collect()
}

/// PrepareForCreate: a fresh status listing the storage version.
pub fn prepare_create(crd: &mut Value) {
    let stored: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == true)
        .map(|v| v["name"].clone())
        .collect();
    crd["status"] = json!({"storedVersions": stored, "acceptedNames": {"plural": "", "kind": ""}});
}

/// PrepareForUpdate: a new storage version joins `status.storedVersions`.
fn record_storage_version(crd: &mut Value) {
    let storage = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["storage"] == true)
        .map(|v| v["name"].clone());
    let Some(storage) = storage else { return };
    if !crd["status"]["storedVersions"].is_array() {
        crd["status"]["storedVersions"] = json!([]);
    }
    let stored = crd["status"]["storedVersions"]
        .as_array_mut()
        .expect("array");
    if !stored.contains(&storage) {
        stored.push(storage);
    }
}

/// Sets condition `ty` on a CRD, keeping lastTransitionTime while the status holds.
fn set_condition(crd: &mut Value, ty: &str, status: &str, reason: &str, message: &str) {
    if !crd["status"]["conditions"].is_array() {
        crd["status"]["conditions"] = json!([]);
    }
    let conds = crd["status"]["conditions"].as_array_mut().expect("array");
    let mut c = json!({"type": ty, "status": status, "lastTransitionTime": now(),
        "reason": reason, "message": message});
    match conds.iter_mut().find(|x| x["type"] == ty) {
        Some(old) => {
            if old["status"] == status {
                c["lastTransitionTime"] = old["lastTransitionTime"].clone();
            }
            *old = c;
        }
        None => conds.push(c),
    }
}

/// The naming controller: accept the requested names unless another CRD of the
/// group holds them, and establish the CRD once its names are accepted.
fn accept_names(crd: &mut Value, others: &[Value]) {
    let group = &crd["spec"]["group"];
    let (mut resources, mut kinds) = (Vec::new(), Vec::new());
    for o in others.iter().filter(|o| &o["spec"]["group"] == group) {
        let n = &o["status"]["acceptedNames"];
        resources.extend([n["plural"].clone(), n["singular"].clone()]);
        resources.extend(n["shortNames"].as_array().cloned().unwrap_or_default());
        kinds.extend([n["kind"].clone(), n["listKind"].clone()]);
    }
    let want = crd["spec"]["names"].clone();
    let have = crd["status"]["acceptedNames"].clone();
    let mut accepted = have.clone();
    let mut conflict = None;
    for (f, used, reason) in [
        ("plural", &resources, "PluralConflict"),
        ("singular", &resources, "SingularConflict"),
        ("kind", &kinds, "KindConflict"),
        ("listKind", &kinds, "ListKindConflict"),
    ] {
        if want[f] != have[f] && !want[f].is_null() && used.contains(&want[f]) {
            conflict = Some((reason, format!("{} is already in use", want[f])));
        } else {
            accepted[f] = want[f].clone();
        }
    }
    let short = want["shortNames"].as_array().cloned().unwrap_or_default();
    if short.iter().any(|s| resources.contains(s)) {
        conflict = Some((
            "ShortNamesConflict",
            "a short name is already in use".into(),
        ));
    } else {
        accepted["shortNames"] = want["shortNames"].clone();
    }
    accepted["categories"] = want["categories"].clone();
    if let Some(m) = accepted.as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    crd["status"]["acceptedNames"] = accepted;
    match conflict {
        Some((reason, msg)) => set_condition(crd, "NamesAccepted", "False", reason, &msg),
        None => set_condition(
            crd,
            "NamesAccepted",
            "True",
            "NoConflicts",
            "no conflicts found",
        ),
    }
    if !condition_true(crd, "Established") {
        if condition_true(crd, "NamesAccepted") {
            let m = "the initial names have been accepted";
            set_condition(crd, "Established", "True", "InitialNamesAccepted", m);
        } else {
            let m = "not all names are accepted";
            set_condition(crd, "Established", "False", "NotAccepted", m);
        }
    }
}

fn crd_key(name: &str) -> ObjectKey {
    ObjectKey::new(&resources::CRDS, None, name)
}

impl Registry {
    /// Decodes `body` as `rt`: typed kinds through k8s-openapi, custom ones by their schema.
    pub(super) fn normalize(&self, rt: &ResourceType, body: &Value, strict: bool) -> Result<Value> {
        if *rt == resources::CRDS {
            Self::normalize_crd(body, strict)
        } else if resources::is_builtin(rt) {
            super::typed::normalize(rt, body, strict)
        } else {
            self.normalize_custom(rt, body, strict)
        }
    }

    /// After a committed write: CRDs and their objects have follow-up steps.
    pub(super) fn changed(&self, rt: &ResourceType, name: &str, dry_run: bool) {
        if dry_run || resources::is_builtin(rt) && *rt != resources::CRDS {
            return;
        }
        if *rt == resources::CRDS {
            self.crd_changed(name);
        } else {
            self.custom_changed(rt);
        }
    }

    /// Rebuilds the catalog of served custom types from the stored CRDs.
    pub(super) fn refresh_custom(&self) {
        let (crds, _) = self.store.list(&resources::CRDS.qualified(), None);
        self.custom_mut().rebuild(&crds);
    }

    /// After a CRD changed: names and conditions, then the served types.
    pub(super) fn crd_changed(&self, name: &str) {
        let (all, _) = self.store.list(&resources::CRDS.qualified(), None);
        let others: Vec<Value> = all
            .into_iter()
            .filter(|c| c["metadata"]["name"] != name)
            .collect();
        self.update_crd(name, "names", |old| {
            let mut new = old.clone();
            accept_names(&mut new, &others);
            record_storage_version(&mut new);
            Some(new)
        });
    }

    /// Rewrites the stored CRD `name` with `f` (None: delete it), then rebuilds the catalog.
    fn update_crd(&self, name: &str, step: &str, f: impl FnOnce(&Value) -> Option<Value>) {
        let r = self.store.mutate(&crd_key(name), |prev| {
            Ok(match prev.map(|old| (old, f(old))) {
                None => Mutation::Unchanged,
                Some((_, None)) => Mutation::Delete,
                Some((old, Some(new))) if new == *old => Mutation::Unchanged,
                Some((_, Some(new))) => Mutation::Put(new),
            })
        });
        if let Err(e) = r {
            tracing::warn!(crd = %name, step, error = %e, "CRD not updated");
        }
        self.refresh_custom();
    }

    /// DELETE of a CRD: mark it Terminating with the cleanup finalizer, then delete its objects.
    pub(super) fn delete_crd(&self, name: &str, opts: &DeleteOptions) -> Result<Value> {
        let rt = resources::CRDS;
        let mut result = None;
        let out = self.store.mutate(&crd_key(name), |prev| {
            let old = prev.ok_or_else(|| not_found(&rt, name))?;
            if let Some(uid) = &opts.precondition_uid
                && old["metadata"]["uid"].as_str() != Some(uid)
            {
                return Err(super::conflict(&rt, name, "Precondition failed: UID in precondition does not match the UID in record"));
            }
            let mut new = old.clone();
            if new["metadata"]["deletionTimestamp"].is_null() {
                new["metadata"]["deletionTimestamp"] = json!(now());
                new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
            let fins = new["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
            if !fins.iter().any(|f| f == CLEANUP_FINALIZER) {
                let mut fins = fins;
                fins.push(json!(CLEANUP_FINALIZER));
                new["metadata"]["finalizers"] = json!(fins);
            }
            let m = "CustomResourceDefinition marked for deletion; CustomResource deletion will begin soon";
            set_condition(&mut new, "Terminating", "True", "InstanceDeletionPending", m);
            if opts.dry_run {
                result = Some(new);
                return Ok(Mutation::Unchanged);
            }
            Ok(Mutation::Put(new))
        })?;
        if let Some(r) = result {
            return Ok(r);
        }
        self.refresh_custom();
        self.delete_instances(name);
        Ok(self.store.get(&crd_key(name)).or(out).unwrap_or_default())
    }

    /// The CRD finalizer: delete every object of a terminating CRD (their own finalizers
    /// may hold them), and release the CRD once none is left.
    fn delete_instances(&self, name: &str) {
        let Some(crd) = self.store.get(&crd_key(name)) else {
            return;
        };
        let types: Vec<ResourceType> = self
            .custom()
            .types
            .iter()
            .filter(|t| t.crd == name)
            .map(|t| t.rt)
            .collect();
        if let Some(rt) = types.first() {
            let (items, _) = self.store.list(&rt.qualified(), None);
            for o in items {
                let ns = o["metadata"]["namespace"].as_str();
                let n = o["metadata"]["name"].as_str().unwrap_or_default();
                if let Err(e) = self.delete(rt, ns, n, &DeleteOptions::default())
                    && !e.is_not_found()
                {
                    tracing::warn!(crd = %name, object = %n, error = %e, "custom object not deleted");
                }
            }
        }
        let res = format!(
            "{}.{}",
            crd["spec"]["names"]["plural"].as_str().unwrap_or_default(),
            crd["spec"]["group"].as_str().unwrap_or_default()
        );
        self.finish_crd(name, &res);
    }

    /// Removes the cleanup finalizer of a terminating CRD once `res` holds no objects.
    fn finish_crd(&self, name: &str, res: &str) {
        let remaining = self.store.list(res, None).0.len();
        self.update_crd(name, "cleanup", |old| {
            let mut new = old.clone();
            if old["metadata"]["deletionTimestamp"].is_null() {
                return Some(new);
            }
            if remaining > 0 {
                let m = "CustomResource deletion is in progress";
                set_condition(
                    &mut new,
                    "Terminating",
                    "True",
                    "InstanceDeletionInProgress",
                    m,
                );
                return Some(new);
            }
            let m = "removed all instances";
            set_condition(
                &mut new,
                "Terminating",
                "True",
                "InstanceDeletionCompleted",
                m,
            );
            if let Some(f) = new["metadata"]["finalizers"].as_array_mut() {
                f.retain(|x| x != CLEANUP_FINALIZER);
            }
            (!Self::deletion_complete(&resources::CRDS, &new)).then_some(new)
        });
    }

    /// After a custom object changed: a terminating CRD whose last object went away is released.
    pub(super) fn custom_changed(&self, rt: &ResourceType) {
        let crd = self
            .custom()
            .find(rt)
            .filter(|t| t.terminating)
            .map(|t| t.crd.clone());
        if let Some(name) = crd {
            self.finish_crd(&name, &rt.qualified());
        }
    }

    /// Decodes a custom object: metadata as ObjectMeta, fields outside the schema pruned
    /// (an error under strict validation), schema defaults applied, then the schema checked.
    pub(super) fn normalize_custom(
        &self,
        rt: &ResourceType,
        body: &Value,
        strict: bool,
    ) -> Result<Value> {
        let schema = self
            .custom()
            .find(rt)
            .map(|t| t.schema.clone())
            .unwrap_or_default();
        let mut obj = body.clone();
        let meta = super::typed::object_meta(&body["metadata"], strict)?;
        let mut unknown = Vec::new();
        super::schema::prune(&mut obj, &schema, "", &mut unknown);
        if strict && !unknown.is_empty() {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            return Err(crate::Error::BadRequest(format!(
                "strict decoding error: {}",
                list.join(", ")
            )));
        }
        obj["metadata"] = meta;
        super::schema::apply_defaults(&mut obj, &schema, true);
        let mut causes = Vec::new();
        super::schema::validate(&obj, &schema, "", &mut causes);
        if !causes.is_empty() {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            return Err(invalid(rt, name, causes));
        }
        Ok(obj)
    }

    /// Decodes a CRD: defaults, validation (before the typed decode, so that a missing
    /// field is a 422 naming it, as upstream), then the typed round trip.
    pub(super) fn normalize_crd(body: &Value, strict: bool) -> Result<Value> {
        let mut crd = body.clone();
        set_defaults(&mut crd);
        let causes = validate(&crd);
        if !causes.is_empty() {
            let name = crd["metadata"]["name"].as_str().unwrap_or_default();
            return Err(invalid(&resources::CRDS, name, causes));
        }
        super::typed::normalize(&resources::CRDS, &crd, strict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com",
            "scope": "Namespaced", "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object"}}}]}})
    }

    #[test]
    fn defaults_then_valid() {
        let mut c = crd();
        set_defaults(&mut c);
        assert_eq!(c["spec"]["names"]["singular"], "widget");
        assert_eq!(c["spec"]["names"]["listKind"], "WidgetList");
        assert!(validate(&c).is_empty(), "{:?}", validate(&c));
    }

    #[test]
    fn invalid_fields_are_named() {
        let mut c = crd();
        c["spec"]["scope"] = json!("Global");
        c["spec"]["versions"][0]["storage"] = json!(false);
        c["spec"]["versions"][0]["schema"] = Value::Null;
        c["metadata"]["name"] = json!("widget.example.com");
        set_defaults(&mut c);
        let fields: Vec<String> = validate(&c).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            vec![
                "metadata.name",
                "spec.scope",
                "spec.versions[0].schema.openAPIV3Schema",
                "spec.versions"
            ]
        );
    }

    #[test]
    fn a_new_storage_version_is_recorded() {
        let mut c = crd();
        prepare_create(&mut c);
        c["spec"]["versions"][0]["storage"] = json!(false);
        c["spec"]["versions"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "v2", "served": true, "storage": true}));
        record_storage_version(&mut c);
        record_storage_version(&mut c);
        assert_eq!(c["status"]["storedVersions"], json!(["v1", "v2"]));
    }

    #[test]
    fn names_conflicting_with_another_crd_are_not_accepted() {
        let mut a = crd();
        set_defaults(&mut a);
        prepare_create(&mut a);
        accept_names(&mut a, &[]);
        assert!(condition_true(&a, "Established"));
        assert_eq!(a["status"]["acceptedNames"]["plural"], "widgets");
        let mut b = crd();
        b["metadata"]["name"] = json!("gadgets.example.com");
        b["spec"]["names"] = json!({"plural": "gadgets", "kind": "Widget"});
        set_defaults(&mut b);
        prepare_create(&mut b);
        accept_names(&mut b, &[a]);
        assert!(!condition_true(&b, "NamesAccepted"));
        assert!(!condition_true(&b, "Established"));
    }
}
