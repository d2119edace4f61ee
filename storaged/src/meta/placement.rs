//! Placement: picks distinct nodes for a volume's replicas, honouring required
//! topology, then preferred topology, then the most free capacity.

use std::collections::BTreeMap;

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
    for nd in ranked.iter().skip(1) {
        if out.len() == n {
            break;
        }
        out.push(nd.id);
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

    fn cat() -> Catalog {
        let mut c = Catalog::default();
        for (id, zone, cap) in [(1, "a", 10u64 << 30), (2, "b", 20 << 30), (3, "b", 5 << 30)] {
            c.nodes.insert(
                id,
                NodeRecord {
                    id,
                    name: format!("node-{id}"),
                    addr: String::new(),
                    labels: [("zone".to_string(), zone.to_string())].into(),
                    capacity_bytes: cap,
                    role: NodeRole::Voter,
                },
            );
        }
        c
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

    #[test]
    fn unknown_topology_keys_are_invalid() {
        assert!(validate_term("requisite", &term("rack", "x")).is_err());
        assert!(validate_term("requisite", &term(ZONE_KEY, "a")).is_ok());
    }
}
