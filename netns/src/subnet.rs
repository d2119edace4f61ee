//! Private subnets and their bridges: picking a /24 no host route overlaps, creating its bridge
//! with the host's address on it, and a veth pair from the bridge into a network namespace.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use crate::cmd::{ip, link_exists, run};
use crate::{Error, Result};

/// `a.b.c.d/len` (or a bare address, a /32) as (network, prefix length).
pub fn parse_cidr(s: &str) -> Option<(u32, u32)> {
    let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
    let a: Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((u32::from(a), len))
}

/// Whether two (network, prefix length) ranges share an address.
pub fn overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

/// Every destination the host routes (all tables), except the default route.
pub fn host_routes() -> Vec<(u32, u32)> {
    let out = Command::new("ip")
        .args(["-o", "-4", "route", "show", "table", "all"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let mut t = l.split_whitespace();
            let first = t.next()?;
            let dest = match first {
                "local" | "broadcast" | "unicast" | "multicast" | "anycast" | "blackhole"
                | "unreachable" | "prohibit" | "throw" | "nat" => t.next()?,
                d => d,
            };
            parse_cidr(dest)
        })
        .collect()
}

/// A bridge on the private subnet `prefix.<index>.0/24`, the host at `.1`.
#[derive(Debug, Clone)]
pub struct Bridge {
    pub name: String,
    pub index: u8,
    pub prefix: [u8; 2],
}

impl Bridge {
    /// Creates the bridge of the first candidate index whose name (`name(index)`) is free and
    /// whose /24 no host route overlaps, labelled `alias`, with the host's address, up.
    pub fn create_free(
        prefix: [u8; 2],
        candidates: impl IntoIterator<Item = u8>,
        name: impl Fn(u8) -> String,
        alias: &str,
    ) -> Result<Bridge> {
        let routes = host_routes();
        for index in candidates {
            let bridge = Bridge {
                name: name(index),
                index,
                prefix,
            };
            let net = (u32::from(bridge.address(0)), 24);
            if routes.iter().any(|r| overlaps(*r, net)) || link_exists(&bridge.name) {
                continue;
            }
            match ip(&["link", "add", &bridge.name, "type", "bridge"]) {
                Ok(()) => {}
                // Taken by another run between the check and the add.
                Err(_) if link_exists(&bridge.name) => continue,
                Err(e) => return Err(e),
            }
            let gw = format!("{}/24", bridge.gateway());
            let configured = ip(&["link", "set", &bridge.name, "alias", alias])
                .and_then(|()| ip(&["addr", "add", &gw, "dev", &bridge.name]))
                .and_then(|()| ip(&["link", "set", &bridge.name, "up"]));
            if let Err(e) = configured {
                bridge.delete();
                return Err(e);
            }
            return Ok(bridge);
        }
        Err(Error::NoSubnet(format!(
            "every {}.{}.<i>.0/24 candidate is routed or its bridge exists",
            prefix[0], prefix[1]
        )))
    }

    /// `prefix.<index>.host`.
    pub fn address(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.index, host)
    }

    /// The host's address on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        self.address(1)
    }

    /// The alias (`ifalias`) of link `name`, if it exists.
    pub fn alias_of(name: &str) -> Option<String> {
        std::fs::read_to_string(format!("/sys/class/net/{name}/ifalias"))
            .ok()
            .map(|a| a.trim().to_string())
    }

    /// Removes the bridge (its ports stay, detached); a failure is logged.
    pub fn delete(&self) {
        if let Err(e) = ip(&["link", "del", &self.name]) {
            tracing::warn!(bridge = %self.name, error = %e, "bridge removal failed");
        }
    }
}

/// A veth pair: `host_end` on `bridge`, `peer` moved into namespace `ns` (a pid or the name of
/// a namespace under /run/netns, as `ip link set netns` takes it, reached at `ns_path`) where it
/// becomes `eth0` with `address`/24 and a default route via `gateway`. A leftover `host_end`
/// is replaced.
pub fn attach_veth(
    bridge: &str,
    (host_end, peer): (&str, &str),
    (ns, ns_path): (&str, &Path),
    address: Ipv4Addr,
    gateway: Ipv4Addr,
) -> Result<()> {
    if link_exists(host_end) {
        let _ = ip(&["link", "del", host_end]);
    }
    ip(&[
        "link", "add", host_end, "type", "veth", "peer", "name", peer,
    ])?;
    ip(&["link", "set", host_end, "master", bridge])?;
    ip(&["link", "set", host_end, "up"])?;
    ip(&["link", "set", peer, "netns", ns])?;
    let batch = format!(
        "link set lo up\nlink set {peer} name eth0\naddr add {address}/24 dev eth0\nlink set eth0 up\nroute add default via {gateway}\n"
    );
    let netns = format!("--net={}", ns_path.display());
    run("nsenter", &[&netns, "ip", "-batch", "-"], Some(&batch)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_overlap_by_the_shorter_prefix() {
        let net = parse_cidr("10.213.7.0/24").unwrap();
        assert!(overlaps(parse_cidr("10.0.0.0/8").unwrap(), net));
        assert!(overlaps(parse_cidr("10.213.7.5").unwrap(), net));
        assert!(!overlaps(parse_cidr("10.213.8.0/24").unwrap(), net));
        assert!(!overlaps(parse_cidr("192.0.2.0/24").unwrap(), net));
        assert!(overlaps(parse_cidr("0.0.0.0/0").unwrap(), net));
        assert_eq!(parse_cidr("default"), None);
    }
}
