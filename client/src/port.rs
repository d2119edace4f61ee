//! Loopback ports for clusters whose addresses must be fixed before their processes start
//! (a storaged's `--initial-cluster` names its peers' ports): picked outside the kernel's
//! ephemeral range, so an outgoing connection cannot take one between the pick and the bind.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::TcpListener;
use std::sync::Mutex;

/// Ports this process has handed out: a port picked but not yet bound by its user would
/// otherwise be free to pick again (two nodes of one test cluster on one port).
static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Lowest port this picks from: below it are well-known and commonly configured services.
const LOW: u16 = 10_000;

/// The kernel's ephemeral range (`net.ipv4.ip_local_port_range`), or Linux's default.
fn ephemeral_range() -> (u16, u16) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .filter_map(|p| p.parse::<u16>().ok());
    match (it.next(), it.next()) {
        (Some(lo), Some(hi)) if lo <= hi => (lo, hi),
        _ => (32_768, 60_999),
    }
}

/// A loopback port nothing listens on now, chosen at random below the ephemeral range (or
/// above it when the range starts too low to leave room); falls back to a kernel-assigned
/// port if none of 200 random tries can be bound. Never the same port twice in a process.
pub fn unused_loopback_port() -> std::io::Result<u16> {
    let (lo, hi) = ephemeral_range();
    let (from, to) = if lo > LOW + 1_000 {
        (LOW, lo - 1)
    } else {
        (hi.saturating_add(1).max(LOW), u16::MAX)
    };
    let span = u64::from(to - from) + 1;
    let seed = RandomState::new();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for i in 0u64..200 {
        let port = from + (seed.hash_one(i) % span) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    given.insert(port);
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_bindable_and_outside_the_ephemeral_range() {
        let (lo, hi) = ephemeral_range();
        for _ in 0..20 {
            let p = unused_loopback_port().unwrap();
            assert!(
                !(lo..=hi).contains(&p),
                "port {p} is in the ephemeral range {lo}-{hi}"
            );
            TcpListener::bind(("127.0.0.1", p)).expect("the picked port binds");
        }
    }

    #[test]
    fn a_port_is_never_handed_out_twice() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2_000 {
            let p = unused_loopback_port().unwrap();
            assert!(seen.insert(p), "port {p} handed out twice");
        }
    }
}
