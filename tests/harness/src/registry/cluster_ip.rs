//! ClusterIP allocation for Services, as kube-apiserver's service IP allocator does it: free
//! addresses of the service range, the allocated set derived from the stored Services.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};

use crate::error::{Cause, Result};
use crate::resources::{self, ResourceType};

/// Upstream's default `--service-cluster-ip-range`.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
const BASE: u32 = u32::from_be_bytes([10, 96, 0, 0]);
const PREFIX: u32 = 12;
const SIZE: u32 = 1 << (32 - PREFIX);
/// Upstream (KEP-3070) hands out addresses dynamically from above this offset first, leaving
/// the band below (which holds `10.96.0.1`, the `kubernetes` Service's) to static requests.
const STATIC_BAND: u32 = 256;

/// Serialises allocation with the store commit of a create, so two creates never pick one
/// address (the set of addresses in use is read from the store, not kept here).
#[derive(Default)]
pub struct Allocator(Mutex<()>);

/// Whether the range holds `ip` (the network and broadcast addresses excluded).
fn in_range(ip: Ipv4Addr) -> bool {
    let off = u32::from(ip).wrapping_sub(BASE);
    off > 0 && off < SIZE - 1
}

/// Types that get a cluster IP (all but `ExternalName`).
fn needs_ip(obj: &Value) -> bool {
    obj["spec"]["type"].as_str() != Some("ExternalName")
}

/// The addresses the stored Services hold.
pub fn allocated(services: &[Value]) -> BTreeSet<Ipv4Addr> {
    services
        .iter()
        .filter(|s| needs_ip(s))
        .filter_map(|s| s["spec"]["clusterIP"].as_str()?.parse().ok())
        .collect()
}

/// A free address: from a random point of the dynamic band upwards (wrapping), then the
/// static band; none when the range is full. `seed` picks the starting point.
pub fn pick(taken: &BTreeSet<Ipv4Addr>, seed: u32) -> Option<Ipv4Addr> {
    let dynamic = SIZE - 1 - STATIC_BAND;
    let start = seed % dynamic;
    let upper = (0..dynamic).map(|i| STATIC_BAND + (start + i) % dynamic);
    upper
        .chain(1..STATIC_BAND)
        .map(|off| Ipv4Addr::from(BASE + off))
        .find(|ip| !taken.contains(ip))
}

