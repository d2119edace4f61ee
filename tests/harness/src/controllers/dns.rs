//! Cluster DNS for the nodes: each node's `/etc/hosts` (`DIR/nodes/<node>/hosts`) names the
//! node, every ClusterIP Service's address and every headless Service's pods (`NAME.NS.svc`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Pod, Service};

use crate::client::Client;
use crate::controllers::workload::{is_ready, is_terminal};
use crate::node::{HOSTS_FILE, Nodes};

/// The cluster domain of the names served (`NAME.NS.svc.cluster.local`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// One name's record: its addresses, in a stable order.
pub type Records = Vec<(String, Vec<String>)>;

/// A node's hosts file: localhost, the node's own name, then `records`. Each address of a
/// name is a line of its own with every alias (glibc's files backend answers all of them).
pub fn render(node: &str, address: &str, records: &[(String, Vec<String>)]) -> String {
    let mut out = format!(
        "# the harness's node {node} (cairn-harness; rewritten on every Service or Pod change)\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{node}\n"
    );
    for (fqdn, addrs) in records {
        let aliases = aliases(fqdn);
        for a in addrs {
            out.push_str(&format!("{a}\t{fqdn} {aliases}\n"));
        }
    }
    out
}

/// `NAME.NS.svc.cluster.local` also answers as `NAME.NS.svc` and `NAME.NS`, as a pod's
/// search path (`NS.svc.cluster.local svc.cluster.local cluster.local`) would resolve them.
fn aliases(fqdn: &str) -> String {
    let short = fqdn
        .strip_suffix(&format!(".{CLUSTER_DOMAIN}"))
        .unwrap_or(fqdn);
    let bare = short.strip_suffix(".svc").unwrap_or(short);
    format!("{short} {bare}")
}

/// The pods a Service's selector picks as its endpoints, as the endpoints controller lists
/// them: live pods of its namespace with an address, ready ones only unless the Service
/// publishes not-ready addresses. None for a Service without a selector.
pub fn endpoint_pods<'a>(svc: &Service, pods: &'a [Pod]) -> Vec<&'a Pod> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
    let not_ready = spec.publish_not_ready_addresses == Some(true);
    pods.iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !is_terminal(p))
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter(|p| not_ready || is_ready(p))
        .filter(|p| pod_ip(p).is_some())
        .collect()
}

/// A pod's address, if it has one.
pub fn pod_ip(p: &Pod) -> Option<&str> {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty())
}

/// The address of a Service the service proxy routes (a ClusterIP of any type but
/// ExternalName; not a headless Service's `None`).
pub fn cluster_ip(svc: &Service) -> Option<&str> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
}

/// The records: a ClusterIP Service's name answers its address; a headless Service's name
/// (with a selector) answers its endpoint pods' addresses.
pub fn records(services: &[Service], pods: &[Pod]) -> Records {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let fqdn = format!("{name}.{ns}.svc.{CLUSTER_DOMAIN}");
        if let Some(ip) = cluster_ip(svc) {
            out.insert(fqdn, vec![ip.to_string()]);
            continue;
        }
        if spec.cluster_ip.as_deref() != Some("None") {
            continue;
        }
        let mut addrs: Vec<String> = endpoint_pods(svc, pods)
            .into_iter()
            .filter_map(|p| pod_ip(p).map(String::from))
            .collect();
        addrs.sort();
        addrs.dedup();
        if !addrs.is_empty() {
            out.insert(fqdn, addrs);
        }
    }
    out.into_iter().collect()
}

/// Keeps every node's hosts file current.
pub struct DnsController {
    client: Client,
    /// (node, its address, its hosts file), written in place: the file is bind-mounted
    /// in the node.
    nodes: Vec<(String, String, PathBuf)>,
}

impl DnsController {
    pub fn new(client: Client, nodes: &Nodes) -> Self {
        let nodes = nodes
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    n.address.to_string(),
                    n.dir.join(HOSTS_FILE),
                )
            })
            .collect();
        DnsController { client, nodes }
    }

    pub fn reconcile(&self) {
        let recs = records(
            &self.client.list::<Service>(None),
            &self.client.list::<Pod>(None),
        );
        for (node, address, file) in &self.nodes {
            let text = render(node, address, &recs);
            if std::fs::read_to_string(file).ok().as_deref() == Some(text.as_str()) {
                continue;
            }
            // In place (truncate and write), never renamed: a bind mount holds the inode.
            if let Err(e) = std::fs::write(file, &text) {
                tracing::warn!(node = %node, file = %file.display(), error = %e, "hosts file not written");
            } else {
                tracing::debug!(node = %node, records = recs.len(), "hosts file updated");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, labels: serde_json::Value, ip: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "cairn-system", "labels": labels},
            "status": {"phase": "Running", "podIP": ip,
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    fn svc(name: &str, headless: bool, not_ready: bool) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "cairn-system"},
            "spec": {"clusterIP": if headless {"None"} else {"10.0.0.1"},
                "publishNotReadyAddresses": not_ready, "selector": {"app": "s"}}
        }))
        .unwrap()
    }

    #[test]
    fn headless_services_name_their_pods() {
        let pods = [
            pod("a", json!({"app": "s"}), "10.213.0.12", true),
            pod("b", json!({"app": "s"}), "10.213.0.11", false),
            pod("c", json!({"app": "other"}), "10.213.0.13", true),
        ];
        let all = records(&[svc("st", true, true)], &pods);
        assert_eq!(
            all,
            vec![(
                "st.cairn-system.svc.cluster.local".to_string(),
                vec!["10.213.0.11".to_string(), "10.213.0.12".into()]
            )]
        );
        let ready_only = records(&[svc("st", true, false)], &pods);
        assert_eq!(ready_only[0].1, vec!["10.213.0.12".to_string()]);
        // A ClusterIP Service's name answers its address (one record), whatever its pods.
        assert_eq!(
            records(&[svc("web", false, true)], &pods),
            vec![(
                "web.cairn-system.svc.cluster.local".to_string(),
                vec!["10.0.0.1".to_string()]
            )]
        );
        assert_eq!(
            aliases("st.cairn-system.svc.cluster.local"),
            "st.cairn-system.svc st.cairn-system"
        );
    }
}
