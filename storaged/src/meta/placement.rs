//! Placement: picks distinct nodes for a volume's replicas, honouring required
//! topology, then spreading over zones, then preferred topology, then the most free capacity.

use std::collections::{BTreeMap, BTreeSet};

use super::catalog::{Catalog, NODE_KEY, NodeRecord, VolumeKind, VolumeRecord, ZONE_KEY};
use crate::{Error, Result};

/// A topology term: every segment must match.
pub type Term = BTreeMap<String, String>;

pub fn validate_term(field: &'static str, term: &Term) -> Result<()> {
    for (k, v) in term {
        if k != NODE_KEY && k != ZONE_KEY {
            return Err(Error::invalid(
                field,
                format!("unknown topology key `{k}` (use {NODE_KEY} or {ZONE_KEY})"),
            ));
        }
        if v.is_empty() {
            return Err(Error::invalid(
                field,
                format!("empty value for topology key `{k}`"),
            ));
        }
    }
    Ok(())
}

pub fn matches(node: &NodeRecord, term: &Term) -> bool {
    term.iter().all(|(k, v)| match k.as_str() {
        NODE_KEY => node.name == *v,
        ZONE_KEY => node.zone() == Some(v.as_str()),
        _ => false,
    })
}

pub fn free(cat: &Catalog, node: &NodeRecord) -> u64 {
    node.capacity_bytes.saturating_sub(cat.allocated(node.id))
}

pub struct Want<'a> {
    pub size: u64,
    pub replicas: u32,
    pub kind: VolumeKind,
    pub requisite: &'a [Term],
    pub preferred: &'a [Term],
}

/// Returns the member node ids, first the preferred/requisite one.
pub fn place(cat: &Catalog, want: &Want<'_>) -> Result<Vec<u64>> {
    let n = match want.kind {
        VolumeKind::Local => 1,
        VolumeKind::Replicated => want.replicas as usize,
    };
    // A cordoned node takes no new replicas.
    let all: Vec<&NodeRecord> = cat.nodes.values().filter(|n| !n.cordoned()).collect();
    if all.len() < n {
        return Err(Error::ResourceExhausted(format!(
            "{n} replicas requested but the cluster has only {} nodes",
            all.len()
        )));
    }
    let fits: Vec<&NodeRecord> = all
        .iter()
        .copied()
        .filter(|nd| free(cat, nd) >= want.size)
        .collect();
    let in_req = |nd: &NodeRecord| {
        want.requisite.is_empty() || want.requisite.iter().any(|t| matches(nd, t))
    };
    let pref_rank = |nd: &NodeRecord| {
        want.preferred
            .iter()
            .position(|t| matches(nd, t))
            .unwrap_or(want.preferred.len())
    };
    let mut ranked: Vec<&NodeRecord> = fits.clone();
    ranked.sort_by(|a, b| {
        (
            !in_req(a),
            pref_rank(a),
            std::cmp::Reverse(free(cat, a)),
            a.id,
        )
            .cmp(&(
                !in_req(b),
                pref_rank(b),
                std::cmp::Reverse(free(cat, b)),
                b.id,
            ))
    });
    // The first replica must lie in the requisite topology (local: every replica).
    let first = ranked.first().filter(|nd| in_req(nd)).ok_or_else(|| {
        if all.iter().any(|nd| in_req(nd)) {
            Error::ResourceExhausted(format!(
                "no node in the requested topology has {} bytes free",
                want.size
            ))
        } else {
            Error::ResourceExhausted("no storaged node matches the requested topology".into())
        }
    })?;
    let mut out = vec![first.id];
    let mut zones: Vec<Option<&str>> = vec![first.zone()];
    // Each next replica: in the requisite topology first, then in a zone no replica uses
    // yet (spread over zones while there are enough), then by rank.
    while out.len() < n {
        let Some(nd) = ranked
            .iter()
            .filter(|nd| !out.contains(&nd.id))
            .min_by_key(|nd| {
                (
                    !in_req(nd),
                    nd.zone().is_some() && zones.contains(&nd.zone()),
                )
            })
        else {
            break;
        };
        out.push(nd.id);
        zones.push(nd.zone());
    }
    if out.len() < n {
        return Err(Error::ResourceExhausted(format!(
            "{n} replicas of {} bytes requested but only {} nodes have room",
            want.size,
            out.len()
        )));
    }
    Ok(out)
}

/// Why `volume`'s replicas span fewer zones than they could (`min(replicas, zones)`), if
/// the cluster's nodes carry zones and they do; `None` otherwise.
pub fn zone_warning(cat: &Catalog, volume: &VolumeRecord) -> Option<String> {
    if volume.kind != VolumeKind::Replicated {
        return None;
    }
    let all: BTreeSet<&str> = cat.nodes.values().filter_map(|n| n.zone()).collect();
    let used: BTreeSet<&str> = volume
        .members
        .iter()
        .filter_map(|m| cat.nodes.get(m)?.zone())
        .collect();
    let could = all.len().min(volume.replicas as usize);
    (all.len() >= 2 && used.len() < could).then(|| {
        format!(
            "replicas span {} of the cluster's {} zones ({}): too few nodes with room in the others",
            used.len(),
            all.len(),
            used.into_iter().collect::<Vec<_>>().join(", ")
        )
    })
}

