//! CSI Controller service: volume lifecycle, fencing (publish/unpublish), listing, capacity
//! and expansion, translated onto storaged's VolumeService with the spec's error codes.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_proto::cairn::v1 as pb;
use cairn_proto::csi::v1::{self as csi, controller_server::Controller};
use cairn_proto::rpclog::record_subject;
use tonic::{Code, Request, Status};

use crate::error::{CsiError, Result};
use crate::limiter::Limiter;
use crate::params::{
    self, Capability, TOPOLOGY_NODE_KEY, VolumeType, parse_capabilities, parse_capability,
    parse_parameters, size_fits, size_for_range, unsupported_reason, volume_name,
};
use crate::rpc::{RpcResult, reply, require, require_some};
use crate::storaged::{VolumeBackend, is_local};

/// publish_context keys handed to the node plugin.
pub const CTX_READONLY: &str = "cairn.dev/readonly";
/// The publish's fencing generation: the node attaches under it, and storaged refuses
/// writes carrying any generation not in force (absent: published by an older storaged).
pub const CTX_GENERATION: &str = "cairn.dev/generation";
pub const CTX_KIND: &str = "cairn.dev/type";
pub const CTX_VOLUME: &str = "cairn.dev/volume";

/// The controller plugin.
pub struct ControllerService {
    pub(crate) backend: Arc<dyn VolumeBackend>,
    pub(crate) limiter: Limiter,
    /// Volumes one node may have published at once (the node plugin reports the same number in
    /// NodeGetInfo); 0 means no limit.
    max_volumes_per_node: usize,
}

fn kind_of(v: &pb::Volume) -> VolumeType {
    if is_local(v) {
        VolumeType::Local
    } else {
        VolumeType::Replicated
    }
}

/// VolumeCondition from storaged's volume health: what is wrong and, for a replica being
/// rebuilt, where and how far, e.g. `degraded: rebuilding replica on node-4, 42 %`.
pub fn condition(v: &pb::Volume) -> csi::VolumeCondition {
    use pb::ReplicaState as State;
    let health = v.health();
    if matches!(
        health,
        pb::VolumeHealth::Healthy | pb::VolumeHealth::Unspecified
    ) {
        return csi::VolumeCondition {
            abnormal: false,
            message: "healthy".into(),
        };
    }
    let name = |m: &pb::Replica| {
        if m.node_name.is_empty() {
            format!("node {}", m.node_id)
        } else {
            m.node_name.clone()
        }
    };
    let mut parts: Vec<String> = v
        .members
        .iter()
        .filter(|m| m.state() == State::Rebuilding)
        .map(|m| {
            let percent = match &m.rebuild {
                Some(r) => Some(u64::from(r.percent)),
                None if m.target_index > 0 => {
                    Some(m.matched_index.min(m.target_index) * 100 / m.target_index)
                }
                None => None,
            };
            match percent {
                Some(p) => format!("rebuilding replica on {}, {p} %", name(m)),
                None => format!("rebuilding replica on {}", name(m)),
            }
        })
        .collect();
    let lost: Vec<String> = v
        .members
        .iter()
        .filter(|m| matches!(m.state(), State::Unreachable | State::Lagging))
        .map(|m| format!("replica on {} {}", name(m), m.state().word()))
        .collect();
    let failed = v
        .members
        .iter()
        .filter(|m| m.state() == State::Failed)
        .map(|m| format!("replica on {} failed to open: {}", name(m), m.reason));
    parts.extend(failed);
    parts.extend(lost);
    if parts.is_empty() {
        let up = v
            .members
            .iter()
            .filter(|m| matches!(m.state(), State::Leader | State::Follower))
            .count();
        parts.push(format!("{up} of {} replicas up to date", v.replicas));
    }
    csi::VolumeCondition {
        abnormal: true,
        message: format!("{}: {}", health.word(), parts.join("; ")),
    }
}

fn to_terms(topos: &[csi::Topology]) -> Vec<pb::TopologyTerm> {
    topos
        .iter()
        .map(|t| pb::TopologyTerm {
            segments: t.segments.clone(),
        })
        .collect()
}

fn ctx_of(v: &pb::Volume) -> HashMap<String, String> {
    HashMap::from([
        ("type".to_string(), kind_of(v).as_str().to_string()),
        ("replicas".to_string(), v.replicas.to_string()),
    ])
}

