//! Peer addresses as flags give them: `host:port` with an IP or a DNS host, checked at
//! parse time, resolved when needed and re-resolved with a bounded backoff while they fail.
//!
//! A DNS name is kept as given wherever it is stored (Raft membership, the catalogue): the
//! transport resolves it again at every connect, so a peer whose address changes under a
//! stable name (a cluster DNS record) stays reachable.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

/// First wait after a failed resolution; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two resolutions of a name that does not resolve yet.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Checks that `entry` is `host:port` (`[v6]:port` for an IPv6 literal), naming `flag`
/// in the error. The host may be an IP or a DNS name; nothing is resolved here.
pub fn check_host_port(flag: &str, entry: &str) -> Result<(), String> {
    let bad = |why: &str| format!("--{flag}: `{entry}` is not host:port ({why})");
    if entry.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = entry.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
    let dns_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 || !host.split('.').all(dns_label) {
        return Err(bad("the host is neither an IP address nor a DNS name"));
    }
    Ok(())
}

/// The addresses `entry` (`host:port`) resolves to now.
pub async fn resolve(entry: &str) -> std::io::Result<BTreeSet<SocketAddr>> {
    Ok(tokio::net::lookup_host(entry).await?.collect())
}

/// Resolves `entry` (from `--flag`), retrying while it does not resolve with a backoff of
/// 200 ms doubling to 5 s, and a warning each time: a cluster DNS record can appear only
/// after its pods start.
pub async fn resolve_retrying(flag: &str, entry: &str) -> BTreeSet<SocketAddr> {
    let mut wait = FIRST_BACKOFF;
    for attempt in 1u64.. {
        match resolve(entry).await {
            Ok(addrs) if !addrs.is_empty() => return addrs,
            Ok(_) => {
                tracing::warn!(flag, entry, attempt, retry_in = ?wait, "peer name resolves to no address yet; retrying")
            }
            Err(e) => {
                tracing::warn!(flag, entry, attempt, retry_in = ?wait, error = %e, "peer name does not resolve yet; retrying")
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_BACKOFF);
    }
    unreachable!("the attempt counter does not end")
}

/// Whether two `host:port` entries name the same endpoint: equal as written, or resolving
/// to at least one common socket address (`a` is resolved with retries, `b` once).
pub async fn same_endpoint(flag: &str, a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let a = resolve_retrying(flag, a).await;
    match resolve(b).await {
        Ok(b) => !a.is_disjoint(&b),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_entries_are_checked_without_resolving() {
        for ok in [
            "127.0.0.1:7001",
            "[::1]:7001",
            "localhost:7001",
            "cairn-storaged.cairn-system.svc:7001",
            "node-1.example.com.:1",
        ] {
            assert!(check_host_port("join", ok).is_ok(), "{ok}");
        }
        for bad in [
            "localhost",
            "localhost:0",
            "localhost:70000",
            ":7001",
            "a_b:7001",
            "-a:7001",
        ] {
            let err = check_host_port("join", bad).unwrap_err();
            assert!(err.starts_with("--join: `"), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn a_name_and_its_address_are_the_same_endpoint() {
        assert!(same_endpoint("initial-cluster", "localhost:7001", "127.0.0.1:7001").await);
        assert!(!same_endpoint("initial-cluster", "localhost:7001", "127.0.0.1:7002").await);
        assert!(!same_endpoint("initial-cluster", "127.0.0.2:7001", "127.0.0.1:7001").await);
    }
}
