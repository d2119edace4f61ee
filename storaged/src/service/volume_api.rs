//! The volume and node catalogue API. Mutations and consistent reads run on the
//! meta leader; other nodes answer UNAVAILABLE with a `cairn-leader` hint.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cairn_proto::cairn::v1 as pb;
use openraft::ChangeMembers;
use openraft::async_runtime::WatchReceiver;
use pb::volume_service_server::VolumeService;
use tonic::{Request, Response, Status};

use crate::meta::catalog::{
    Catalog, MetaCommand, MetaReply, NodeRecord, NodeRole, Origin, VolumeKind, VolumeRecord,
    VolumeState, now_unix,
};
use crate::meta::placement::{self, Live, Term, Want};
use crate::node::StorageNode;
use crate::raft::Node;
use crate::service::{drain, snapshots, validate, view};
use crate::volume::io::VolumeIo;
use crate::{Error, Result};

const TOKEN_PREFIX: &str = "v1:";

pub struct VolumeApi {
    pub node: Arc<StorageNode>,
    /// Snapshot and content-source copies started by this node.
    pub copies: snapshots::Copies,
}

impl VolumeApi {
    async fn lookup(&self, name: &str) -> Result<(Catalog, VolumeRecord)> {
        validate::name("name", name)?;
        let cat = self.node.read_catalog().await?;
        let v = cat
            .volumes
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found("volume", name))?;
        Ok((cat, v))
    }

    async fn create(&self, r: pb::CreateVolumeRequest) -> Result<pb::Volume> {
        validate::name("name", &r.name)?;
        snapshots::refuse_reserved("name", &r.name)?;
        validate::size(r.size_bytes)?;
        let kind = validate::kind(r.kind)?;
        let replicas = validate::replicas(r.replicas, kind)?;
        let requisite: Vec<Term> = validate::terms("requisite", &r.requisite)?;
        let preferred: Vec<Term> = validate::terms("preferred", &r.preferred)?;
        let source = snapshots::requested(&r)?;
        let cat = self.node.read_catalog().await?;
        if let Some(existing) = cat.volumes.get(&r.name) {
            if existing.size != r.size_bytes
                || existing.replicas != replicas
                || existing.kind != kind
            {
                return Err(Error::AlreadyExists(format!(
                    "volume `{}` exists with size {} and {} replicas",
                    r.name, existing.size, existing.replicas
                )));
            }
            if existing.source() != source.as_ref().map(|s| &s.source) {
                return Err(Error::AlreadyExists(format!(
                    "volume `{}` exists with content source `{}`",
                    r.name,
                    existing
                        .source()
                        .map_or_else(|| "none".to_string(), |s| s.to_string())
                )));
            }
            // Same source label, so a volume still populating is filled from `source`.
            if let Some(source) = &source {
                snapshots::finish_populating(&self.node, &self.copies, existing, source).await?;
            }
            return Ok(view::volume(&self.node, &cat, existing, false).await);
        }
        if let Some(source) = &source {
            snapshots::check_source(&cat, source, &r, kind)?;
        }
        let labels: BTreeMap<String, String> = r.labels.into_iter().collect();
        let (origin, state) = match &source {
            Some(s) => (
                Some(Origin::Source(s.source.clone())),
                VolumeState::Populating,
            ),
            None => (None, VolumeState::Ready),
        };
        let want = Want {
            size: r.size_bytes,
            replicas,
            kind,
            requisite: &requisite,
            preferred: &preferred,
        };
        let members = placement::place(&cat, &self.node.live_usage(), &want)?;
        let rec = VolumeRecord {
            id: 0,
            name: r.name.clone(),
            size: r.size_bytes,
            replicas,
            kind,
            members,
            attachments: Vec::new(),
            labels,
            created_unix: now_unix(),
            origin,
            state,
            generation: 0,
            repair: None,
        };
        let v = self
            .node
            .propose_meta(MetaCommand::CreateVolume(rec))
            .await?
            .into_volume()?;
        tracing::info!(volume = %v.name, group = v.id, size = v.size, replicas = v.replicas, members = ?v.members, "volume created");
        if let Some(source) = &source {
            snapshots::finish_populating(&self.node, &self.copies, &v, source).await?;
        }
        Ok(view::volume(&self.node, &self.node.catalog(), &v, false).await)
    }

    async fn resize(&self, r: pb::ResizeVolumeRequest) -> Result<pb::Volume> {
        validate::size(r.size_bytes)?;
        snapshots::refuse_reserved("name", &r.name)?;
        let (cat, v) = self.lookup(&r.name).await?;
        if r.size_bytes < v.size {
            return Err(Error::invalid(
                "size_bytes",
                format!(
                    "{} is smaller than the current size {}: volumes only grow",
                    r.size_bytes, v.size
                ),
            ));
        }
        let delta = r.size_bytes - v.size;
        let live = self.node.live_usage();
        for m in &v.members {
            let Some(n) = cat.nodes.get(m) else { continue };
            let room = placement::room(&cat, &live, n);
            if room.provisioned < delta {
                return Err(Error::ResourceExhausted(format!(
                    "node `{}` has {} bytes free by provisioned sizes, less than the {delta} \
                     needed to grow `{}`",
                    n.name, room.provisioned, v.name
                )));
            }
            if let Some(real) = room.real.filter(|real| *real < delta) {
                return Err(Error::ResourceExhausted(format!(
                    "node `{}` has {real} bytes really free (data already written counts, \
                     with its amplification), less than the {delta} needed to grow `{}`",
                    n.name, v.name
                )));
            }
        }
        let v = self
            .node
            .propose_meta(MetaCommand::ResizeVolume {
                name: r.name,
                size: r.size_bytes,
            })
            .await?
            .into_volume()?;
        Ok(view::volume(&self.node, &self.node.catalog(), &v, false).await)
    }

    fn capacity(
        cat: &Catalog,
        live: &Live,
        r: &pb::GetCapacityRequest,
    ) -> Result<pb::GetCapacityResponse> {
        let kind = validate::kind(r.kind)?;
        let replicas = validate::replicas(r.replicas, kind)? as usize;
        let term: Term = r
            .topology
            .as_ref()
            .map(|t| t.segments.clone().into_iter().collect())
            .unwrap_or_default();
        placement::validate_term("topology", &term)?;
        let matching: Vec<&NodeRecord> = cat
            .nodes
            .values()
            .filter(|n| placement::matches(n, &term))
            .collect();
        let available = placement::available(cat, live, &matching, kind, replicas);
        Ok(pb::GetCapacityResponse {
            available_bytes: available,
            maximum_volume_size: available,
            nodes: matching
                .iter()
                .map(|n| view::node(cat, live, n, true))
                .collect(),
        })
    }

    async fn add_node(&self, r: pb::AddNodeRequest) -> Result<pb::Node> {
        if r.id == 0 {
            return Err(Error::invalid(
                "id",
                "is required and must be greater than 0",
            ));
        }
        if let Err(e) = crate::peers::check_host_port("addr", &r.addr) {
            return Err(Error::invalid("addr", e));
        }
        let name = if r.name.is_empty() {
            format!("node-{}", r.id)
        } else {
            r.name.clone()
        };
        validate::name("name", &name)?;
        if let Some(oc) = r.labels.get(placement::OVERCOMMIT_LABEL) {
            placement::parse_overcommit(oc).map_err(|e| {
                Error::invalid("labels", format!("`{}`: {e}", placement::OVERCOMMIT_LABEL))
            })?;
        }
        // Nothing has run yet: an answer without a leader (asked of a node outside the
        // cluster, e.g. the registering node itself through a seed name) is a not-leader
        // refusal, so the caller tries another node.
        let cat = self.node.read_catalog().await.map_err(|e| match e {
            Error::Unavailable(_) => Error::NotLeader {
                group: crate::raft::META_GROUP,
                leader: None,
            },
            e => e,
        })?;
        // Before it becomes a learner: a name held by another id is a node whose data dir
        // was wiped (a new id) or a second node under one name; neither may take it over.
        if let Some(other) = cat.nodes.values().find(|n| n.name == name && n.id != r.id) {
            return Err(Error::FailedPrecondition(format!(
                "node name `{name}` belongs to node {}: if that node's data dir was lost, \
                 remove it (`cairnctl node remove --id {}`) and this node (id {}) registers \
                 on its next attempt",
                other.id, other.id, r.id
            )));
        }
        let voters: BTreeSet<u64> = self.node.meta_raft().voter_ids().collect();
        let learners: BTreeSet<u64> = self.node.meta_raft().learner_ids().collect();
        let role = if voters.contains(&r.id) {
            NodeRole::Voter
        } else {
            NodeRole::Learner
        };
        if !voters.contains(&r.id) && !learners.contains(&r.id) {
            self.node
                .meta_raft()
                .add_learner(
                    r.id,
                    Node {
                        addr: r.addr.clone(),
                    },
                    false,
                )
                .await
                .map_err(|e| Error::Unavailable(format!("adding learner {}: {e}", r.id)))?;
        }
        let capacity = if r.capacity_bytes > 0 {
            r.capacity_bytes
        } else {
            cat.nodes.get(&r.id).map(|n| n.capacity_bytes).unwrap_or(0)
        };
        // A node back on a new address (a pod that moved): the catalogue takes it here, and
        // each group's leader then gives it to the group's membership (`node/addresses.rs`).
        if let Some(old) = cat.nodes.get(&r.id).filter(|n| n.addr != r.addr) {
            tracing::info!(node = r.id, name = %name, old = %old.addr, new = %r.addr, "node registered at a new address");
        }
        let rec = NodeRecord {
            id: r.id,
            name,
            addr: r.addr,
            labels: r.labels.into_iter().collect(),
            capacity_bytes: capacity,
            role,
        };
        match self
            .node
            .propose_meta(MetaCommand::RegisterNode(rec))
            .await?
        {
            MetaReply::Node(n) => Ok(view::node(
                &self.node.catalog(),
                &self.node.live_usage(),
                &n,
                true,
            )),
            other => Err(Error::Internal(format!("unexpected meta reply {other:?}"))),
        }
    }

    async fn remove_node(&self, id: u64) -> Result<()> {
        if id == 0 {
            return Err(Error::invalid("id", "is required"));
        }
        if id == self.node.cfg().id && self.node.meta_raft().is_leader() {
            return Err(Error::FailedPrecondition(format!(
                "node {id} leads the meta group; remove it from another node after a leader change"
            )));
        }
        self.node
            .propose_meta(MetaCommand::RemoveNode { id })
            .await?;
        let voters: BTreeSet<u64> = self.node.meta_raft().voter_ids().collect();
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        if let Err(e) = self.node.meta_raft().change_membership(change, false).await {
            tracing::warn!(node = id, error = %e, "meta membership change after node removal failed");
        }
        Ok(())
    }

    fn reachable(&self) -> BTreeMap<u64, bool> {
        let m = self.node.meta_raft().metrics().borrow_watched().clone();
        let mut out = BTreeMap::new();
        if let Some(rep) = &m.replication {
            for (id, matched) in rep {
                out.insert(*id, matched.is_some());
            }
        }
        out.insert(self.node.cfg().id, true);
        out
    }
}

