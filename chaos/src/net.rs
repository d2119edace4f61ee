//! A chaos run's network: a bridge on a private 10.214.<i>.0/24 (the host at .1), one named
//! network namespace per node linked to it, and the removal of all of it, a crashed run's too.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_netns::{Bridge, attach_veth, ip, kill_until_gone};
use cairn_storaged::testkit::Placement;

use crate::error::Error;

/// The run subnets: `10.214.<i>.0/24` (the harness uses 10.213), bridge `cch<i>`.
pub const PREFIX: [u8; 2] = [10, 214];
/// Where `ip netns` keeps named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// A bridge's alias is `cairn-chaos:<run>:<pid of the process that made it>`.
const ALIAS: &str = "cairn-chaos";
const KILL_BOUND: Duration = Duration::from_secs(10);
/// A run name's longest length (it goes into namespace and nftables table names).
const NAME_MAX: usize = 32;

/// Run names with a live network in this process.
static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// One node's place on the run's network.
#[derive(Clone, Debug)]
pub struct NodeNet {
    /// The namespace's name under /run/netns.
    pub netns: String,
    /// The host end of its veth, a port of the bridge (what partition rules match).
    pub host_link: String,
    pub ip: Ipv4Addr,
}

/// The network of run `name`; removed on drop.
#[derive(Debug)]
pub struct ChaosNet {
    pub name: String,
    pub bridge: Bridge,
    pub nodes: Vec<NodeNet>,
    down: bool,
    /// The number of the next partition's table (`partition_table`).
    partitions: AtomicU64,
}

/// A run name: 1 to 32 of `a-z`, `0-9`, `-`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    match ok {
        true => Ok(()),
        false => Err(Error::Config(format!(
            "name {name:?}: 1 to {NAME_MAX} of a-z, 0-9 and '-', not starting with '-'"
        ))),
    }
}

fn netns_name(run: &str, k: usize) -> String {
    format!("{ALIAS}-{run}-{k}")
}

fn netns_path(netns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(netns)
}

impl ChaosNet {
    /// Removes what a crashed run of this name left, then makes the bridge and `nodes`
    /// namespaces (node k at .(10+k)). Fails if a live run has this name.
    pub fn create(name: &str, nodes: usize) -> Result<ChaosNet, Error> {
        check_name(name)?;
        cleanup_leftovers(name)?;
        if !LIVE.lock().expect("registry").insert(name.to_string()) {
            return Err(Error::Config(format!(
                "name {name:?}: a run of this name is live"
            )));
        }
        let alias = format!("{ALIAS}:{name}:{}", std::process::id());
        let bridge = match Bridge::create_free(PREFIX, 0..=255, |i| format!("cch{i}"), &alias) {
            Ok(b) => b,
            Err(e) => {
                LIVE.lock().expect("registry").remove(name);
                return Err(e.into());
            }
        };
        let mut net = ChaosNet {
            name: name.to_string(),
            bridge,
            nodes: Vec::with_capacity(nodes),
            down: false,
            partitions: AtomicU64::new(1),
        };
        for k in 1..=nodes {
            // On an error `net` is dropped, which removes what was made.
            let node = NodeNet {
                netns: netns_name(name, k),
                host_link: format!("{}n{k}", net.bridge.name),
                ip: net.bridge.address(10 + k as u8),
            };
            ip(&["netns", "add", &node.netns])?;
            net.nodes.push(node.clone());
            attach_veth(
                &net.bridge.name,
                (&node.host_link, &format!("{}p{k}", net.bridge.name)),
                (&node.netns, &netns_path(&node.netns)),
                node.ip,
                net.bridge.gateway(),
            )?;
        }
        tracing::info!(run = name, bridge = %net.bridge.name, gateway = %net.bridge.gateway(), nodes, "chaos network created");
        Ok(net)
    }

    /// Where each node's storaged runs, in node order.
    pub fn placements(&self) -> Vec<Placement> {
        self.nodes
            .iter()
            .map(|n| Placement {
                netns: netns_path(&n.netns),
                ip: n.ip.into(),
            })
            .collect()
    }

    /// The nftables table (bridge family) of a partition made by hand (tests).
    pub fn table(&self) -> String {
        table_of(&self.name)
    }

    /// A new nftables table (bridge family) for one partition of the nemesis: each partition
    /// has its own, so partitions overlap and each heals (and counts its drops) alone.
    pub fn partition_table(&self) -> String {
        let k = self.partitions.fetch_add(1, Ordering::Relaxed);
        format!("{}{PARTITION_SEP}{k}", table_of(&self.name))
    }

    /// Node `id`'s (1-based) link on the bridge.
    pub fn host_link(&self, id: u64) -> Option<&str> {
        let i = usize::try_from(id).ok()?.checked_sub(1)?;
        self.nodes.get(i).map(|n| n.host_link.as_str())
    }

    /// Forgets this network without removing it, as a run killed by SIGKILL would: for
    /// tests of the next run's cleanup.
    pub fn crash(mut self) {
        LIVE.lock().expect("registry").remove(&self.name);
        self.down = true;
    }

