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
    channels: Arc<Mutex<HashMap<String, Channel>>>,
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

    /// The channel cached under `key`, connected to `addr`.
    fn get_for(&self, key: &str, addr: &str) -> Result<Channel, String> {
        let mut m = self.channels.lock().expect("channel cache poisoned");
        if let Some(c) = m.get(key) {
            return Ok(c.clone());
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
        m.insert(key.to_string(), ch.clone());
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
}