impl ControllerService {
    pub fn new(backend: Arc<dyn VolumeBackend>) -> Self {
        ControllerService {
            backend,
            limiter: Limiter::new(),
            max_volumes_per_node: 0,
        }
    }

    /// Refuse (RESOURCE_EXHAUSTED) a publish that would put more than `n` volumes on a node.
    pub fn with_max_volumes_per_node(mut self, n: usize) -> Self {
        self.max_volumes_per_node = n;
        self
    }

    /// How many volumes are published to `node` now, read from storaged's catalogue.
    async fn published_to(&self, node: &str) -> Result<usize> {
        let (mut count, mut token) = (0, String::new());
        loop {
            let page = self
                .backend
                .list_volumes(0, &token)
                .await
                .map_err(|s| CsiError::storaged("list volumes", s))?;
            count += page
                .volumes
                .iter()
                .filter(|v| v.attachments.iter().any(|a| a.node_name == node))
                .count();
            if page.next_page_token.is_empty() {
                return Ok(count);
            }
            token = page.next_page_token;
        }
    }

    /// Where the volume can be attached: every storaged node (replicated), or its one node (local).
    async fn topology(
        &self,
        v: &pb::Volume,
        nodes: Option<&[pb::Node]>,
    ) -> Result<Vec<csi::Topology>> {
        let seg = |name: &str| csi::Topology {
            segments: HashMap::from([(TOPOLOGY_NODE_KEY.to_string(), name.to_string())]),
        };
        if is_local(v) {
            return Ok(v.members.iter().map(|m| seg(&m.node_name)).collect());
        }
        let fetched;
        let nodes = match nodes {
            Some(n) => n,
            None => {
                fetched = self
                    .backend
                    .list_nodes()
                    .await
                    .map_err(|s| CsiError::storaged("list nodes", s))?;
                &fetched
            }
        };
        Ok(nodes
            .iter()
            .filter(|n| n.role != "removed" && !n.name.is_empty())
            .map(|n| seg(&n.name))
            .collect())
    }

    async fn csi_volume(&self, v: &pb::Volume, nodes: Option<&[pb::Node]>) -> Result<csi::Volume> {
        Ok(csi::Volume {
            capacity_bytes: v.size_bytes as i64,
            volume_id: v.name.clone(),
            volume_context: ctx_of(v),
            content_source: crate::snapshots::content_source(v),
            accessible_topology: self.topology(v, nodes).await?,
        })
    }

    async fn get(&self, volume_id: &str) -> Result<pb::Volume> {
        self.backend
            .get_volume(volume_id)
            .await
            .map_err(|s| CsiError::storaged(format!("get volume {volume_id}"), s))
    }

    async fn create(&self, req: csi::CreateVolumeRequest) -> Result<csi::CreateVolumeResponse> {
        require(&req.name, "name")?;
        let p = parse_parameters(&req.parameters)?;
        parse_capabilities(&req.volume_capabilities, p.kind)?;
        let (source_snapshot, source_volume) =
            crate::snapshots::source_fields(req.volume_content_source.as_ref())?;
        let size = size_for_range(req.capacity_range.as_ref())?;
        let name = volume_name(&req.name);
        let _guard = self.limiter.try_acquire(name.as_str())?;
        let topo = req.accessibility_requirements.unwrap_or_default();
        let kind = match p.kind {
            VolumeType::Replicated => pb::VolumeKind::Replicated,
            VolumeType::Local => pb::VolumeKind::Local,
        };
        let v = self
            .backend
            .create_volume(pb::CreateVolumeRequest {
                name: name.to_string(),
                size_bytes: size,
                replicas: p.replicas,
                kind: kind as i32,
                requisite: to_terms(&topo.requisite),
                preferred: to_terms(&topo.preferred),
                labels: HashMap::new(),
                source_snapshot,
                source_volume,
            })
            .await
            .map_err(|s| CsiError::storaged(format!("create volume {name}"), s))?;
        if kind_of(&v) != p.kind
            || v.replicas != p.replicas
            || !size_fits(v.size_bytes, req.capacity_range.as_ref())
        {
            return Err(CsiError::AlreadyExists(format!(
                "volume {} exists as {} x{} of {} bytes, which does not match the request",
                v.name,
                kind_of(&v).as_str(),
                v.replicas,
                v.size_bytes
            )));
        }
        Ok(csi::CreateVolumeResponse {
            volume: Some(self.csi_volume(&v, None).await?),
        })
    }

