//! Network partitions between a run's nodes: the shapes (isolate, split, bridge, one-way), the
//! directed node pairs each cuts, and the nftables bridge-family rules that drop those packets.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::Error;

/// How a partition divides the nodes, around the node it targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// The target alone on one side, every other node on the other.
    Isolate,
    /// A minority (the target and the nodes after it by id, ⌊(n−1)/2⌋ in all) from the rest;
    /// nodes that share the target's group come last, so the target loses its group's majority.
    Split,
    /// The target sees every node; the others, in two halves, do not see the other half.
    Bridge,
    /// The target's packets to the next node by id are dropped; that node's to it delivered.
    OneWay,
}

/// A partition as applied: the directed pairs (from, to) whose packets are dropped, and the
/// nodes left without a majority (a group led there must lose its leader).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    pub pairs: Vec<(u64, u64)>,
    pub minority: Vec<u64>,
}

/// What `shape` cuts when it targets `target` among `nodes`; `fellows` are the other members
/// of the group the target leads (empty when it targets a node), which a split leaves on the
/// majority side where it can.
pub fn cut(shape: Shape, target: u64, nodes: &[u64], fellows: &[u64]) -> Cut {
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    // The nodes from the target on, by id, wrapping around.
    let at = sorted.iter().position(|&n| n == target).unwrap_or(0);
    let mut order: Vec<u64> = sorted[at..].iter().chain(&sorted[..at]).copied().collect();
    if shape == Shape::Split && order.len() > 1 {
        // A stable sort: after the target, non-members first, each part still by id.
        order[1..].sort_by_key(|n| fellows.contains(n));
    }
    let across = |a: &[u64], b: &[u64]| -> Vec<(u64, u64)> {
        let mut pairs = Vec::new();
        for &x in a {
            for &y in b {
                pairs.push((x, y));
                pairs.push((y, x));
            }
        }
        pairs.sort_unstable();
        pairs
    };
    match shape {
        Shape::Isolate | Shape::Split => {
            let size = match shape {
                Shape::Isolate => 1,
                _ => ((order.len().saturating_sub(1)) / 2).max(1),
            };
            let (minority, majority) = order.split_at(size.min(order.len()));
            let mut m = minority.to_vec();
            m.sort_unstable();
            Cut {
                pairs: across(minority, majority),
                minority: m,
            }
        }
        Shape::Bridge => {
            let rest = &order[1.min(order.len())..];
            let (a, b) = rest.split_at(rest.len() / 2);
            Cut {
                pairs: across(a, b),
                minority: Vec::new(),
            }
        }
        Shape::OneWay => Cut {
            pairs: order
                .get(1)
                .map(|&to| vec![(target, to)])
                .unwrap_or_default(),
            minority: Vec::new(),
        },
    }
}

/// The nft script that (re)creates `table` (bridge family) dropping and counting the packets
/// of each pair, from `link(from)` to `link(to)` (the nodes' bridge ports).
pub fn rules(table: &str, pairs: &[(u64, u64)], link: impl Fn(u64) -> String) -> String {
    let mut s = format!(
        "table bridge {table} {{}}\ndelete table bridge {table}\ntable bridge {table} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n"
    );
    for &(from, to) in pairs {
        s.push_str(&format!(
            "    iifname \"{}\" oifname \"{}\" counter drop comment \"{from}>{to}\"\n",
            link(from),
            link(to)
        ));
    }
    s.push_str("  }\n}\n");
    s
}

/// Installs a script from `rules` (one transaction: the old table goes, the new one comes).
pub fn apply(script: &str) -> Result<(), Error> {
    cairn_netns::run("nft", &["-f", "-"], Some(script))?;
    Ok(())
}

