//! Lazily connected gRPC channels to peer nodes, keyed by address and shared by every
//! group, with each peer's reachability (`PeerHealth`) beside its channels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::Security;
use cairn_proto::cairn::v1::raft_service_client::RaftServiceClient;
use tonic::transport::Channel;

use super::backoff::PeerHealth;
use super::hints::AddressHints;

/// Lazily connected channels keyed by peer address.
#[derive(Clone)]
pub struct ChannelCache {
    /// Each channel with its peer's `PeerHealth::failed_total` when it was dialled.
    channels: Arc<Mutex<HashMap<String, (Channel, u64)>>>,
    health: Arc<Mutex<HashMap<String, Arc<PeerHealth>>>>,
    /// Where peers were found through the seeds, dialled before their membership address.
    hints: AddressHints,
    security: Security,
}

impl ChannelCache {
    /// Channels that connect with `security` (this node's certificate, or plaintext).
    pub fn new(security: Security) -> Self {
        ChannelCache {
            channels: Arc::default(),
            health: Arc::default(),
            hints: AddressHints::default(),
            security,
        }
    }

    /// Where peers were last found answering (`crate::hints` fills it).
    pub fn hints(&self) -> &AddressHints {
        &self.hints
    }

    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        self.get_for(addr, addr)
    }

    /// Drops the channels to `addr` (a peer that moved away from it); whether there were
    /// any. A later call for `addr` connects anew; its reachability record stays.
    pub fn forget(&self, addr: &str) -> bool {
        let mut m = self.channels.lock().expect("channel cache poisoned");
        let plain = m.remove(addr).is_some();
        let append = m.remove(&format!("{addr}#append")).is_some();
        plain || append
    }

    /// The reachability of the node at `addr`, shared by all groups and channels.
    pub fn health(&self, addr: &str) -> Arc<PeerHealth> {
        let mut m = self.health.lock().expect("peer health map poisoned");
        m.entry(addr.to_string())
            .or_insert_with(|| Arc::new(PeerHealth::new(addr)))
            .clone()
    }

    /// Node `addr` sent this node a message: ends a backoff toward it (`PeerHealth::heard_from`);
    /// whether one ended. A peer never dialled has none to end.
    pub fn heard_from(&self, addr: &str) -> bool {
        let health = self
            .health
            .lock()
            .expect("peer health map poisoned")
            .get(addr)
            .cloned();
        health.is_some_and(|h| h.heard_from())
    }

    /// The channel cached under `key`, connected to `addr`; dialled anew when the peer
    /// failed since it was dialled: a partition's stale connection would deliver only at its
    /// next TCP retransmission, up to seconds after the heal, while a new one connects at once.
    fn get_for(&self, key: &str, addr: &str) -> Result<Channel, String> {
        let failed = self
            .health
            .lock()
            .expect("peer health map poisoned")
            .get(addr)
            .map_or(0, |h| h.failed_total());
        let mut m = self.channels.lock().expect("channel cache poisoned");
        match m.get(key) {
            Some((c, at)) if *at == failed => return Ok(c.clone()),
            Some(_) => tracing::debug!(peer = %addr, "peer failed since dialled: dialling anew"),
            None => {}
        }
        let ch = self
            .security
            .channel(addr, |e| {
                e.connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .http2_adaptive_window(true)
                    // A peer that vanished without closing (power loss, partition) is found
                    // within 15 s even on a connection carrying only a long-lived `AppendStream`.
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .keep_alive_while_idle(true)
            })
            .map_err(|e| format!("peer channel: {}", e.message()))?;
        m.insert(key.to_string(), (ch.clone(), failed));
        Ok(ch)
    }

    pub fn client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, String> {
        Ok(Self::limits(RaftServiceClient::new(self.get(addr)?)))
    }

    /// A client on a connection of its own for `AppendStream`s: a follower that stops
    /// reading one (its group's Raft busy, 64 batches pending) holds HTTP/2 window on that
    /// connection, which must not hold up heartbeats and votes.
    pub(super) fn stream_client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, String> {
        let ch = self.get_for(&format!("{addr}#append"), addr)?;
        Ok(Self::limits(RaftServiceClient::new(ch)))
    }

    fn limits(c: RaftServiceClient<Channel>) -> RaftServiceClient<Channel> {
        c.max_decoding_message_size(512 << 20)
            .max_encoding_message_size(512 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forgetting_an_address_drops_its_channels_only() {
        let c = ChannelCache::new(Security::Insecure);
        c.get("127.0.0.1:1").unwrap();
        c.stream_client("127.0.0.1:1").unwrap();
        c.get("127.0.0.1:2").unwrap();
        assert!(c.forget("127.0.0.1:1"));
        assert!(!c.forget("127.0.0.1:1"), "nothing left to drop");
        let m = c.channels.lock().unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), ["127.0.0.1:2"]);
    }

    #[tokio::test]
    async fn a_peer_that_failed_since_its_channel_was_dialled_is_dialled_anew() {
        let c = ChannelCache::new(Security::Insecure);
        let addr = "127.0.0.1:1";
        let health = c.health(addr);
        c.get(addr).unwrap();
        c.get(addr).unwrap();
        let dialled = |c: &ChannelCache| c.channels.lock().unwrap()[addr].1;
        assert_eq!(dialled(&c), 0, "cached while the peer answers");
        health.attempt().failed("unreachable");
        c.get(addr).unwrap();
        assert_eq!(dialled(&c), 1, "dialled again after the failure");
        c.get(addr).unwrap();
        assert_eq!(dialled(&c), 1, "then cached");
    }
}