    async fn delete(&self, req: csi::DeleteVolumeRequest) -> Result<csi::DeleteVolumeResponse> {
        require(&req.volume_id, "volume_id")?;
        let _guard = self.limiter.try_acquire(&req.volume_id)?;
        match self.backend.delete_volume(&req.volume_id).await {
            Ok(()) => Ok(csi::DeleteVolumeResponse {}),
            Err(s) if s.code() == Code::NotFound => Ok(csi::DeleteVolumeResponse {}),
            Err(s) => Err(CsiError::storaged(
                format!("delete volume {}", req.volume_id),
                s,
            )),
        }
    }

    async fn publish(
        &self,
        req: csi::ControllerPublishVolumeRequest,
    ) -> Result<csi::ControllerPublishVolumeResponse> {
        require(&req.volume_id, "volume_id")?;
        require(&req.node_id, "node_id")?;
        let cap = parse_capability(require_some(
            req.volume_capability.as_ref(),
            "volume_capability",
        )?)?;
        let _guard = self.limiter.try_acquire(&req.volume_id)?;
        let v = self.get(&req.volume_id).await?;
        if let Some(why) = unsupported_reason(&cap, kind_of(&v)) {
            return Err(CsiError::InvalidArgument(why));
        }
        let readonly = req.readonly || cap.read_only_mode();
        if let Some(a) = v.attachments.iter().find(|a| a.node_name == req.node_id)
            && (a.readonly != readonly || a.multi_node != cap.multi_node())
        {
            return Err(CsiError::AlreadyExists(format!(
                "volume {} is already published to {} with readonly={} multi_node={}",
                req.volume_id, req.node_id, a.readonly, a.multi_node
            )));
        }
        if is_local(&v) && !v.members.iter().any(|m| m.node_name == req.node_id) {
            return Err(CsiError::FailedPrecondition(format!(
                "local volume {} lives on {:?}, not on {}",
                req.volume_id,
                v.members.iter().map(|m| &m.node_name).collect::<Vec<_>>(),
                req.node_id
            )));
        }
        let already = v.attachments.iter().any(|a| a.node_name == req.node_id);
        if self.max_volumes_per_node > 0
            && !already
            && self.published_to(&req.node_id).await? >= self.max_volumes_per_node
        {
            return Err(CsiError::ResourceExhausted(format!(
                "node {} already has {} volumes published, its limit",
                req.node_id, self.max_volumes_per_node
            )));
        }
        let published = self
            .backend
            .publish_volume(pb::PublishVolumeRequest {
                name: req.volume_id.clone(),
                node_name: req.node_id.clone(),
                readonly,
                multi_node: cap.multi_node(),
            })
            .await
            .map_err(|s| {
                CsiError::storaged(
                    format!("publish volume {} to {}", req.volume_id, req.node_id),
                    s,
                )
            })?;
        let generation = published
            .attachments
            .iter()
            .find(|a| a.node_name == req.node_id)
            .map_or(0, |a| a.generation);
        let mut publish_context = HashMap::from([
            (CTX_VOLUME.to_string(), req.volume_id.clone()),
            (CTX_READONLY.to_string(), readonly.to_string()),
            (CTX_KIND.to_string(), kind_of(&v).as_str().to_string()),
        ]);
        if generation > 0 {
            publish_context.insert(CTX_GENERATION.to_string(), generation.to_string());
        }
        Ok(csi::ControllerPublishVolumeResponse { publish_context })
    }

    async fn unpublish(
        &self,
        req: csi::ControllerUnpublishVolumeRequest,
    ) -> Result<csi::ControllerUnpublishVolumeResponse> {
        require(&req.volume_id, "volume_id")?;
        let _guard = self.limiter.try_acquire(&req.volume_id)?;
        let nodes = if req.node_id.is_empty() {
            // Unpublish from every node.
            match self.backend.get_volume(&req.volume_id).await {
                Ok(v) => v.attachments.into_iter().map(|a| a.node_name).collect(),
                Err(s) if s.code() == Code::NotFound => vec![],
                Err(s) => return Err(CsiError::storaged("get volume", s)),
            }
        } else {
            vec![req.node_id.clone()]
        };
        for node in nodes {
            match self.backend.unpublish_volume(&req.volume_id, &node).await {
                // An unknown volume or node is already unpublished.
                Ok(()) => {}
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => {
                    return Err(CsiError::storaged(
                        format!("unpublish volume {} from {node}", req.volume_id),
                        s,
                    ));
                }
            }
        }
        Ok(csi::ControllerUnpublishVolumeResponse {})
    }