/// The node to take over `volume`'s replica from member `from`: not a member, not
/// cordoned, not in `unusable` (down), with room for it; zones the other members do
/// not use first, then the most free capacity. `None`: no node qualifies.
pub fn replacement(
    cat: &Catalog,
    volume: &VolumeRecord,
    from: u64,
    unusable: &dyn Fn(u64) -> bool,
) -> Option<u64> {
    let zones: Vec<Option<&str>> = volume
        .members
        .iter()
        .filter(|m| **m != from)
        .filter_map(|m| cat.nodes.get(m))
        .map(|n| n.zone())
        .collect();
    cat.nodes
        .values()
        .filter(|n| !volume.members.contains(&n.id) && !n.cordoned() && !unusable(n.id))
        .filter(|n| free(cat, n) >= volume.size)
        .min_by_key(|n| {
            (
                n.zone().is_some() && zones.contains(&n.zone()),
                std::cmp::Reverse(free(cat, n)),
                n.id,
            )
        })
        .map(|n| n.id)
}

#[cfg(test)]
mod tests {
    use super::super::catalog::NodeRole;
    use super::*;

    /// Nodes of (id, zone, capacity).
    fn with_nodes(nodes: &[(u64, &str, u64)]) -> Catalog {
        let mut c = Catalog::default();
        for (id, zone, cap) in nodes {
            c.nodes.insert(
                *id,
                NodeRecord {
                    id: *id,
                    name: format!("node-{id}"),
                    addr: String::new(),
                    labels: [("zone".to_string(), zone.to_string())].into(),
                    capacity_bytes: *cap,
                    role: NodeRole::Voter,
                },
            );
        }
        c
    }

    fn cat() -> Catalog {
        with_nodes(&[(1, "a", 10 << 30), (2, "b", 20 << 30), (3, "b", 5 << 30)])
    }

    fn term(k: &str, v: &str) -> Term {
        [(k.to_string(), v.to_string())].into()
    }

    #[test]
    fn prefers_free_capacity_and_honours_topology() {
        let c = cat();
        let w = |replicas, requisite: &'static [Term]| Want {
            size: 1 << 30,
            replicas,
            kind: VolumeKind::Replicated,
            requisite,
            preferred: &[],
        };
        assert_eq!(place(&c, &w(3, &[])).unwrap(), vec![2, 1, 3]);
        let req = vec![term(NODE_KEY, "node-3")];
        let got = place(
            &c,
            &Want {
                requisite: &req,
                ..w(2, &[])
            },
        )
        .unwrap();
        assert_eq!(got[0], 3);
        let zone = vec![term(ZONE_KEY, "a")];
        assert_eq!(
            place(
                &c,
                &Want {
                    requisite: &zone,
                    ..w(1, &[])
                }
            )
            .unwrap(),
            vec![1]
        );
        assert!(matches!(
            place(&c, &w(4, &[])),
            Err(Error::ResourceExhausted(_))
        ));
        let big = Want {
            size: 6 << 30,
            ..w(3, &[])
        };
        assert!(matches!(place(&c, &big), Err(Error::ResourceExhausted(_))));
        let nowhere = vec![term(NODE_KEY, "node-9")];
        assert!(matches!(
            place(
                &c,
                &Want {
                    requisite: &nowhere,
                    ..w(1, &[])
                }
            ),
            Err(Error::ResourceExhausted(_))
        ));
    }

    /// `zones[i]` is node i+1's zone; every node has 10 GiB.
    fn zoned(zones: &[&str]) -> Catalog {
        let nodes: Vec<(u64, &str, u64)> = zones
            .iter()
            .enumerate()
            .map(|(i, z)| (i as u64 + 1, *z, 10 << 30))
            .collect();
        with_nodes(&nodes)
    }

    fn zones_of(c: &Catalog, members: &[u64]) -> std::collections::BTreeSet<String> {
        members
            .iter()
            .map(|m| c.nodes[m].zone().unwrap().to_string())
            .collect()
    }

    #[test]
    fn replicas_spread_over_zones_first() {
        let want = Want {
            size: 1 << 30,
            replicas: 3,
            kind: VolumeKind::Replicated,
            requisite: &[],
            preferred: &[],
        };
        // Nodes 1 and 2 in zone a: by id alone, two replicas would share it.
        let c = zoned(&["a", "a", "b", "b"]);
        let got = place(&c, &want).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(zones_of(&c, &got).len(), 2, "{got:?}");
        let c = zoned(&["a", "a", "b", "b", "c", "c"]);
        let got = place(&c, &want).unwrap();
        assert_eq!(zones_of(&c, &got).len(), 3, "{got:?}");
        // Fewer zones than replicas: every zone used, then distinct nodes.
        let c = zoned(&["a", "a", "a", "b"]);
        let got = place(&c, &want).unwrap();
        assert_eq!(zones_of(&c, &got).len(), 2, "{got:?}");
        // A replacement takes the lost member's zone when a node there is free.
        let vol = VolumeRecord {
            id: 1,
            name: "v".into(),
            size: 1 << 30,
            replicas: 3,
            kind: VolumeKind::Replicated,
            members: vec![1, 3, 5],
            attachments: vec![],
            labels: BTreeMap::new(),
            created_unix: 0,
            origin: None,
            state: super::super::catalog::VolumeState::Ready,
            generation: 0,
            repair: None,
        };
        let c = zoned(&["a", "a", "b", "b", "c", "c"]);
        assert_eq!(replacement(&c, &vol, 3, &|_| false), Some(4));
        assert_eq!(replacement(&c, &vol, 3, &|n| n == 4), Some(2));
        assert_eq!(zone_warning(&c, &vol), None);
        let lopsided = VolumeRecord {
            members: vec![1, 2, 3],
            ..vol
        };
        assert_eq!(
            zone_warning(&c, &lopsided).as_deref(),
            Some(
                "replicas span 2 of the cluster's 3 zones (a, b): too few nodes with room in the others"
            )
        );
    }

    #[test]
    fn unknown_topology_keys_are_invalid() {
        assert!(validate_term("requisite", &term("rack", "x")).is_err());
        assert!(validate_term("requisite", &term(ZONE_KEY, "a")).is_ok());
    }
}