fn alloc_error(obj: &Value, ip: &str, why: &str) -> Cause {
    let ips: Vec<String> = obj["spec"]["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(|s| format!("{s:?}")))
        .collect();
    Cause::invalid(
        "spec.clusterIPs",
        format!(
            "Invalid value: []string{{{}}}: failed to allocate IP {ip}: {why}",
            ips.join(", ")
        ),
    )
}

/// Create-time defaults of a Service's IP fields (`clusterIP`, `clusterIPs`, `ipFamilies`,
/// `ipFamilyPolicy`): a requested address is checked, none gets a free one, `None` stays.
pub fn on_create(obj: &mut Value, taken: &BTreeSet<Ipv4Addr>, seed: u32) -> Vec<Cause> {
    if !needs_ip(obj) {
        return Vec::new();
    }
    let spec = &mut obj["spec"];
    let requested = spec["clusterIP"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or_else(|| spec["clusterIPs"][0].as_str().filter(|s| !s.is_empty()))
        .map(String::from);
    if spec["ipFamilies"].as_array().is_none_or(Vec::is_empty) {
        spec["ipFamilies"] = json!(["IPv4"]);
    }
    if spec["ipFamilyPolicy"].as_str().is_none_or(str::is_empty) {
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    let ip = match requested {
        Some(r) if r == "None" => r,
        Some(r) => {
            spec["clusterIP"] = json!(r);
            spec["clusterIPs"] = json!([r]);
            let Ok(ip) = r.parse::<Ipv4Addr>() else {
                return vec![Cause::invalid(
                    "spec.clusterIPs[0]",
                    format!(
                        "Invalid value: {r:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
                    ),
                )];
            };
            if !in_range(ip) {
                let why = format!(
                    "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {SERVICE_CIDR}"
                );
                return vec![alloc_error(obj, &r, &why)];
            }
            if taken.contains(&ip) {
                return vec![alloc_error(obj, &r, "provided IP is already allocated")];
            }
            r
        }
        None => match pick(taken, seed) {
            Some(ip) => ip.to_string(),
            None => {
                return vec![Cause::invalid(
                    "spec.clusterIPs",
                    "failed to allocate a serviceIP: range is full",
                )];
            }
        },
    };
    obj["spec"]["clusterIP"] = json!(ip);
    obj["spec"]["clusterIPs"] = json!([ip]);
    Vec::new()
}

/// Update of a Service: an update that omits the IP fields keeps the old ones (as upstream
/// fills them in); `spec.clusterIP` may not change once set.
pub fn on_update(old: &Value, new: &mut Value) -> Vec<Cause> {
    if !needs_ip(old) || !needs_ip(new) {
        return Vec::new();
    }
    for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
        let missing = match &new["spec"][f] {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            _ => false,
        };
        if missing && !old["spec"][f].is_null() {
            new["spec"][f] = old["spec"][f].clone();
        }
    }
    let (was, is) = (&old["spec"]["clusterIP"], &new["spec"]["clusterIP"]);
    if was.as_str().is_some_and(|s| !s.is_empty()) && was != is {
        let shown = is.as_str().unwrap_or_default();
        return vec![Cause::invalid(
            "spec.clusterIP",
            format!("Invalid value: {shown:?}: field is immutable"),
        )];
    }
    Vec::new()
}

impl super::Registry {
    /// For a Service create: locks allocation (the guard is held until the create has been
    /// stored) and fills its IP fields; `None` for any other resource.
    pub(super) fn allocate_cluster_ip(
        &self,
        rt: &ResourceType,
        name: &str,
        obj: &mut Value,
    ) -> Result<Option<MutexGuard<'_, ()>>> {
        if *rt != resources::SERVICES {
            return Ok(None);
        }
        let guard = self.cluster_ips.0.lock().unwrap_or_else(|p| p.into_inner());
        let (services, _) = self.store.list(&rt.qualified(), None);
        let seed = u32::from_be_bytes(
            uuid::Uuid::new_v4().as_bytes()[..4]
                .try_into()
                .unwrap_or_default(),
        );
        let causes = on_create(obj, &allocated(&services), seed);
        if !causes.is_empty() {
            return Err(super::invalid(rt, name, causes));
        }
        if let Some(ip) = obj["spec"]["clusterIP"].as_str() {
            tracing::debug!(service = %name, cluster_ip = %ip, "cluster IP allocated");
        }
        Ok(Some(guard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ip: Option<&str>) -> Value {
        let mut s = json!({"metadata": {"name": "web"}, "spec": {"type": "ClusterIP",
            "ports": [{"port": 80}]}});
        if let Some(ip) = ip {
            s["spec"]["clusterIP"] = json!(ip);
        }
        s
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn a_service_without_an_address_gets_a_free_one_of_the_dynamic_band() {
        let mut s = svc(None);
        assert!(on_create(&mut s, &BTreeSet::new(), 0).is_empty());
        assert_eq!(s["spec"]["clusterIP"], "10.96.1.0");
        assert_eq!(s["spec"]["clusterIPs"], json!(["10.96.1.0"]));
        assert_eq!(s["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(s["spec"]["ipFamilyPolicy"], "SingleStack");
        // Taken addresses are skipped; the search wraps round the band, then the static band.
        let taken: BTreeSet<_> = [ip("10.96.1.0"), ip("10.96.1.1")].into();
        assert_eq!(pick(&taken, 0), Some(ip("10.96.1.2")));
        assert_eq!(
            pick(&BTreeSet::new(), SIZE - 2 - STATIC_BAND),
            Some(ip("10.111.255.254"))
        );
        let full: BTreeSet<_> = (STATIC_BAND..SIZE - 1)
            .map(|o| Ipv4Addr::from(BASE + o))
            .collect();
        assert_eq!(pick(&full, 7), Some(ip("10.96.0.1")));
        let all: BTreeSet<_> = (1..SIZE - 1).map(|o| Ipv4Addr::from(BASE + o)).collect();
        assert_eq!(pick(&all, 7), None);
        let mut s = svc(None);
        assert_eq!(on_create(&mut s, &all, 7)[0].field, "spec.clusterIPs");
    }

    #[test]
    fn a_requested_address_must_be_free_and_in_range() {
        let taken: BTreeSet<_> = [ip("10.96.0.10")].into();
        let mut ok = svc(Some("10.96.0.11"));
        assert!(on_create(&mut ok, &taken, 0).is_empty());
        assert_eq!(ok["spec"]["clusterIPs"], json!(["10.96.0.11"]));
        let mut dup = svc(Some("10.96.0.10"));
        let c = on_create(&mut dup, &taken, 0);
        assert_eq!(c[0].field, "spec.clusterIPs");
        assert_eq!(
            c[0].message,
            "Invalid value: []string{\"10.96.0.10\"}: failed to allocate IP 10.96.0.10: provided IP is already allocated"
        );
        let mut out = svc(Some("10.0.0.1"));
        let c = on_create(&mut out, &taken, 0);
        assert!(
            c[0].message.ends_with("the provided IP (10.0.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/12"),
            "{}",
            c[0].message
        );
        for edge in ["10.96.0.0", "10.111.255.255", "10.112.0.1"] {
            assert_eq!(
                on_create(&mut svc(Some(edge)), &taken, 0).len(),
                1,
                "{edge}"
            );
        }
        assert_eq!(
            on_create(&mut svc(Some("ten")), &taken, 0)[0].field,
            "spec.clusterIPs[0]"
        );
        // Headless stays headless; ExternalName gets nothing.
        let mut headless = svc(Some("None"));
        assert!(on_create(&mut headless, &taken, 0).is_empty());
        assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
        let mut ext = json!({"spec": {"type": "ExternalName", "externalName": "example.com"}});
        assert!(on_create(&mut ext, &taken, 0).is_empty());
        assert!(ext["spec"]["clusterIP"].is_null());
    }

    #[test]
    fn the_address_is_immutable_and_an_update_omitting_it_keeps_it() {
        let mut old = svc(None);
        on_create(&mut old, &BTreeSet::new(), 5);
        let mut omitted = svc(None);
        assert!(on_update(&old, &mut omitted).is_empty());
        assert_eq!(omitted["spec"], old["spec"]);
        let mut changed = svc(Some("10.96.0.99"));
        let c = on_update(&old, &mut changed);
        assert_eq!(c[0].field, "spec.clusterIP");
        assert_eq!(
            c[0].message,
            "Invalid value: \"10.96.0.99\": field is immutable"
        );
    }

    /// Through the registry on a persisted store: an address stays taken across a restart
    /// (a new registry on the reopened store) and is free again once its Service is deleted.
    #[test]
    fn allocation_survives_a_restart_and_deletion_frees_the_address() {
        use crate::registry::{DeleteOptions, Registry, Sub, WriteOptions};
        use crate::store::Store;
        let dir = tempfile::tempdir().unwrap();
        let create = |r: &Registry, name: &str, ip: Option<&str>| {
            let mut body = svc(ip);
            body["metadata"]["name"] = json!(name);
            r.create(
                &resources::SERVICES,
                Some("default"),
                body,
                WriteOptions::default(),
            )
        };
        let first = {
            let r = Registry::new(Store::open(dir.path(), 100).unwrap());
            let ns = json!({"metadata": {"name": "default"}});
            r.create(&resources::NAMESPACES, None, ns, WriteOptions::default())
                .unwrap();
            let a = create(&r, "a", None).unwrap();
            let b = create(&r, "b", None).unwrap();
            assert_ne!(a["spec"]["clusterIP"], b["spec"]["clusterIP"]);
            a["spec"]["clusterIP"].as_str().unwrap().to_string()
        };
        let r = Registry::new(Store::open(dir.path(), 100).unwrap());
        let err = create(&r, "c", Some(&first)).unwrap_err().to_string();
        assert!(err.contains("provided IP is already allocated"), "{err}");
        // An update omitting the address keeps it; changing it is refused.
        let put = |ip: Option<&str>| {
            let mut body = svc(ip);
            body["metadata"]["name"] = json!("a");
            r.replace(
                &resources::SERVICES,
                Some("default"),
                "a",
                body,
                Sub::Main,
                WriteOptions::default(),
            )
        };
        assert_eq!(put(None).unwrap()["spec"]["clusterIP"], first.as_str());
        let err = put(Some("10.96.0.200")).unwrap_err().to_string();
        assert!(
            err.contains("spec.clusterIP: Invalid value: \"10.96.0.200\": field is immutable"),
            "{err}"
        );
        r.delete(
            &resources::SERVICES,
            Some("default"),
            "a",
            &DeleteOptions::default(),
        )
        .unwrap();
        let c = create(&r, "c", Some(&first)).unwrap();
        assert_eq!(c["spec"]["clusterIP"], first.as_str());
    }

    #[test]
    fn the_allocated_set_is_what_the_stored_services_hold() {
        let stored = [
            svc(Some("10.96.0.1")),
            svc(Some("None")),
            json!({"spec": {"type": "ExternalName", "clusterIP": "10.96.0.7"}}),
            svc(Some("10.96.3.4")),
        ];
        assert_eq!(
            allocated(&stored),
            [ip("10.96.0.1"), ip("10.96.3.4")].into()
        );
    }
}
