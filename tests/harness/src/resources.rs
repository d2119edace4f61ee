//! The table of kinds the API server serves: group, version, plural, kind,
//! scope, short names and subresources, exactly as upstream publishes them.

/// One served resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub subresources: &'static [&'static str],
    pub categories: &'static [&'static str],
}

impl ResourceType {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` or `plural.group`, the name used in error messages and store keys.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }
}

macro_rules! rt {
    ($group:expr, $version:expr, $plural:expr, $singular:expr, $kind:expr, $ns:expr, [$($short:expr),*], [$($sub:expr),*], [$($cat:expr),*]) => {
        ResourceType {
            group: $group,
            version: $version,
            plural: $plural,
            singular: $singular,
            kind: $kind,
            namespaced: $ns,
            short_names: &[$($short),*],
            subresources: &[$($sub),*],
            categories: &[$($cat),*],
        }
    };
}

pub const NAMESPACES: ResourceType = rt!(
    "",
    "v1",
    "namespaces",
    "namespace",
    "Namespace",
    false,
    ["ns"],
    ["status"],
    []
);
pub const NODES: ResourceType = rt!(
    "",
    "v1",
    "nodes",
    "node",
    "Node",
    false,
    ["no"],
    ["status"],
    []
);
pub const PODS: ResourceType = rt!(
    "",
    "v1",
    "pods",
    "pod",
    "Pod",
    true,
    ["po"],
    ["status", "binding", "log"],
    ["all"]
);
pub const PVCS: ResourceType = rt!(
    "",
    "v1",
    "persistentvolumeclaims",
    "persistentvolumeclaim",
    "PersistentVolumeClaim",
    true,
    ["pvc"],
    ["status"],
    []
);
pub const PVS: ResourceType = rt!(
    "",
    "v1",
    "persistentvolumes",
    "persistentvolume",
    "PersistentVolume",
    false,
    ["pv"],
    ["status"],
    []
);
pub const EVENTS: ResourceType = rt!("", "v1", "events", "event", "Event", true, ["ev"], [], []);
pub const CONFIGMAPS: ResourceType = rt!(
    "",
    "v1",
    "configmaps",
    "configmap",
    "ConfigMap",
    true,
    ["cm"],
    [],
    []
);
pub const SECRETS: ResourceType = rt!("", "v1", "secrets", "secret", "Secret", true, [], [], []);
pub const SERVICEACCOUNTS: ResourceType = rt!(
    "",
    "v1",
    "serviceaccounts",
    "serviceaccount",
    "ServiceAccount",
    true,
    ["sa"],
    [],
    []
);
pub const SERVICES: ResourceType = rt!(
    "",
    "v1",
    "services",
    "service",
    "Service",
    true,
    ["svc"],
    ["status"],
    ["all"]
);
pub const STORAGECLASSES: ResourceType = rt!(
    "storage.k8s.io",
    "v1",
    "storageclasses",
    "storageclass",
    "StorageClass",
    false,
    ["sc"],
    [],
    []
);
pub const CSIDRIVERS: ResourceType = rt!(
    "storage.k8s.io",
    "v1",
    "csidrivers",
    "csidriver",
    "CSIDriver",
    false,
    [],
    [],
    []
);
pub const CSINODES: ResourceType = rt!(
    "storage.k8s.io",
    "v1",
    "csinodes",
    "csinode",
    "CSINode",
    false,
    [],
    [],
    []
);
pub const CSISTORAGECAPACITIES: ResourceType = rt!(
    "storage.k8s.io",
    "v1",
    "csistoragecapacities",
    "csistoragecapacity",
    "CSIStorageCapacity",
    true,
    [],
    [],
    []
);
pub const VOLUMEATTACHMENTS: ResourceType = rt!(
    "storage.k8s.io",
    "v1",
    "volumeattachments",
    "volumeattachment",
    "VolumeAttachment",
    false,
    [],
    ["status"],
    []
);
pub const STATEFULSETS: ResourceType = rt!(
    "apps",
    "v1",
    "statefulsets",
    "statefulset",
    "StatefulSet",
    true,
    ["sts"],
    ["status", "scale"],
    ["all"]
);
pub const DAEMONSETS: ResourceType = rt!(
    "apps",
    "v1",
    "daemonsets",
    "daemonset",
    "DaemonSet",
    true,
    ["ds"],
    ["status"],
    ["all"]
);
pub const DEPLOYMENTS: ResourceType = rt!(
    "apps",
    "v1",
    "deployments",
    "deployment",
    "Deployment",
    true,
    ["deploy"],
    ["status", "scale"],
    ["all"]
);
pub const REPLICASETS: ResourceType = rt!(
    "apps",
    "v1",
    "replicasets",
    "replicaset",
    "ReplicaSet",
    true,
    ["rs"],
    ["status", "scale"],
    ["all"]
);
pub const JOBS: ResourceType = rt!(
    "batch",
    "v1",
    "jobs",
    "job",
    "Job",
    true,
    [],
    ["status"],
    ["all"]
);
pub const CLUSTERROLES: ResourceType = rt!(
    "rbac.authorization.k8s.io",
    "v1",
    "clusterroles",
    "clusterrole",
    "ClusterRole",
    false,
    [],
    [],
    []
);
pub const CLUSTERROLEBINDINGS: ResourceType = rt!(
    "rbac.authorization.k8s.io",
    "v1",
    "clusterrolebindings",
    "clusterrolebinding",
    "ClusterRoleBinding",
    false,
    [],
    [],
    []
);
pub const ROLES: ResourceType = rt!(
    "rbac.authorization.k8s.io",
    "v1",
    "roles",
    "role",
    "Role",
    true,
    [],
    [],
    []
);
pub const ROLEBINDINGS: ResourceType = rt!(
    "rbac.authorization.k8s.io",
    "v1",
    "rolebindings",
    "rolebinding",
    "RoleBinding",
    true,
    [],
    [],
    []
);
pub const EVENTS_V1: ResourceType = rt!(
    "events.k8s.io",
    "v1",
    "events",
    "event",
    "Event",
    true,
    ["ev"],
    [],
    []
);
pub const LEASES: ResourceType = rt!(
    "coordination.k8s.io",
    "v1",
    "leases",
    "lease",
    "Lease",
    true,
    [],
    [],
    []
);

pub const CRDS: ResourceType = rt!(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    "customresourcedefinition",
    "CustomResourceDefinition",
    false,
    ["crd", "crds"],
    ["status"],
    ["api-extensions"]
);

/// Every built-in resource type, in discovery order (custom ones are the registry's).
pub const ALL: &[ResourceType] = &[
    NAMESPACES,
    NODES,
    PODS,
    PVCS,
    PVS,
    EVENTS,
    CONFIGMAPS,
    SECRETS,
    SERVICEACCOUNTS,
    SERVICES,
    STORAGECLASSES,
    CSIDRIVERS,
    CSINODES,
    CSISTORAGECAPACITIES,
    VOLUMEATTACHMENTS,
    STATEFULSETS,
    DAEMONSETS,
    DEPLOYMENTS,
    REPLICASETS,
    JOBS,
    EVENTS_V1,
    LEASES,
    CLUSTERROLES,
    CLUSTERROLEBINDINGS,
    ROLES,
    ROLEBINDINGS,
    CRDS,
];

/// The resource served at `group`/`version`/`plural`.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<ResourceType> {
    ALL.iter()
        .copied()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Whether `rt` is one of the built-in types (not served for a CustomResourceDefinition).
pub fn is_builtin(rt: &ResourceType) -> bool {
    lookup(rt.group, rt.version, rt.plural).is_some()
}

/// The resource for an object's `apiVersion` and `kind`.
pub fn for_kind(api_version: &str, kind: &str) -> Option<ResourceType> {
    let (group, version) = split_api_version(api_version);
    ALL.iter()
        .copied()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// `apps/v1` → (`apps`, `v1`); `v1` → (``, `v1`).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// Groups in discovery order, each with its single served version.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in ALL {
        if !r.group.is_empty() && !out.iter().any(|(g, _)| *g == r.group) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_matches_upstream() {
        const { assert!(!PVS.namespaced && PVCS.namespaced && !STORAGECLASSES.namespaced) };
        const { assert!(CSISTORAGECAPACITIES.namespaced && !VOLUMEATTACHMENTS.namespaced) };
        assert_eq!(for_kind("apps/v1", "StatefulSet"), Some(STATEFULSETS));
        assert_eq!(lookup("", "v1", "pods"), Some(PODS));
    }
}