#[tonic::async_trait]
impl VolumeService for VolumeApi {
    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().name))]
    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        let v = self.create(req.into_inner()).await?;
        Ok(Response::new(pb::CreateVolumeResponse { volume: Some(v) }))
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().name))]
    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let r = req.into_inner();
        validate::name("name", &r.name)?;
        snapshots::refuse_reserved("name", &r.name)?;
        self.node
            .propose_meta(MetaCommand::DeleteVolume {
                name: r.name.clone(),
            })
            .await?;
        tracing::info!(volume = %r.name, "volume deleted");
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().name))]
    async fn resize_volume(
        &self,
        req: Request<pb::ResizeVolumeRequest>,
    ) -> Result<Response<pb::ResizeVolumeResponse>, Status> {
        let v = self.resize(req.into_inner()).await?;
        Ok(Response::new(pb::ResizeVolumeResponse { volume: Some(v) }))
    }

    async fn get_volume(
        &self,
        req: Request<pb::GetVolumeRequest>,
    ) -> Result<Response<pb::GetVolumeResponse>, Status> {
        let (cat, v) = self.lookup(&req.into_inner().name).await?;
        let v = view::volume(&self.node, &cat, &v, true).await;
        Ok(Response::new(pb::GetVolumeResponse { volume: Some(v) }))
    }

    async fn list_volumes(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let r = req.into_inner();
        let (after, size) = validate::page(&r.page_token, TOKEN_PREFIX, r.page_size)?;
        let cat = self.node.read_catalog().await?;
        let page: Vec<VolumeRecord> = match &after {
            Some(a) => cat
                .volumes
                .range::<String, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                .map(|(_, v)| v)
                .filter(|v| !snapshots::is_snapshot(v))
                .take(size + 1)
                .cloned()
                .collect(),
            None => cat
                .volumes
                .values()
                .filter(|v| !snapshots::is_snapshot(v))
                .take(size + 1)
                .cloned()
                .collect(),
        };
        let more = page.len() > size;
        // Health asks each volume's members, every volume at once (bounded per ask).
        let views = page
            .iter()
            .take(size)
            .map(|v| view::volume(&self.node, &cat, v, true));
        let volumes: Vec<pb::Volume> = futures::future::join_all(views).await;
        let next_page_token =
            validate::next_page(TOKEN_PREFIX, more, volumes.last().map(|v| v.name.as_str()));
        Ok(Response::new(pb::ListVolumesResponse {
            volumes,
            next_page_token,
        }))
    }

    async fn get_capacity(
        &self,
        req: Request<pb::GetCapacityRequest>,
    ) -> Result<Response<pb::GetCapacityResponse>, Status> {
        let cat = self.node.read_catalog().await?;
        let live = self.node.live_usage();
        Ok(Response::new(Self::capacity(&cat, &live, req.get_ref())?))
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().name, node = %req.get_ref().node_name))]
    async fn publish_volume(
        &self,
        req: Request<pb::PublishVolumeRequest>,
    ) -> Result<Response<pb::PublishVolumeResponse>, Status> {
        let r = req.into_inner();
        validate::name("name", &r.name)?;
        validate::name("node_name", &r.node_name)?;
        let cmd = MetaCommand::Publish {
            name: r.name.clone(),
            node_name: r.node_name.clone(),
            readonly: r.readonly,
            multi_node: r.multi_node,
        };
        let v = self.node.propose_meta(cmd).await?.into_volume()?;
        let generation = v
            .attachments
            .iter()
            .find(|a| a.node_name == r.node_name)
            .map_or(0, |a| a.generation);
        // Fenced before the answer: by the time the node holds `generation`, the volume's
        // group refuses every writer not in force (a repeat brings a lost fence back).
        if v.kind == VolumeKind::Replicated && generation > 0 {
            VolumeIo::new(self.node.clone()).fence(&r.name).await?;
        }
        tracing::info!(generation, "published");
        let v = view::volume(&self.node, &self.node.catalog(), &v, false).await;
        Ok(Response::new(pb::PublishVolumeResponse {
            volume: Some(v),
            generation,
        }))
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().name, node = %req.get_ref().node_name))]
    async fn unpublish_volume(
        &self,
        req: Request<pb::UnpublishVolumeRequest>,
    ) -> Result<Response<pb::UnpublishVolumeResponse>, Status> {
        let r = req.into_inner();
        validate::name("name", &r.name)?;
        validate::name("node_name", &r.node_name)?;
        self.node
            .propose_meta(MetaCommand::Unpublish {
                name: r.name.clone(),
                node_name: r.node_name,
            })
            .await?;
        // Fenced before the answer, as a publish is: the unpublished node's writes stop now.
        let replicated = self
            .node
            .catalog()
            .volumes
            .get(&r.name)
            .is_some_and(|v| v.kind == VolumeKind::Replicated && v.generation > 0);
        if replicated {
            VolumeIo::new(self.node.clone()).fence(&r.name).await?;
        }
        Ok(Response::new(pb::UnpublishVolumeResponse {}))
    }

    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let cat = self.node.read_catalog().await?;
        let m = self.node.meta_raft().metrics().borrow_watched().clone();
        let reach = self.reachable();
        let live = self.node.live_usage();
        Ok(Response::new(pb::ClusterStatusResponse {
            meta_leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            commit_index: m.last_applied.map(|l| l.index()).unwrap_or(0),
            nodes: cat
                .nodes
                .values()
                .map(|n| view::node(&cat, &live, n, reach.get(&n.id).copied().unwrap_or(false)))
                .collect(),
            volume_count: cat.volumes.len() as u32,
        }))
    }

    #[tracing::instrument(skip_all, fields(node = req.get_ref().id))]
    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        // A node's own certificate registers that node only (operators add any); a
        // `storage-node:<name>` one registers records of that name only.
        let refused = match req.extensions().get::<crate::tls::Identity>() {
            Some(crate::tls::Identity::Node(id)) => *id != req.get_ref().id,
            Some(crate::tls::Identity::StorageNode(name)) => *name != req.get_ref().name,
            _ => false,
        };
        if refused {
            let who = req.extensions().get::<crate::tls::Identity>();
            return Err(Status::permission_denied(format!(
                "identity `{}` may not register node {} (`{}`)",
                who.map(|w| w.to_string()).unwrap_or_default(),
                req.get_ref().id,
                req.get_ref().name
            )));
        }
        let n = self.add_node(req.into_inner()).await?;
        Ok(Response::new(pb::AddNodeResponse { node: Some(n) }))
    }

    #[tracing::instrument(skip_all, fields(node = req.get_ref().id))]
    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        self.remove_node(req.into_inner().id).await?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn list_nodes(
        &self,
        _req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let cat = self.node.read_catalog().await?;
        let reach = self.reachable();
        let live = self.node.live_usage();
        Ok(Response::new(pb::ListNodesResponse {
            nodes: cat
                .nodes
                .values()
                .map(|n| view::node(&cat, &live, n, reach.get(&n.id).copied().unwrap_or(false)))
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().name))]
    async fn cordon_node(
        &self,
        req: Request<pb::CordonNodeRequest>,
    ) -> Result<Response<pb::CordonNodeResponse>, Status> {
        let r = req.into_inner();
        let node = drain::cordon(&self.node, &r.name, r.cordon).await?;
        Ok(Response::new(pb::CordonNodeResponse { node: Some(node) }))
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().name))]
    async fn drain_node(
        &self,
        req: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::DrainNodeResponse>, Status> {
        Ok(Response::new(
            drain::drain(&self.node, &req.into_inner().name).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(snapshot = %req.get_ref().name, volume = %req.get_ref().source_volume))]
    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        let s = snapshots::create(&self.node, &self.copies, req.into_inner()).await?;
        Ok(Response::new(pb::CreateSnapshotResponse {
            snapshot: Some(s),
        }))
    }

    #[tracing::instrument(skip_all, fields(snapshot = %req.get_ref().name))]
    async fn delete_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        snapshots::delete(&self.node, &req.into_inner().name).await?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        Ok(Response::new(
            snapshots::list(&self.node, req.into_inner()).await?,
        ))
    }
}