    async fn validate(
        &self,
        req: csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse> {
        require(&req.volume_id, "volume_id")?;
        if req.volume_capabilities.is_empty() {
            return Err(CsiError::InvalidArgument(
                "volume_capabilities is required".into(),
            ));
        }
        let caps: Vec<Capability> = req
            .volume_capabilities
            .iter()
            .map(parse_capability)
            .collect::<Result<_>>()?;
        let v = self.get(&req.volume_id).await?;
        let kind = kind_of(&v);
        let not_confirmed = |message: String| csi::ValidateVolumeCapabilitiesResponse {
            confirmed: None,
            message,
        };
        if let Some(why) = caps.iter().find_map(|c| unsupported_reason(c, kind)) {
            return Ok(not_confirmed(why));
        }
        match parse_parameters(&req.parameters) {
            Err(e) => return Ok(not_confirmed(e.to_string())),
            Ok(p) if !req.parameters.is_empty() && (p.kind != kind || p.replicas != v.replicas) => {
                return Ok(not_confirmed(format!(
                    "parameters ask for {} x{}, the volume is {} x{}",
                    p.kind.as_str(),
                    p.replicas,
                    kind.as_str(),
                    v.replicas
                )));
            }
            Ok(_) => {}
        }
        Ok(csi::ValidateVolumeCapabilitiesResponse {
            confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
                mutable_parameters: req.mutable_parameters,
            }),
            message: String::new(),
        })
    }

    async fn list(&self, req: csi::ListVolumesRequest) -> Result<csi::ListVolumesResponse> {
        if req.max_entries < 0 {
            return Err(CsiError::InvalidArgument(
                "max_entries must not be negative".into(),
            ));
        }
        let token = decode_token(&req.starting_token)?;
        let page = self
            .backend
            .list_volumes(req.max_entries as u32, &token)
            .await
            .map_err(|s| match s.code() {
                Code::InvalidArgument | Code::NotFound | Code::OutOfRange => CsiError::Aborted(
                    format!("starting_token is no longer valid: {}", s.message()),
                ),
                _ => CsiError::storaged("list volumes", s),
            })?;
        let nodes = self
            .backend
            .list_nodes()
            .await
            .map_err(|s| CsiError::storaged("list nodes", s))?;
        let mut entries = Vec::with_capacity(page.volumes.len());
        for v in &page.volumes {
            entries.push(csi::list_volumes_response::Entry {
                volume: Some(self.csi_volume(v, Some(&nodes)).await?),
                status: Some(csi::list_volumes_response::VolumeStatus {
                    published_node_ids: v.attachments.iter().map(|a| a.node_name.clone()).collect(),
                    volume_condition: Some(condition(v)),
                }),
            });
        }
        Ok(csi::ListVolumesResponse {
            entries,
            next_token: encode_token(&page.next_page_token),
        })
    }

    async fn capacity(&self, req: csi::GetCapacityRequest) -> Result<csi::GetCapacityResponse> {
        let p = parse_parameters(&req.parameters)?;
        for c in &req.volume_capabilities {
            let cap = parse_capability(c)?;
            if unsupported_reason(&cap, p.kind).is_some() {
                return Ok(csi::GetCapacityResponse {
                    available_capacity: 0,
                    maximum_volume_size: Some(0),
                    minimum_volume_size: Some(params::MIB as i64),
                });
            }
        }
        let kind = match p.kind {
            VolumeType::Replicated => pb::VolumeKind::Replicated,
            VolumeType::Local => pb::VolumeKind::Local,
        };
        let r = self
            .backend
            .get_capacity(pb::GetCapacityRequest {
                topology: req.accessible_topology.map(|t| pb::TopologyTerm {
                    segments: t.segments,
                }),
                kind: kind as i32,
                replicas: p.replicas,
            })
            .await
            .map_err(|s| CsiError::storaged("get capacity", s))?;
        Ok(csi::GetCapacityResponse {
            available_capacity: r.available_bytes.min(i64::MAX as u64) as i64,
            maximum_volume_size: Some(r.maximum_volume_size.min(i64::MAX as u64) as i64),
            minimum_volume_size: Some(params::MIB as i64),
        })
    }

    async fn get_volume(
        &self,
        req: csi::ControllerGetVolumeRequest,
    ) -> Result<csi::ControllerGetVolumeResponse> {
        require(&req.volume_id, "volume_id")?;
        let v = self.get(&req.volume_id).await?;
        Ok(csi::ControllerGetVolumeResponse {
            volume: Some(self.csi_volume(&v, None).await?),
            status: Some(csi::controller_get_volume_response::VolumeStatus {
                published_node_ids: v.attachments.iter().map(|a| a.node_name.clone()).collect(),
                volume_condition: Some(condition(&v)),
            }),
        })
    }

    async fn expand(
        &self,
        req: csi::ControllerExpandVolumeRequest,
    ) -> Result<csi::ControllerExpandVolumeResponse> {
        require(&req.volume_id, "volume_id")?;
        let range = require_some(req.capacity_range.as_ref(), "capacity_range")?;
        if let Some(c) = &req.volume_capability {
            parse_capability(c)?;
        }
        let size = size_for_range(Some(range))?;
        let _guard = self.limiter.try_acquire(&req.volume_id)?;
        let v = self.get(&req.volume_id).await?;
        let v = if v.size_bytes >= size {
            if !size_fits(v.size_bytes, Some(range)) {
                return Err(CsiError::OutOfRange(format!(
                    "volume {} is already {} bytes; volumes cannot shrink",
                    v.name, v.size_bytes
                )));
            }
            v
        } else {
            self.backend
                .resize_volume(&req.volume_id, size)
                .await
                .map_err(|s| CsiError::storaged(format!("resize volume {}", req.volume_id), s))?
        };
        // Always true: the node must grow the exposed device (loop/NBD) and, for
        // filesystems, the filesystem; both happen in NodeExpandVolume.
        Ok(csi::ControllerExpandVolumeResponse {
            capacity_bytes: v.size_bytes as i64,
            node_expansion_required: true,
        })
    }
}

