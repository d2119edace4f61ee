//! Topology: a node's segment from its labels, CreateVolume accessibility requirements
//! (selected node or allowedTopologies), and PV nodeAffinity from accessible_topology.

use std::collections::{BTreeMap, HashMap};

use cairn_proto::csi::v1::{Topology, TopologyRequirement};
use k8s_openapi::api::core::v1::TopologySelectorTerm;
use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, VolumeNodeAffinity,
};
use kube::ResourceExt;

use crate::names::{TOPOLOGY_NODE_KEY, TOPOLOGY_ZONE_KEY};

/// The node's topology segment as the driver's NodeGetInfo reports it: the node key (its
/// label, or the node name when the label is not there yet) and the zone when labelled.
pub fn node_segment(node: &Node) -> HashMap<String, String> {
    let labels = node.labels();
    let mut seg = HashMap::new();
    let name = labels
        .get(TOPOLOGY_NODE_KEY)
        .cloned()
        .unwrap_or_else(|| node.name_any());
    seg.insert(TOPOLOGY_NODE_KEY.to_string(), name);
    if let Some(zone) = labels.get(TOPOLOGY_ZONE_KEY) {
        seg.insert(TOPOLOGY_ZONE_KEY.to_string(), zone.clone());
    }
    seg
}

/// Published segment of a node for CSIStorageCapacity: only nodes the driver registered
/// on (carrying the node topology label) have one, as upstream derives them from CSINode.
pub fn registered_segment(node: &Node) -> Option<BTreeMap<String, String>> {
    let labels = node.labels();
    let name = labels.get(TOPOLOGY_NODE_KEY)?;
    let mut seg = BTreeMap::new();
    seg.insert(TOPOLOGY_NODE_KEY.to_string(), name.clone());
    if let Some(zone) = labels.get(TOPOLOGY_ZONE_KEY) {
        seg.insert(TOPOLOGY_ZONE_KEY.to_string(), zone.clone());
    }
    Some(seg)
}

/// Requirements for a claim with a selected node: requisite = preferred = that node's
/// segment (upstream's `--strict-topology`), so a `type: local` volume lands on the node
/// the scheduler chose.
pub fn for_selected_node(node: &Node) -> TopologyRequirement {
    let t = Topology {
        segments: node_segment(node),
    };
    TopologyRequirement {
        requisite: vec![t.clone()],
        preferred: vec![t],
    }
}

/// Requirements from a class's allowedTopologies: each term expands to the cartesian
/// product of its values. None when the class has no allowedTopologies.
pub fn from_allowed(terms: Option<&Vec<TopologySelectorTerm>>) -> Option<TopologyRequirement> {
    let terms = terms.filter(|t| !t.is_empty())?;
    let mut out: Vec<Topology> = Vec::new();
    for term in terms {
        let mut segs: Vec<HashMap<String, String>> = vec![HashMap::new()];
        for req in term.match_label_expressions.iter().flatten() {
            let mut next = Vec::new();
            for s in &segs {
                for v in &req.values {
                    let mut s2 = s.clone();
                    s2.insert(req.key.clone(), v.clone());
                    next.push(s2);
                }
            }
            segs = next;
        }
        for s in segs.into_iter().filter(|s| !s.is_empty()) {
            let t = Topology { segments: s };
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    if out.is_empty() {
        return None;
    }
    Some(TopologyRequirement {
        requisite: out.clone(),
        preferred: out,
    })
}

/// PV nodeAffinity: one term per accessible segment, one `In` expression per key.
pub fn node_affinity(accessible: &[Topology]) -> Option<VolumeNodeAffinity> {
    let terms: Vec<NodeSelectorTerm> = accessible
        .iter()
        .filter(|t| !t.segments.is_empty())
        .map(|t| {
            let sorted: BTreeMap<_, _> = t.segments.iter().collect();
            NodeSelectorTerm {
                match_expressions: Some(
                    sorted
                        .into_iter()
                        .map(|(k, v)| NodeSelectorRequirement {
                            key: k.clone(),
                            operator: "In".into(),
                            values: Some(vec![v.clone()]),
                        })
                        .collect(),
                ),
                match_fields: None,
            }
        })
        .collect();
    if terms.is_empty() {
        return None;
    }
    Some(VolumeNodeAffinity {
        required: Some(NodeSelector {
            node_selector_terms: terms,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::TopologySelectorLabelRequirement;
    use kube::api::ObjectMeta;

    fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn segment_uses_label_or_name_and_zone() {
        let n = node("node-1", &[(TOPOLOGY_ZONE_KEY, "z1")]);
        let s = node_segment(&n);
        assert_eq!(s[TOPOLOGY_NODE_KEY], "node-1");
        assert_eq!(s[TOPOLOGY_ZONE_KEY], "z1");
        assert!(registered_segment(&n).is_none());
        let n = node("node-2", &[(TOPOLOGY_NODE_KEY, "node-2")]);
        assert_eq!(registered_segment(&n).unwrap().len(), 1);
        let req = for_selected_node(&n);
        assert_eq!(req.requisite, req.preferred);
    }

    #[test]
    fn allowed_topologies_expand_to_product() {
        let terms = vec![TopologySelectorTerm {
            match_label_expressions: Some(vec![
                TopologySelectorLabelRequirement {
                    key: TOPOLOGY_ZONE_KEY.into(),
                    values: vec!["a".into(), "b".into()],
                },
                TopologySelectorLabelRequirement {
                    key: TOPOLOGY_NODE_KEY.into(),
                    values: vec!["n1".into()],
                },
            ]),
        }];
        let r = from_allowed(Some(&terms)).unwrap();
        assert_eq!(r.requisite.len(), 2);
        assert!(from_allowed(None).is_none());
    }

    #[test]
    fn affinity_has_one_term_per_segment() {
        let t = Topology {
            segments: [(TOPOLOGY_NODE_KEY.to_string(), "node-1".to_string())].into(),
        };
        let a = node_affinity(&[t]).unwrap();
        let terms = a.required.unwrap().node_selector_terms;
        assert_eq!(terms.len(), 1);
        let e = &terms[0].match_expressions.as_ref().unwrap()[0];
        assert_eq!(
            (e.key.as_str(), e.operator.as_str()),
            (TOPOLOGY_NODE_KEY, "In")
        );
        assert!(node_affinity(&[]).is_none());
    }
}
