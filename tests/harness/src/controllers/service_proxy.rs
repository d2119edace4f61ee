//! The service proxy (what kube-proxy does): in each node's network namespace an nftables
//! table `ip cairn-proxy` that DNATs every ClusterIP Service's ports to its endpoint pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::client::Client;
use crate::controllers::dns::{cluster_ip, endpoint_pods, pod_ip};
use crate::node::{Namespaces, Nodes};

/// The table the proxy owns in each node's network namespace.
pub const TABLE: &str = "cairn-proxy";

/// The longest comment a rule gets (nft's limit is 127 bytes).
const COMMENT_MAX: usize = 120;

/// One Service port's rule: `ip:port/protocol` and where it goes (no endpoints: rejected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `namespace/name:port-name` (a comment in the table).
    pub service: String,
    pub ip: String,
    pub port: i32,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// `(address, port)` of each endpoint, sorted.
    pub endpoints: Vec<(String, i32)>,
}

/// The port of `pod` a Service port's `targetPort` names: a number, or a container port's
/// name (of the same protocol); unset means the Service's `port`. None: the pod has no such port.
fn target_port(sp: &ServicePort, protocol: &str, pod: &Pod) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => match name.parse::<i32>() {
            Ok(n) => Some(n),
            Err(_) => pod
                .spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol
                            .as_deref()
                            .unwrap_or("TCP")
                            .eq_ignore_ascii_case(protocol)
                })
                .map(|p| p.container_port),
        },
    }
}

/// The rules of every ClusterIP Service with a selector, and of `default/kubernetes`, whose
/// endpoint is the API server at `api` (kube-apiserver keeps that Service's Endpoints). Other
/// Services without a selector would take manual Endpoints, which the harness does not
/// store: they are left out.
pub fn rules(services: &[Service], pods: &[Pod], api: Option<&str>) -> Vec<Rule> {
    let mut out = Vec::new();
    for svc in services {
        let Some(ip) = cluster_ip(svc) else { continue };
        let Some(spec) = &svc.spec else { continue };
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let api = api.filter(|_| (ns, name) == ("default", "kubernetes"));
        if spec.selector.as_ref().is_none_or(|s| s.is_empty()) && api.is_none() {
            continue;
        }
        let eps = endpoint_pods(svc, pods);
        for sp in spec.ports.iter().flatten() {
            let protocol = sp.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
            let mut endpoints: Vec<(String, i32)> = eps
                .iter()
                .filter_map(|p| Some((pod_ip(p)?.to_string(), target_port(sp, &protocol, p)?)))
                .collect();
            if let Some(a) = api {
                let port = match &sp.target_port {
                    Some(IntOrString::Int(n)) => *n,
                    _ => sp.port,
                };
                endpoints.push((a.to_string(), port));
            }
            endpoints.sort();
            endpoints.dedup();
            out.push(Rule {
                service: format!("{ns}/{name}:{}", sp.name.as_deref().unwrap_or_default()),
                ip: ip.to_string(),
                port: sp.port,
                protocol,
                endpoints,
            });
        }
    }
    out
}

/// The nft script that replaces the table atomically (one transaction: create it if absent,
/// delete it, create it anew). DNAT for locally made traffic (`output`: pods share the
/// node's namespace) and for traffic routed through the node (`prerouting`); a port without
/// endpoints is rejected (ICMP port unreachable: a refused connection), as kube-proxy does.
pub fn render(rules: &[Rule]) -> String {
    let mut services = String::new();
    let mut rejects = String::new();
    for r in rules {
        let matcher = format!("ip daddr {} {} dport {}", r.ip, r.protocol, r.port);
        // nft takes comments of up to 127 bytes; a longer one would fail the whole table.
        let mut text: String = r
            .service
            .chars()
            .filter(|c| c.is_ascii() && *c != '"')
            .collect();
        text.truncate(COMMENT_MAX);
        let comment = format!("comment \"{text}\"");
        match r.endpoints.as_slice() {
            [] => rejects.push_str(&format!("\t\t{matcher} reject {comment}\n")),
            [(a, p)] => services.push_str(&format!("\t\t{matcher} dnat to {a}:{p} {comment}\n")),
            many => {
                let map: Vec<String> = many
                    .iter()
                    .enumerate()
                    .map(|(i, (a, p))| format!("{i} : {a} . {p}"))
                    .collect();
                services.push_str(&format!(
                    "\t\t{matcher} dnat ip addr . port to numgen random mod {} map {{ {} }} {comment}\n",
                    many.len(),
                    map.join(", ")
                ));
            }
        }
    }
    format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n\
         \tchain services {{\n{services}\t}}\n\
         \tchain no-endpoints {{\n{rejects}\t}}\n\
         \tchain nat-output {{\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}}\n\
         \tchain nat-prerouting {{\n\t\ttype nat hook prerouting priority -100; policy accept;\n\t\tjump services\n\t}}\n\
         \tchain filter-output {{\n\t\ttype filter hook output priority -110; policy accept;\n\t\tjump no-endpoints\n\t}}\n\
         \tchain filter-forward {{\n\t\ttype filter hook forward priority -110; policy accept;\n\t\tjump no-endpoints\n\t}}\n\
         }}\n"
    )
}

/// Keeps the table of every running node current.
pub struct ServiceProxy {
    client: Client,
    nodes: Vec<(String, Namespaces)>,
    /// The API server's address on the bridge (its HTTPS listener, `in_cluster.rs`).
    api: String,
    /// Per node, its holder pid with its network namespace (`pid net:[inode]`) and the script
    /// last applied there: a restarted node has a new holder and gets the table again (the
    /// namespace alone would not tell: the kernel reuses a freed namespace's inode number).
    applied: BTreeMap<String, (String, String)>,
}