/// Removes `table` and with it every rule of the partition; a missing table is healed.
pub fn heal(table: &str) -> Result<(), Error> {
    match cairn_netns::run("nft", &["delete", "table", "bridge", table], None) {
        Ok(_) => Ok(()),
        Err(cairn_netns::Error::Failed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The packets each rule of `table` dropped so far, by its (from, to) pair.
pub fn dropped(table: &str) -> Result<BTreeMap<(u64, u64), u64>, Error> {
    let json = cairn_netns::run("nft", &["-j", "list", "table", "bridge", table], None)?;
    parse_counters(&json)
}

/// Reads `nft -j list table` output: each rule's `from>to` comment and its counter.
fn parse_counters(json: &str) -> Result<BTreeMap<(u64, u64), u64>, Error> {
    let doc: serde_json::Value =
        serde_json::from_str(json).map_err(|e| Error::Config(format!("nft -j output: {e}")))?;
    let mut out = BTreeMap::new();
    let items = doc["nftables"].as_array().cloned().unwrap_or_default();
    for rule in items.iter().filter_map(|i| i.get("rule")) {
        let Some((from, to)) = rule["comment"]
            .as_str()
            .and_then(|c| c.split_once('>'))
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        else {
            continue;
        };
        let packets = rule["expr"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|e| e["counter"]["packets"].as_u64())
            .unwrap_or(0);
        out.insert((from, to), packets);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: [u64; 3] = [1, 2, 3];
    const FIVE: [u64; 5] = [1, 2, 3, 4, 5];

    fn both(pairs: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = pairs.iter().flat_map(|&(a, b)| [(a, b), (b, a)]).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn each_shape_cuts_the_pairs_it_names() {
        let iso = cut(Shape::Isolate, 2, &THREE, &[]);
        assert_eq!(iso.pairs, both(&[(2, 1), (2, 3)]));
        assert_eq!(iso.minority, [2]);
        // Of five nodes, two (the target and the next by id, wrapping) lose the majority.
        let split = cut(Shape::Split, 5, &FIVE, &[]);
        assert_eq!(split.minority, [1, 5]);
        assert_eq!(
            split.pairs,
            both(&[(5, 2), (5, 3), (5, 4), (1, 2), (1, 3), (1, 4)])
        );
        assert_eq!(
            cut(Shape::Split, 1, &THREE, &[2]),
            cut(Shape::Isolate, 1, &THREE, &[])
        );
        // The bridge node 3 is in no pair; its two sides are cut from each other.
        let bridge = cut(Shape::Bridge, 3, &FIVE, &[4]);
        assert_eq!(bridge.pairs, both(&[(4, 1), (4, 2), (5, 1), (5, 2)]));
        assert!(bridge.minority.is_empty());
        assert_eq!(cut(Shape::Bridge, 2, &THREE, &[]).pairs, both(&[(3, 1)]));
        // One way: only the target's packets to the next node.
        assert_eq!(cut(Shape::OneWay, 3, &THREE, &[]).pairs, [(3, 1)]);
        assert_eq!(cut(Shape::OneWay, 1, &THREE, &[]).pairs, [(1, 2)]);
    }

    #[test]
    fn a_split_leaves_the_targets_group_mates_on_the_majority_side() {
        // Node 2 leads a group on {1, 2, 3}: next by id would be 3, which would keep the
        // group's majority with the leader; the minority takes node 4 instead.
        let split = cut(Shape::Split, 2, &FIVE, &[1, 3]);
        assert_eq!(split.minority, [2, 4]);
        // Every node after the target shares its group: by id, as before.
        assert_eq!(cut(Shape::Split, 2, &FIVE, &[1, 3, 4, 5]).minority, [2, 3]);
        // Seven nodes, three in the minority, group on {6, 7, 1}: two non-members join 6.
        let seven = [1, 2, 3, 4, 5, 6, 7];
        assert_eq!(cut(Shape::Split, 6, &seven, &[7, 1]).minority, [2, 3, 6]);
    }

    #[test]
    fn rules_replace_the_table_and_drop_each_pair_between_its_ports() {
        let script = rules("cairn-chaos-t", &[(1, 2), (2, 1)], |id| {
            format!("cch7n{id}")
        });
        assert_eq!(
            script,
            "table bridge cairn-chaos-t {}\n\
             delete table bridge cairn-chaos-t\n\
             table bridge cairn-chaos-t {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n    \
             iifname \"cch7n1\" oifname \"cch7n2\" counter drop comment \"1>2\"\n    \
             iifname \"cch7n2\" oifname \"cch7n1\" counter drop comment \"2>1\"\n  }\n}\n"
        );
    }

    #[test]
    fn counters_are_read_by_pair_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "bridge", "name": "t", "handle": 1}},
            {"rule": {"family": "bridge", "table": "t", "chain": "forward", "handle": 2,
              "comment": "1>2", "expr": [{"match": {}}, {"counter": {"packets": 17, "bytes": 900}}, {"drop": null}]}},
            {"rule": {"family": "bridge", "table": "t", "chain": "forward", "handle": 3,
              "comment": "2>1", "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}]}"#;
        let counters = parse_counters(json).unwrap();
        assert_eq!(counters, BTreeMap::from([((1, 2), 17), ((2, 1), 0)]));
        assert!(parse_counters("not json").is_err());
    }
}