    /// Removes the partition table, the namespaces (killing what still runs in them) and the
    /// bridge. Idempotent.
    pub fn destroy(&mut self) {
        if std::mem::replace(&mut self.down, true) {
            return;
        }
        remove(&self.name);
        remove_bridge(&self.bridge);
        LIVE.lock().expect("registry").remove(&self.name);
        tracing::info!(run = %self.name, bridge = %self.bridge.name, "chaos network removed");
    }
}

impl Drop for ChaosNet {
    fn drop(&mut self) {
        self.destroy();
    }
}

fn table_of(run: &str) -> String {
    format!("{ALIAS}-{run}")
}

/// Between a run's table name and a partition's number: not allowed in run names, so no run's
/// tables are another run's.
const PARTITION_SEP: &str = "_p";

/// Of the bridge-family tables `names`, those of run `run`: its hand-made table and its
/// partitions' tables.
fn tables_of<'a>(run: &str, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let base = table_of(run);
    names
        .into_iter()
        .filter(|n| {
            *n == base
                || n.strip_prefix(&base)
                    .and_then(|r| r.strip_prefix(PARTITION_SEP))
                    .is_some_and(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_digit()))
        })
        .map(str::to_string)
        .collect()
}

/// The names of the bridge-family nftables tables now present.
fn bridge_tables() -> Vec<String> {
    let Ok(json) = cairn_netns::run("nft", &["-j", "list", "tables", "bridge"], None) else {
        return Vec::new();
    };
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    doc["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["table"]["name"].as_str().map(str::to_string))
        .collect()
}

/// Deletes run `name`'s partition tables and its namespaces (after killing their processes),
/// each even if another failed.
fn remove(name: &str) {
    let tables = bridge_tables();
    for table in tables_of(name, tables.iter().map(String::as_str)) {
        if let Err(e) = crate::partition::heal(&table) {
            tracing::warn!(%table, error = %e, "partition table removal failed");
        }
    }
    let prefix = format!("{ALIAS}-{name}-");
    let entries = std::fs::read_dir(NETNS_DIR).map(|rd| rd.flatten().collect::<Vec<_>>());
    for e in entries.unwrap_or_default() {
        let file = e.file_name().to_string_lossy().into_owned();
        let ours = file
            .strip_prefix(&prefix)
            .is_some_and(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_digit()));
        if !ours {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(e.path()) {
            kill_until_gone(&format!("net:[{}]", meta.ino()), KILL_BOUND);
        }
        if let Err(e) = ip(&["netns", "del", &file]) {
            tracing::warn!(netns = %file, error = %e, "namespace removal failed");
        }
    }
}

/// Deletes `b` and the host ends of the veths on it (gone with their namespace, unless a
/// namespace outlived its removal).
fn remove_bridge(b: &Bridge) {
    let ports = format!("{}n", b.name);
    for link in links() {
        if link
            .strip_prefix(&ports)
            .is_some_and(|k| k.chars().all(|c| c.is_ascii_digit()))
        {
            let _ = ip(&["link", "del", &link]);
        }
    }
    b.delete();
}

fn links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes what a run named `name` left behind when its process died (its bridge names a
/// process that is gone): processes in its namespaces, the namespaces, links and table.
/// Fails, removing nothing, if a live process owns a run of that name.
pub fn cleanup_leftovers(name: &str) -> Result<(), Error> {
    let prefix = format!("{ALIAS}:{name}:");
    let me = std::process::id();
    let mut bridges = Vec::new();
    for link in links() {
        let Some(pid) = Bridge::alias_of(&link)
            .and_then(|a| a.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()))
        else {
            continue;
        };
        let live = match pid == me {
            true => LIVE.lock().expect("registry").contains(name),
            false => Path::new(&format!("/proc/{pid}")).exists(),
        };
        if live {
            return Err(Error::Config(format!(
                "name {name:?}: process {pid} runs a chaos run of this name (bridge {link})"
            )));
        }
        let index = link.strip_prefix("cch").and_then(|i| i.parse::<u8>().ok());
        bridges.extend(index.map(|index| Bridge {
            name: link.clone(),
            index,
            prefix: PREFIX,
        }));
        tracing::warn!(run = name, bridge = %link, pid, "removing a network left by a crashed run");
    }
    remove(name);
    bridges.iter().for_each(remove_bridge);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_tables_are_its_own_and_its_partitions() {
        let names = [
            "cairn-chaos-a",
            "cairn-chaos-a_p1",
            "cairn-chaos-a_p12",
            "cairn-chaos-a-p1",
            "cairn-chaos-ab_p1",
            "cairn-chaos-a_p",
            "cairn-chaos-a_px",
            "other",
        ];
        assert_eq!(
            tables_of("a", names),
            ["cairn-chaos-a", "cairn-chaos-a_p1", "cairn-chaos-a_p12"]
        );
        assert_eq!(tables_of("a-p1", names), ["cairn-chaos-a-p1"]);
    }

    #[test]
    fn run_names_are_checked() {
        for good in ["a", "part-isolate", "0x", &"a".repeat(NAME_MAX)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "A",
            "a_b",
            "a b",
            "a/b",
            &"a".repeat(NAME_MAX + 1),
        ] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains("name"), "{bad}: {e}");
        }
        assert_eq!(netns_name("r", 3), "cairn-chaos-r-3");
        assert_eq!(table_of("r"), "cairn-chaos-r");
    }
}