impl ServiceProxy {
    pub fn new(client: Client, nodes: &Nodes) -> Self {
        ServiceProxy {
            client,
            api: nodes.network.gateway().to_string(),
            nodes: nodes
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.namespaces()))
                .collect(),
            applied: BTreeMap::new(),
        }
    }

    pub fn reconcile(&mut self) {
        let rules = rules(
            &self.client.list::<Service>(None),
            &self.client.list::<Pod>(None),
            Some(&self.api),
        );
        let script = render(&rules);
        for (node, ns) in &self.nodes {
            let pid = ns.pid();
            let Some(net) = ns.net_id().filter(|_| pid != 0) else {
                self.applied.remove(node);
                continue;
            };
            if self.applied.get(node) == Some(&(net.clone(), script.clone())) {
                continue;
            }
            let net = format!("{pid} {net}");
            let netns = format!("--net=/proc/{pid}/ns/net");
            match cairn_netns::run("nsenter", &[&netns, "nft", "-f", "-"], Some(&script)) {
                Ok(_) => {
                    tracing::debug!(node = %node, netns = %net, rules = rules.len(), "service proxy table applied");
                    self.applied.insert(node.clone(), (net, script.clone()));
                }
                // The node may be stopping; the next pass retries.
                Err(e) => {
                    tracing::warn!(node = %node, netns = %net, error = %e, "service proxy table not applied");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i",
                "ports": [{"name": "http", "containerPort": 8000 + ip.len()},
                          {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "podIP": ip,
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    fn svc(ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.1.2", "selector": {"app": "web"}, "ports": ports}
        }))
        .unwrap()
    }

    #[test]
    fn no_endpoints_reject_one_dnats_many_are_picked_at_random() {
        let s = svc(json!([{"name": "h", "port": 80, "targetPort": 8080}]));
        let none = rules(
            std::slice::from_ref(&s),
            &[pod("a", "10.213.0.11", false)],
            None,
        );
        assert_eq!(none[0].endpoints, vec![]);
        let text = render(&none);
        assert!(
            text.contains("ip daddr 10.96.1.2 tcp dport 80 reject comment \"ns/web:h\""),
            "{text}"
        );
        assert!(!text.contains("dnat to"), "{text}");
        let one = rules(
            std::slice::from_ref(&s),
            &[pod("a", "10.213.0.11", true)],
            None,
        );
        assert!(render(&one).contains("ip daddr 10.96.1.2 tcp dport 80 dnat to 10.213.0.11:8080"));
        let pods = [
            pod("b", "10.213.0.12", true),
            pod("a", "10.213.0.11", true),
            pod("x", "10.213.0.13", false),
        ];
        let many = render(&rules(std::slice::from_ref(&s), &pods, None));
        assert!(
            many.contains("tcp dport 80 dnat ip addr . port to numgen random mod 2 map { 0 : 10.213.0.11 . 8080, 1 : 10.213.0.12 . 8080 }"),
            "{many}"
        );
        assert!(!many.contains("reject comment"), "{many}");
        assert!(many.starts_with("table ip cairn-proxy\ndelete table ip cairn-proxy\n"));
        let long = Rule {
            service: format!("{}/{}:http", "n".repeat(63), "s".repeat(63)),
            ..none[0].clone()
        };
        let text = render(&[long]);
        let comment = text
            .split("comment \"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(comment.len(), COMMENT_MAX, "{text}");
    }

    #[test]
    fn target_ports_resolve_by_number_name_or_default() {
        let s = svc(json!([
            {"name": "named", "port": 80, "targetPort": "http"},
            {"name": "dflt", "port": 81},
            {"name": "udp", "port": 53, "protocol": "UDP", "targetPort": "dns"},
            {"name": "missing", "port": 82, "targetPort": "nope"},
        ]));
        let r = rules(
            &[s],
            &[pod("a", "10.213.0.11", true), pod("b", "1.2.3.4", true)],
            None,
        );
        // Named: each pod's own container port (8011 and 8007 here).
        assert_eq!(
            r[0].endpoints,
            vec![("1.2.3.4".to_string(), 8007), ("10.213.0.11".into(), 8011)]
        );
        assert_eq!(r[1].endpoints[0].1, 81);
        assert_eq!((r[2].protocol.as_str(), r[2].endpoints[0].1), ("udp", 53));
        assert!(r[3].endpoints.is_empty(), "a name no container port has");
    }

    #[test]
    fn headless_selectorless_and_external_name_services_get_no_rule() {
        let mut s = svc(json!([{"port": 80}]));
        let pods = [pod("a", "10.213.0.11", true)];
        s.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        assert!(rules(std::slice::from_ref(&s), &pods, None).is_empty());
        s.spec.as_mut().unwrap().cluster_ip = Some("10.96.1.2".into());
        s.spec.as_mut().unwrap().selector = None;
        assert!(rules(std::slice::from_ref(&s), &pods, Some("10.213.0.1")).is_empty());
        s.spec.as_mut().unwrap().selector = Some([("app".into(), "web".into())].into());
        s.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        assert!(rules(&[s], &pods, None).is_empty());
    }

    #[test]
    fn the_kubernetes_service_leads_to_the_api_server() {
        let k: Service = serde_json::from_value(json!({
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "targetPort": 6443}]}
        }))
        .unwrap();
        let r = rules(std::slice::from_ref(&k), &[], Some("10.213.0.1"));
        assert_eq!(r[0].endpoints, vec![("10.213.0.1".to_string(), 6443)]);
        assert!(render(&r).contains("ip daddr 10.96.0.1 tcp dport 443 dnat to 10.213.0.1:6443"));
        assert!(
            rules(&[k], &[], None).is_empty(),
            "no API server address, no rule"
        );
    }
}
