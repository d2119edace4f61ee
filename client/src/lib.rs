//! Client library for storaged: finds the meta and per-volume leaders, follows
//! not-leader hints, retries only idempotent or never-executed calls, and bounds every wait.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_proto::cairn::v1 as pb;
use pb::block_service_client::BlockServiceClient;
use pb::node_service_client::NodeServiceClient;
use pb::volume_service_client::VolumeServiceClient;
use tonic::Status;
use tonic::transport::Channel;

mod port;
pub mod reload;
mod status;
mod tls;
mod write_ids;
pub use port::unused_loopback_port;
pub use status::{LEADER_HINT_KEY, NOT_EXECUTED_KEY, never_executed, refused};
use status::{Retry, leader_hint, normalise, retryable, unexecuted};
pub use tls::{SERVER_NAME, Security, TlsFiles};
pub use write_ids::{SEQ_WINDOW, WriteIds, WriteTicket};

/// Default bound on one logical call, retries included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(8);
/// Bound on one attempt against one server.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Leaders {
    meta: Option<String>,
    volumes: HashMap<String, String>,
}

/// A cheap-to-clone handle on a storaged cluster.
#[derive(Clone)]
pub struct VolumeClient {
    endpoints: Arc<Vec<String>>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    leaders: Arc<Mutex<Leaders>>,
    security: Security,
    deadline: Duration,
    attempt: Duration,
    /// This client's writer identity (shared by its clones), for exactly-once writes.
    writes: Arc<WriteIds>,
}

