//! Placement: picks distinct nodes for a volume's replicas, honouring required
//! topology, then spreading over zones, then preferred topology, then the most free capacity.
//!
//! Free capacity is one rule (decision 050): provisioned sizes up to `capacity × overcommit`,
//! and, while the node's usage report is fresh, no more than its real free space allows. The
//! ranking among nodes that fit uses the provisioned room (stable; real readings jitter).

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

/// A node's catalogue label holding its `storaged --overcommit` (absent: 1.0).
pub const OVERCOMMIT_LABEL: &str = "cairn.dev/overcommit";

/// What a node last said of its real usage in a ping (or read locally, for this node).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes its data dir occupies on disk (RocksDB files, Raft logs, local volumes).
    pub used: u64,
    /// Free bytes of its data filesystem.
    pub fs_free: u64,
    /// Bytes it keeps free there (`storaged --reserve`).
    pub reserve: u64,
}

/// The fresh usage reports by node id; a node without one counts by provisioned sizes only.
pub type Live = BTreeMap<u64, Usage>;

/// `--overcommit`: a finite number of at least 1.0 (1.0: provisioned sizes up to capacity).
pub fn parse_overcommit(s: &str) -> std::result::Result<f64, String> {
    let f: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("--overcommit `{s}`: not a number such as 1.5"))?;
    if !f.is_finite() || f < 1.0 {
        return Err(format!(
            "--overcommit `{s}`: must be a finite number of at least 1.0 (1.0: no over-provisioning)"
        ));
    }
    Ok(f)
}

impl NodeRecord {
    /// The node's overcommit factor (1.0 without the label or with one that does not parse).
    pub fn overcommit(&self) -> f64 {
        self.labels
            .get(OVERCOMMIT_LABEL)
            .and_then(|v| parse_overcommit(v).ok())
            .unwrap_or(1.0)
    }
}

fn scaled(bytes: u64, factor: f64) -> u64 {
    if factor == 1.0 {
        bytes
    } else {
        // `as` saturates at u64::MAX.
        (bytes as f64 * factor) as u64
    }
}

/// A node's room for new replicas, by the two measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Room {
    /// `capacity × overcommit − allocated`.
    pub provisioned: u64,
    /// `min(capacity − used, fs_free − reserve) × overcommit` by a fresh report, if any.
    pub real: Option<u64>,
}

impl Room {
    pub fn free(&self) -> u64 {
        self.real
            .map_or(self.provisioned, |real| real.min(self.provisioned))
    }
}

/// `capacity × overcommit − allocated`: the ranking's measure among nodes that fit.
pub fn provisioned(cat: &Catalog, node: &NodeRecord) -> u64 {
    scaled(node.capacity_bytes, node.overcommit()).saturating_sub(cat.allocated(node.id))
}

pub fn room(cat: &Catalog, live: &Live, node: &NodeRecord) -> Room {
    let oc = node.overcommit();
    let provisioned = provisioned(cat, node);
    let real = live.get(&node.id).map(|u| {
        let real = node
            .capacity_bytes
            .saturating_sub(u.used)
            .min(u.fs_free.saturating_sub(u.reserve));
        scaled(real, oc)
    });
    Room { provisioned, real }
}

/// Bytes a new replica may have on `node`: see `room`.
pub fn free(cat: &Catalog, live: &Live, node: &NodeRecord) -> u64 {
    room(cat, live, node).free()
}

/// When `need` of `nodes` would have room for `size` bytes by provisioned sizes but not by
/// real usage: the error that says so, with the best real free bytes among them.
fn real_shortfall<'a>(
    cat: &Catalog,
    live: &Live,
    nodes: impl Iterator<Item = &'a NodeRecord>,
    size: u64,
    need: usize,
) -> Option<Error> {
    let rooms: Vec<(&NodeRecord, Room)> = nodes
        .map(|n| (n, room(cat, live, n)))
        .filter(|(_, r)| r.provisioned >= size)
        .collect();
    if rooms.len() < need {
        return None;
    }
    let (best, real) = rooms
        .iter()
        .filter_map(|(n, r)| r.real.filter(|real| *real < size).map(|real| (n, real)))
        .max_by_key(|(n, real)| (*real, std::cmp::Reverse(n.id)))?;
    Some(Error::ResourceExhausted(format!(
        "{size} bytes needed but data already written leaves too little disk really free \
         (counting its amplification): the best node, `{}`, has {real} bytes really free \
         (by provisioned sizes {} nodes would have room)",
        best.name,
        rooms.len()
    )))
}