/// ListVolumes tokens wrap storaged's page token in hex, so garbage is detected.
pub fn encode_token(storaged_token: &str) -> String {
    if storaged_token.is_empty() {
        String::new()
    } else {
        format!("c1{}", hex::encode(storaged_token))
    }
}

/// Decode a CSI starting_token; anything not produced by `encode_token` is ABORTED.
pub fn decode_token(token: &str) -> Result<String> {
    if token.is_empty() {
        return Ok(String::new());
    }
    let bad = || CsiError::Aborted(format!("starting_token `{token}` is not valid"));
    let hexpart = token.strip_prefix("c1").ok_or_else(bad)?;
    let bytes = hex::decode(hexpart).map_err(|_| bad())?;
    let s = String::from_utf8(bytes).map_err(|_| bad())?;
    if s.is_empty() {
        return Err(bad());
    }
    Ok(s)
}

fn capability(
    t: csi::controller_service_capability::rpc::Type,
) -> csi::ControllerServiceCapability {
    csi::ControllerServiceCapability {
        r#type: Some(csi::controller_service_capability::Type::Rpc(
            csi::controller_service_capability::Rpc { r#type: t as i32 },
        )),
    }
}

/// Every controller capability but ModifyVolume.
pub fn capabilities() -> Vec<csi::ControllerServiceCapability> {
    use csi::controller_service_capability::rpc::Type;
    [
        Type::CreateDeleteVolume,
        Type::PublishUnpublishVolume,
        Type::ListVolumes,
        Type::ListVolumesPublishedNodes,
        Type::GetCapacity,
        Type::ExpandVolume,
        Type::GetVolume,
        Type::VolumeCondition,
        Type::SingleNodeMultiWriter,
        Type::CreateDeleteSnapshot,
        Type::ListSnapshots,
        Type::CloneVolume,
        // ControllerPublishVolume's `readonly` is recorded in storaged (a second publish
        // with another value is ALREADY_EXISTS) and makes the node stage read-only.
        Type::PublishReadonly,
        // GET_SNAPSHOT (CSI 1.12, alpha) is served but not advertised: sidecars and
        // csi-sanity v5 reject capabilities they do not know.
    ]
    .into_iter()
    .map(capability)
    .collect()
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        r: Request<csi::CreateVolumeRequest>,
    ) -> RpcResult<csi::CreateVolumeResponse> {
        let r = r.into_inner();
        record_subject(&r.name, "");
        reply(self.create(r).await)
    }
    async fn delete_volume(
        &self,
        r: Request<csi::DeleteVolumeRequest>,
    ) -> RpcResult<csi::DeleteVolumeResponse> {
        let r = r.into_inner();
        record_subject(&r.volume_id, "");
        reply(self.delete(r).await)
    }
    async fn controller_publish_volume(
        &self,
        r: Request<csi::ControllerPublishVolumeRequest>,
    ) -> RpcResult<csi::ControllerPublishVolumeResponse> {
        let r = r.into_inner();
        record_subject(&r.volume_id, &r.node_id);
        reply(self.publish(r).await)
    }
    async fn controller_unpublish_volume(
        &self,
        r: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> RpcResult<csi::ControllerUnpublishVolumeResponse> {
        let r = r.into_inner();
        record_subject(&r.volume_id, &r.node_id);
        reply(self.unpublish(r).await)
    }
    async fn validate_volume_capabilities(
        &self,
        r: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> RpcResult<csi::ValidateVolumeCapabilitiesResponse> {
        let r = r.into_inner();
        record_subject(&r.volume_id, "");
        reply(self.validate(r).await)
    }
    async fn list_volumes(
        &self,
        r: Request<csi::ListVolumesRequest>,
    ) -> RpcResult<csi::ListVolumesResponse> {
        reply(self.list(r.into_inner()).await)
    }
    async fn get_capacity(
        &self,
        r: Request<csi::GetCapacityRequest>,
    ) -> RpcResult<csi::GetCapacityResponse> {
        reply(self.capacity(r.into_inner()).await)
    }
    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> RpcResult<csi::ControllerGetCapabilitiesResponse> {
        reply(Ok(csi::ControllerGetCapabilitiesResponse {
            capabilities: capabilities(),
        }))
    }
    async fn create_snapshot(
        &self,
        r: Request<csi::CreateSnapshotRequest>,
    ) -> RpcResult<csi::CreateSnapshotResponse> {
        let r = r.into_inner();
        record_subject(&r.source_volume_id, "");
        reply(self.create_snapshot_impl(r).await)
    }
    async fn delete_snapshot(
        &self,
        r: Request<csi::DeleteSnapshotRequest>,
    ) -> RpcResult<csi::DeleteSnapshotResponse> {
        let r = r.into_inner();
        record_subject(&r.snapshot_id, "");
        reply(self.delete_snapshot_impl(r).await)
    }
    async fn list_snapshots(
        &self,
        r: Request<csi::ListSnapshotsRequest>,
    ) -> RpcResult<csi::ListSnapshotsResponse> {
        reply(self.list_snapshots_impl(r.into_inner()).await)
    }
    async fn get_snapshot(
        &self,
        r: Request<csi::GetSnapshotRequest>,
    ) -> RpcResult<csi::GetSnapshotResponse> {
        let r = r.into_inner();
        record_subject(&r.snapshot_id, "");
        reply(self.get_snapshot_impl(r).await)
    }
    async fn controller_expand_volume(
        &self,
        r: Request<csi::ControllerExpandVolumeRequest>,
    ) -> RpcResult<csi::ControllerExpandVolumeResponse> {
        let r = r.into_inner();
        record_subject(&r.volume_id, "");
        reply(self.expand(r).await)
    }
    async fn controller_get_volume(
        &self,
        r: Request<csi::ControllerGetVolumeRequest>,
    ) -> RpcResult<csi::ControllerGetVolumeResponse> {
        let r = r.into_inner();
        record_subject(&r.volume_id, "");
        reply(self.get_volume(r).await)
    }
    async fn controller_modify_volume(
        &self,
        _: Request<csi::ControllerModifyVolumeRequest>,
    ) -> RpcResult<csi::ControllerModifyVolumeResponse> {
        Err(Status::unimplemented(
            "ControllerModifyVolume is not supported",
        ))
    }
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