impl VolumeClient {
    /// `endpoints` are `host:port` (or `http://host:port`) of any storaged nodes.
    pub fn new(endpoints: Vec<String>, security: Security) -> Result<Self, Status> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .map(normalise)
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(Status::invalid_argument(
                "endpoints: at least one storaged address is required",
            ));
        }
        Ok(VolumeClient {
            endpoints: Arc::new(endpoints),
            channels: Arc::default(),
            leaders: Arc::default(),
            security,
            deadline: DEFAULT_DEADLINE,
            attempt: ATTEMPT_TIMEOUT,
            writes: Arc::new(WriteIds::new()),
        })
    }

    /// Overrides the bound on one logical call (retries included).
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Bounds each attempt by `attempt` instead of `ATTEMPT_TIMEOUT`, for long calls
    /// (a volume copy). Dead peers are still noticed by HTTP/2 keep-alives.
    pub fn with_attempt_timeout(mut self, attempt: Duration) -> Self {
        self.attempt = attempt;
        self
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("channel cache poisoned");
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let attempt = self.attempt;
        let ch = self.security.channel(addr, |e| {
            e.connect_timeout(Duration::from_millis(800))
                .timeout(attempt)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(20))
                .tcp_nodelay(true)
                .http2_adaptive_window(true)
        })?;
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Candidate order: the known leader first, then every endpoint.
    fn candidates(&self, known: Option<String>) -> Vec<String> {
        let mut out = Vec::with_capacity(self.endpoints.len() + 1);
        if let Some(k) = known {
            out.push(k);
        }
        for e in self.endpoints.iter() {
            if !out.contains(e) {
                out.push(e.clone());
            }
        }
        out
    }

    /// Runs `op` against the right server: follows hints, rotates endpoints, bounded by the deadline.
    async fn call<T, F, Fut>(&self, volume: Option<&str>, retry: Retry, op: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(20);
        let mut last_err: Option<Status> = None;
        let mut next_hint: Option<String> = None;
        // Whether some attempt may have executed (an answer that is not a refusal before executing).
        let mut maybe_executed = false;
        loop {
            let known = next_hint.take().or_else(|| {
                let l = self.leaders.lock().expect("leader cache poisoned");
                match volume {
                    Some(v) => l.volumes.get(v).cloned(),
                    None => l.meta.clone(),
                }
            });
            // Addresses that failed this round without naming another: a hint back to one
            // of them (a leader's old address, still in the others' catalogue after it
            // moved) is not followed again in the same round; the other endpoints are tried.
            let mut failed: Vec<String> = Vec::new();
            for addr in self.candidates(known) {
                if start.elapsed() >= self.deadline {
                    break;
                }
                let ch = self.channel(&addr)?;
                let remaining = self
                    .deadline
                    .saturating_sub(start.elapsed())
                    .min(self.attempt);
                let res = tokio::time::timeout(remaining, op(ch)).await;
                let status = match res {
                    Ok(Ok(v)) => {
                        let mut l = self.leaders.lock().expect("leader cache poisoned");
                        match volume {
                            Some(v) => {
                                l.volumes.insert(v.to_string(), addr.clone());
                            }
                            None => l.meta = Some(addr.clone()),
                        }
                        return Ok(v);
                    }
                    Ok(Err(status)) => status,
                    Err(_) => {
                        Status::deadline_exceeded(format!("no answer from {addr} in {remaining:?}"))
                    }
                };
                if !retryable(&status, retry) {
                    return Err(status);
                }
                maybe_executed |= !unexecuted(&status);
                tracing::debug!(addr = %addr, code = ?status.code(), msg = status.message(), "storaged call retry");
                match leader_hint(&status) {
                    Some(hint) if hint != addr && !failed.contains(&hint) => {
                        next_hint = Some(hint);
                        last_err = Some(status);
                        break;
                    }
                    Some(_) => {}
                    None => failed.push(addr),
                }
                last_err = Some(status);
            }
            if start.elapsed() >= self.deadline {
                let detail = last_err
                    .map(|s| s.message().to_string())
                    .unwrap_or_default();
                let mut status = Status::unavailable(format!(
                    "storaged unavailable after {:?} (no leader or no quorum): {detail}",
                    self.deadline
                ));
                if !maybe_executed {
                    status.metadata_mut().insert(
                        NOT_EXECUTED_KEY,
                        tonic::metadata::MetadataValue::from_static("1"),
                    );
                }
                return Err(status);
            }
            if next_hint.is_some() {
                // Following a redirect: retry at once, but never spin if hints bounce.
                tokio::time::sleep(Duration::from_millis(5)).await;
            } else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(250));
            }
        }
    }

    fn vol(ch: Channel) -> VolumeServiceClient<Channel> {
        VolumeServiceClient::new(ch)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    fn blk(ch: Channel) -> BlockServiceClient<Channel> {
        BlockServiceClient::new(ch)
            .max_decoding_message_size(8 << 20)
            .max_encoding_message_size(8 << 20)
    }

    pub async fn create_volume(&self, req: pb::CreateVolumeRequest) -> Result<pb::Volume, Status> {
        self.call(None, Retry::Idempotent, |ch| {
            let req = req.clone();
            async move {
                Ok(Self::vol(ch)
                    .create_volume(req)
                    .await?
                    .into_inner()
                    .volume
                    .unwrap_or_default())
            }
        })
        .await
    }

    pub async fn delete_volume(&self, name: &str) -> Result<(), Status> {
        let req = pb::DeleteVolumeRequest {
            name: name.to_string(),
        };
        self.call(None, Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { Self::vol(ch).delete_volume(req).await.map(|_| ()) }
        })
        .await
    }

    pub async fn resize_volume(&self, name: &str, size_bytes: u64) -> Result<pb::Volume, Status> {
        let req = pb::ResizeVolumeRequest {
            name: name.to_string(),
            size_bytes,
        };
        self.call(None, Retry::Idempotent, |ch| {
            let req = req.clone();
            async move {
                Ok(Self::vol(ch)
                    .resize_volume(req)
                    .await?
                    .into_inner()
                    .volume
                    .unwrap_or_default())
            }
        })
        .await
    }

    pub async fn get_volume(&self, name: &str) -> Result<pb::Volume, Status> {
        let req = pb::GetVolumeRequest {
            name: name.to_string(),
        };
        self.call(None, Retry::Idempotent, |ch| {
            let req = req.clone();
            async move {
                Ok(Self::vol(ch)
                    .get_volume(req)
                    .await?
                    .into_inner()
                    .volume
                    .unwrap_or_default())
            }
        })
        .await
    }

    pub async fn list_volumes(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListVolumesResponse, Status> {
        let req = pb::ListVolumesRequest {
            page_size,
            page_token: page_token.to_string(),
        };
        self.call(None, Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { Ok(Self::vol(ch).list_volumes(req).await?.into_inner()) }
        })
        .await
    }

    pub async fn create_snapshot(
        &self,
        name: &str,
        source_volume: &str,
    ) -> Result<pb::Snapshot, Status> {
        let req = pb::CreateSnapshotRequest {
            name: name.to_string(),
            source_volume: source_volume.to_string(),
        };
        self.call(None, Retry::Idempotent, |ch| {
            let req = req.clone();
            async move {
                Ok(Self::vol(ch)
                    .create_snapshot(req)
                    .await?
                    .into_inner()
                    .snapshot
                    .unwrap_or_default())
            }
        })
        .await
    }

    pub async fn delete_snapshot(&self, name: &str) -> Result<(), Status> {
        let req = pb::DeleteSnapshotRequest {
            name: name.to_string(),
        };
        self.call(None, Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { Self::vol(ch).delete_snapshot(req).await.map(|_| ()) }
        })
        .await
    }

    pub async fn list_snapshots(
        &self,
        req: pb::ListSnapshotsRequest,
    ) -> Result<pb::ListSnapshotsResponse, Status> {
        self.call(None, Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { Ok(Self::vol(ch).list_snapshots(req).await?.into_inner()) }
        })
        .await
    }

    /// Copies `volume`'s written data into `target` (on `volume`'s leader). Long for a
    /// large volume: use a client `with_attempt_timeout`. Re-running it is harmless.
    pub async fn copy_to(&self, volume: &str, target: &str) -> Result<u64, Status> {
        let req = pb::CopyToRequest {
            volume: volume.to_string(),
            target: target.to_string(),
        };
        self.call(Some(volume), Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { Ok(Self::blk(ch).copy_to(req).await?.into_inner().bytes_copied) }
        })
        .await
    }

    /// Every volume, following pages.
    pub async fn list_all_volumes(&self) -> Result<Vec<pb::Volume>, Status> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.list_volumes(500, &token).await?;
            out.extend(page.volumes);
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    pub async fn get_capacity(
        &self,
        req: pb::GetCapacityRequest,
    ) -> Result<pb::GetCapacityResponse, Status> {
        self.call(None, Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { Ok(Self::vol(ch).get_capacity(req).await?.into_inner()) }
        })
        .await
    }

    pub async fn publish_volume(
        &self,
        req: pb::PublishVolumeRequest,
    ) -> Result<pb::Volume, Status> {
        self.call(None, Retry::Idempotent, |ch| {
            let req = req.clone();
            async move {
                Ok(Self::vol(ch)
                    .publish_volume(req)
                    .await?
                    .into_inner()
                    .volume
                    .unwrap_or_default())
            }
        })
        .await
    }

    pub async fn unpublish_volume(&self, name: &str, node_name: &str) -> Result<(), Status> {
        let req = pb::UnpublishVolumeRequest {
            name: name.to_string(),
            node_name: node_name.to_string(),
        };
        self.call(None, Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { Self::vol(ch).unpublish_volume(req).await.map(|_| ()) }
        })
        .await
    }

    pub async fn list_nodes(&self) -> Result<Vec<pb::Node>, Status> {
        self.call(None, Retry::Idempotent, |ch| async move {
            Ok(Self::vol(ch)
                .list_nodes(pb::ListNodesRequest {})
                .await?
                .into_inner()
                .nodes)
        })
        .await
    }

    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusResponse, Status> {
        self.call(None, Retry::Idempotent, |ch| async move {
            Ok(Self::vol(ch)
                .cluster_status(pb::ClusterStatusRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    pub async fn add_node(&self, req: pb::AddNodeRequest) -> Result<pb::Node, Status> {
        self.call(None, Retry::OnlyUnexecuted, |ch| {
            let req = req.clone();
            async move {
                Ok(Self::vol(ch)
                    .add_node(req)
                    .await?
                    .into_inner()
                    .node
                    .unwrap_or_default())
            }
        })
        .await
    }

    /// Cordons (`cordon`) or uncordons the named node; idempotent.
    pub async fn cordon_node(&self, name: &str, cordon: bool) -> Result<pb::Node, Status> {
        let req = pb::CordonNodeRequest {
            name: name.to_string(),
            cordon,
        };
        self.call(None, Retry::Idempotent, |ch| {
            let req = req.clone();
            async move {
                Ok(Self::vol(ch)
                    .cordon_node(req)
                    .await?
                    .into_inner()
                    .node
                    .unwrap_or_default())
            }
        })
        .await
    }

    /// Starts moving every replica off the named node; idempotent.
    pub async fn drain_node(&self, name: &str) -> Result<pb::DrainNodeResponse, Status> {
        let req = pb::DrainNodeRequest {
            name: name.to_string(),
        };
        self.call(None, Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { Ok(Self::vol(ch).drain_node(req).await?.into_inner()) }
        })
        .await
    }

    pub async fn remove_node(&self, id: u64) -> Result<(), Status> {
        self.call(None, Retry::OnlyUnexecuted, |ch| async move {
            Self::vol(ch)
                .remove_node(pb::RemoveNodeRequest { id })
                .await
                .map(|_| ())
        })
        .await
    }

    pub async fn read(&self, volume: &str, offset: u64, length: u32) -> Result<Vec<u8>, Status> {
        let req = pb::ReadRequest {
            volume: volume.to_string(),
            offset,
            length,
        };
        self.call(Some(volume), Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { Ok(Self::blk(ch).read(req).await?.into_inner().data.to_vec()) }
        })
        .await
    }

    /// An unfenced write (generation 0): for callers that never published the volume.
    pub async fn write(&self, volume: &str, offset: u64, data: bytes::Bytes) -> Result<(), Status> {
        self.write_as(volume, offset, data, 0).await
    }

    /// A write by the holder of publish `generation`; one not in force is FAILED_PRECONDITION.
    /// Resent after ambiguous failures under one write identity, so storaged applies it at
    /// most once (its `raft/dedup.rs`); an error that is not `never_executed` leaves it
    /// unknown whether it took effect.
    pub async fn write_as(
        &self,
        volume: &str,
        offset: u64,
        data: bytes::Bytes,
        generation: u64,
    ) -> Result<(), Status> {
        let ticket = self.writes.begin(volume).await;
        self.call(Some(volume), Retry::Idempotent, |ch| {
            let req = pb::WriteRequest {
                volume: volume.to_string(),
                offset,
                data: data.clone(),
                generation,
                client_id: ticket.client_id(),
                seq: ticket.seq(),
                first_incomplete: ticket.first_incomplete(),
            };
            async move { Self::blk(ch).write(req).await.map(|_| ()) }
        })
        .await
    }

    /// An unfenced discard (generation 0), deduplicated like a write.
    pub async fn discard(&self, volume: &str, offset: u64, length: u64) -> Result<(), Status> {
        self.discard_as(volume, offset, length, 0).await
    }

    /// A discard by the holder of publish `generation`, deduplicated like a write.
    pub async fn discard_as(
        &self,
        volume: &str,
        offset: u64,
        length: u64,
        generation: u64,
    ) -> Result<(), Status> {
        let ticket = self.writes.begin(volume).await;
        self.call(Some(volume), Retry::Idempotent, |ch| {
            let req = pb::DiscardRequest {
                volume: volume.to_string(),
                offset,
                length,
                generation,
                client_id: ticket.client_id(),
                seq: ticket.seq(),
                first_incomplete: ticket.first_incomplete(),
            };
            async move { Self::blk(ch).discard(req).await.map(|_| ()) }
        })
        .await
    }

    /// An unfenced flush (generation 0).
    pub async fn flush(&self, volume: &str) -> Result<(), Status> {
        self.flush_as(volume, 0).await
    }

    /// A flush by the holder of publish `generation` (refused if that publish is not in force).
    pub async fn flush_as(&self, volume: &str, generation: u64) -> Result<(), Status> {
        let req = pb::FlushRequest {
            volume: volume.to_string(),
            generation,
        };
        self.call(Some(volume), Retry::Idempotent, |ch| {
            let req = req.clone();
            async move { Self::blk(ch).flush(req).await.map(|_| ()) }
        })
        .await
    }
}

/// A client for one node's own storaged (attach/detach are node-local).
#[derive(Clone)]
pub struct NodeClient {
    inner: NodeServiceClient<Channel>,
}

impl NodeClient {
    pub fn connect(addr: &str, security: &Security) -> Result<Self, Status> {
        let addr = normalise(addr);
        let ch = security.channel(&addr, |e| {
            e.connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(60))
        })?;
        Ok(NodeClient {
            inner: NodeServiceClient::new(ch),
        })
    }

    pub async fn attach_volume(
        &self,
        req: pb::AttachVolumeRequest,
    ) -> Result<pb::NodeAttachment, Status> {
        Ok(self
            .inner
            .clone()
            .attach_volume(req)
            .await?
            .into_inner()
            .attachment
            .unwrap_or_default())
    }

    pub async fn detach_volume(&self, volume: &str) -> Result<(), Status> {
        self.inner
            .clone()
            .detach_volume(pb::DetachVolumeRequest {
                volume: volume.to_string(),
            })
            .await
            .map(|_| ())
    }

    pub async fn list_attachments(&self) -> Result<Vec<pb::NodeAttachment>, Status> {
        Ok(self
            .inner
            .clone()
            .list_attachments(pb::ListAttachmentsRequest {})
            .await?
            .into_inner()
            .attachments)
    }

    pub async fn refresh_size(&self, volume: &str) -> Result<pb::NodeAttachment, Status> {
        Ok(self
            .inner
            .clone()
            .refresh_size(pb::RefreshSizeRequest {
                volume: volume.to_string(),
            })
            .await?
            .into_inner()
            .attachment
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::never_connected;
    use tonic::Code;
    use tonic::transport::Endpoint;

    #[test]
    fn endpoints_are_split_and_normalised() {
        let c = VolumeClient::new(
            vec!["http://127.0.0.1:1/, 127.0.0.1:2".into()],
            Security::Insecure,
        )
        .unwrap();
        assert_eq!(c.endpoints(), ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(
            VolumeClient::new(vec![" ".into()], Security::Insecure)
                .err()
                .map(|s| s.code()),
            Some(Code::InvalidArgument)
        );
    }

    #[test]
    fn only_unexecuted_calls_retry_on_ambiguous_errors() {
        let timeout = Status::deadline_exceeded("slow");
        assert!(retryable(&timeout, Retry::Idempotent));
        assert!(!retryable(&timeout, Retry::OnlyUnexecuted));
        let mut hinted = Status::unavailable("not the leader of group 0");
        hinted
            .metadata_mut()
            .insert(LEADER_HINT_KEY, "127.0.0.1:9".parse().unwrap());
        assert!(retryable(&hinted, Retry::OnlyUnexecuted));
        assert_eq!(leader_hint(&hinted).as_deref(), Some("127.0.0.1:9"));
        // Leaderless refusal: flagged as not executed, with no hint.
        let mut refused = Status::unavailable("no leader");
        assert!(!retryable(&refused, Retry::OnlyUnexecuted));
        refused
            .metadata_mut()
            .insert(NOT_EXECUTED_KEY, "1".parse().unwrap());
        assert!(retryable(&refused, Retry::OnlyUnexecuted));
        assert!(!retryable(
            &Status::invalid_argument("x"),
            Retry::Idempotent
        ));
    }

    #[tokio::test]
    async fn a_refused_connection_is_known_unexecuted_and_server_text_is_not() {
        // Port 1 on loopback refuses connections.
        let ch = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let err = VolumeServiceClient::new(ch)
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .unwrap_err();
        assert!(never_connected(&err), "{err:?}");
        assert!(retryable(&err, Retry::OnlyUnexecuted));
        // The same words from a server prove nothing.
        let said = Status::unavailable("transport error: tcp connect: Connection refused");
        assert!(!retryable(&said, Retry::OnlyUnexecuted));
    }

    #[tokio::test]
    async fn unreachable_cluster_fails_with_unavailable_in_bounded_time() {
        // Port 1 on loopback refuses connections.
        let c = VolumeClient::new(vec!["127.0.0.1:1".into()], Security::Insecure)
            .unwrap()
            .with_deadline(Duration::from_millis(700));
        let start = Instant::now();
        let err = c.get_volume("v").await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(never_executed(&err), "every attempt was refused: {err:?}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "took {:?}",
            start.elapsed()
        );
    }
}