pub struct Want<'a> {
    pub size: u64,
    pub replicas: u32,
    pub kind: VolumeKind,
    pub requisite: &'a [Term],
    pub preferred: &'a [Term],
}

/// Returns the member node ids, first the preferred/requisite one.
pub fn place(cat: &Catalog, live: &Live, want: &Want<'_>) -> Result<Vec<u64>> {
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
        .filter(|nd| free(cat, live, nd) >= want.size)
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
            std::cmp::Reverse(provisioned(cat, a)),
            a.id,
        )
            .cmp(&(
                !in_req(b),
                pref_rank(b),
                std::cmp::Reverse(provisioned(cat, b)),
                b.id,
            ))
    });
    // The first replica must lie in the requisite topology (local: every replica).
    let first = ranked.first().filter(|nd| in_req(nd)).ok_or_else(|| {
        let in_topology = || all.iter().copied().filter(|nd| in_req(nd));
        if let Some(e) = real_shortfall(cat, live, in_topology(), want.size, 1) {
            e
        } else if in_topology().next().is_some() {
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
        if let Some(e) = real_shortfall(cat, live, all.iter().copied(), want.size, n) {
            return Err(e);
        }
        return Err(Error::ResourceExhausted(format!(
            "{n} replicas of {} bytes requested but only {} nodes have room",
            want.size,
            out.len()
        )));
    }
    Ok(out)
}

/// GetCapacity's figure: the largest volume of `kind` with `replicas` that fits now, its
/// first replica on one of `matching` (the requested topology) and the others anywhere.
pub fn available(
    cat: &Catalog,
    live: &Live,
    matching: &[&NodeRecord],
    kind: VolumeKind,
    replicas: usize,
) -> u64 {
    let best_local = matching
        .iter()
        .map(|n| free(cat, live, n))
        .max()
        .unwrap_or(0);
    match kind {
        VolumeKind::Local => best_local,
        VolumeKind::Replicated => {
            let mut frees: Vec<u64> = cat.nodes.values().map(|n| free(cat, live, n)).collect();
            frees.sort_unstable_by(|a, b| b.cmp(a));
            let rth = if replicas > 0 && frees.len() >= replicas {
                frees[replicas - 1]
            } else {
                0
            };
            best_local.min(rth)
        }
    }
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
    live: &Live,
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
        .filter(|n| free(cat, live, n) >= volume.size)
        .min_by_key(|n| {
            (
                n.zone().is_some() && zones.contains(&n.zone()),
                std::cmp::Reverse(provisioned(cat, n)),
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

    fn volume(name: &str, size: u64, kind: VolumeKind, members: &[u64]) -> VolumeRecord {
        VolumeRecord {
            id: 1,
            name: name.into(),
            size,
            replicas: members.len() as u32,
            kind,
            members: members.to_vec(),
            attachments: vec![],
            labels: BTreeMap::new(),
            created_unix: 0,
            origin: None,
            state: super::super::catalog::VolumeState::Ready,
            generation: 0,
            repair: None,
        }
    }

    fn set_overcommit(c: &mut Catalog, node: u64, factor: &str) {
        let labels = &mut c.nodes.get_mut(&node).unwrap().labels;
        labels.insert(OVERCOMMIT_LABEL.into(), factor.into());
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
        assert_eq!(place(&c, &Live::new(), &w(3, &[])).unwrap(), vec![2, 1, 3]);
        let req = vec![term(NODE_KEY, "node-3")];
        let got = place(
            &c,
            &Live::new(),
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
                &Live::new(),
                &Want {
                    requisite: &zone,
                    ..w(1, &[])
                }
            )
            .unwrap(),
            vec![1]
        );
        assert!(matches!(
            place(&c, &Live::new(), &w(4, &[])),
            Err(Error::ResourceExhausted(_))
        ));
        let big = Want {
            size: 6 << 30,
            ..w(3, &[])
        };
        assert!(matches!(
            place(&c, &Live::new(), &big),
            Err(Error::ResourceExhausted(_))
        ));
        let nowhere = vec![term(NODE_KEY, "node-9")];
        assert!(matches!(
            place(
                &c,
                &Live::new(),
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
        let got = place(&c, &Live::new(), &want).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(zones_of(&c, &got).len(), 2, "{got:?}");
        let c = zoned(&["a", "a", "b", "b", "c", "c"]);
        let got = place(&c, &Live::new(), &want).unwrap();
        assert_eq!(zones_of(&c, &got).len(), 3, "{got:?}");
        // Fewer zones than replicas: every zone used, then distinct nodes.
        let c = zoned(&["a", "a", "a", "b"]);
        let got = place(&c, &Live::new(), &want).unwrap();
        assert_eq!(zones_of(&c, &got).len(), 2, "{got:?}");
        // A replacement takes the lost member's zone when a node there is free.
        let vol = volume("v", 1 << 30, VolumeKind::Replicated, &[1, 3, 5]);
        let c = zoned(&["a", "a", "b", "b", "c", "c"]);
        assert_eq!(replacement(&c, &vol, 3, &Live::new(), &|_| false), Some(4));
        assert_eq!(replacement(&c, &vol, 3, &Live::new(), &|n| n == 4), Some(2));
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

    fn want(size: u64) -> Want<'static> {
        Want {
            size,
            replicas: 1,
            kind: VolumeKind::Local,
            requisite: &[],
            preferred: &[],
        }
    }

    /// A fresh report of `used` bytes on a filesystem with `fs_free` free and no reserve.
    fn report(used: u64, fs_free: u64) -> Usage {
        Usage {
            used,
            fs_free,
            reserve: 0,
        }
    }

    #[test]
    fn a_node_whose_real_space_is_used_up_is_skipped() {
        // Node 1 has the most provisioned room (nothing allocated) but 9 of its 10 GiB are
        // written (amplification, logs); node 2 has less provisioned room but real space.
        let c = with_nodes(&[(1, "a", 10 << 30), (2, "b", 8 << 30)]);
        let live: Live = [
            (1, report(9 << 30, 50 << 30)),
            (2, report(1 << 30, 50 << 30)),
        ]
        .into();
        assert_eq!(free(&c, &live, &c.nodes[&1]), 1 << 30);
        assert_eq!(place(&c, &live, &want(2 << 30)).unwrap(), vec![2]);
        // Among nodes that fit, the most provisioned room ranks first (not real readings).
        let both: Live = [(1, report(7 << 30, 50 << 30)), (2, report(0, 50 << 30))].into();
        assert_eq!(place(&c, &both, &want(2 << 30)).unwrap(), vec![1]);
        // The filesystem's free bytes less the reserve bind too.
        let tight: Live = [(
            2,
            Usage {
                used: 0,
                fs_free: 3 << 30,
                reserve: 2 << 30,
            },
        )]
        .into();
        assert_eq!(free(&c, &tight, &c.nodes[&2]), 1 << 30);
        // Nowhere really free: refused, saying it is real usage and naming the figures.
        let full: Live = [
            (1, report((9 << 30) + (1 << 29), 50 << 30)),
            (2, report(7 << 30, 50 << 30)),
        ]
        .into();
        let err = place(&c, &full, &want(2 << 30)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
        assert!(msg.contains("really free"), "{msg}");
        assert!(msg.contains(&(2u64 << 30).to_string()), "{msg}");
        assert!(
            msg.contains(&(1u64 << 30).to_string()) && msg.contains("`node-2`"),
            "{msg}"
        );
        // Too big by provisioned sizes: the other message.
        let err = place(&c, &full, &want(11 << 30)).unwrap_err().to_string();
        assert!(!err.contains("really free"), "{err}");
        // Replicated: two replicas need two nodes really free.
        let two = Want {
            replicas: 2,
            kind: VolumeKind::Replicated,
            ..want(2 << 30)
        };
        let err = place(&c, &live, &two).unwrap_err().to_string();
        assert!(
            err.contains("really free") && err.contains("`node-1`"),
            "{err}"
        );
    }

    #[test]
    fn overcommit_lets_provisioned_sizes_pass_capacity_but_not_real_space() {
        let mut c = with_nodes(&[(1, "a", 10 << 30)]);
        set_overcommit(&mut c, 1, "2");
        let v = volume("big", 8 << 30, VolumeKind::Local, &[1]);
        c.volumes.insert(v.name.clone(), v);
        let none = Live::new();
        // 20 GiB provisionable, 8 allocated: a 10 GiB volume fits (capacity − allocated is 2).
        assert_eq!(free(&c, &none, &c.nodes[&1]), 12 << 30);
        assert_eq!(place(&c, &none, &want(10 << 30)).unwrap(), vec![1]);
        assert!(place(&c, &none, &want(13 << 30)).is_err());
        // 1 GiB really written: real room (9 GiB) × 2 still allows it.
        let light: Live = [(1, report(1 << 30, 50 << 30))].into();
        assert_eq!(place(&c, &light, &want(10 << 30)).unwrap(), vec![1]);
        // Real space used up: nothing, whatever the overcommit.
        let used_up: Live = [(1, report(10 << 30, 50 << 30))].into();
        assert_eq!(free(&c, &used_up, &c.nodes[&1]), 0);
        let err = place(&c, &used_up, &want(1 << 20)).unwrap_err().to_string();
        assert!(err.contains("really free"), "{err}");
        // Without the label: 1.0, the old rule.
        c.nodes.get_mut(&1).unwrap().labels.remove(OVERCOMMIT_LABEL);
        assert_eq!(free(&c, &none, &c.nodes[&1]), 2 << 30);
        assert!(place(&c, &none, &want(3 << 30)).is_err());
    }

    #[test]
    fn without_a_fresh_report_the_provisioned_rule_applies_scaled() {
        let mut c = with_nodes(&[(1, "a", 10 << 30), (2, "b", 10 << 30)]);
        set_overcommit(&mut c, 2, "1.5");
        // Node 1 reports real usage; node 2 none (stale or an older node).
        let live: Live = [(1, report(4 << 30, 50 << 30))].into();
        assert_eq!(free(&c, &live, &c.nodes[&1]), 6 << 30);
        assert_eq!(free(&c, &live, &c.nodes[&2]), 15 << 30);
        assert_eq!(
            room(&c, &live, &c.nodes[&2]),
            Room {
                provisioned: 15 << 30,
                real: None
            }
        );
        assert_eq!(place(&c, &live, &want(12 << 30)).unwrap(), vec![2]);
    }

    #[test]
    fn get_capacity_follows_the_rule() {
        let c = with_nodes(&[(1, "a", 10 << 30), (2, "b", 10 << 30), (3, "b", 10 << 30)]);
        let all: Vec<&NodeRecord> = c.nodes.values().collect();
        let none = Live::new();
        assert_eq!(available(&c, &none, &all, VolumeKind::Local, 1), 10 << 30);
        let live: Live = [
            (1, report(7 << 30, 50 << 30)),
            (2, report(2 << 30, 50 << 30)),
            (3, report(0, 4 << 30)),
        ]
        .into();
        // Local: the best node's real room (node 2: 8 GiB).
        assert_eq!(available(&c, &live, &all, VolumeKind::Local, 1), 8 << 30);
        // Three replicas: the third best (node 1: 3 GiB); two: node 3's 4 GiB.
        assert_eq!(
            available(&c, &live, &all, VolumeKind::Replicated, 3),
            3 << 30
        );
        assert_eq!(
            available(&c, &live, &all, VolumeKind::Replicated, 2),
            4 << 30
        );
        let zone_a: Vec<&NodeRecord> = vec![&c.nodes[&1]];
        assert_eq!(available(&c, &live, &zone_a, VolumeKind::Local, 1), 3 << 30);
    }

    #[test]
    fn overcommit_parsing_refuses_below_one_and_non_finite() {
        assert_eq!(parse_overcommit("1.0"), Ok(1.0));
        assert_eq!(parse_overcommit("2"), Ok(2.0));
        for bad in ["0.5", "0", "-1", "NaN", "nan", "inf", "-inf", "two", ""] {
            let err = parse_overcommit(bad).unwrap_err();
            assert!(err.starts_with("--overcommit"), "{bad}: {err}");
        }
        // A label that does not parse counts as 1.0.
        let mut c = with_nodes(&[(1, "a", 1 << 30)]);
        set_overcommit(&mut c, 1, "0.1");
        assert_eq!(c.nodes[&1].overcommit(), 1.0);
    }

    #[test]
    fn unknown_topology_keys_are_invalid() {
        assert!(validate_term("requisite", &term("rack", "x")).is_err());
        assert!(validate_term("requisite", &term(ZONE_KEY, "a")).is_ok());
    }
}
