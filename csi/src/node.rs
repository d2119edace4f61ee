//! CSI Node service: attach through the local storaged, stage/publish filesystem or block
//! volumes, stats and online expansion. State is always re-read from mountinfo and storaged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::cairn::v1 as pb;
use cairn_proto::csi::v1::{self as csi, node_server::Node};
use cairn_proto::rpclog::record_subject;
use tonic::{Code, Request, Status};

use crate::block_vol;
use crate::controller::{CTX_GENERATION, CTX_KIND, CTX_READONLY, condition};
use crate::error::{CsiError, Result};
use crate::filesystem_vol;
use crate::format;
use crate::limiter::Limiter;
use crate::mount::{self, MountEntry};
use crate::node_info::{self, INFO_WAIT};
use crate::params::{Capability, parse_capability};
use crate::paths::PathPolicy;
use crate::rpc::{RpcResult, caller_deadline, reply, require, require_some};
use crate::storaged::{NodeBackend, VolumeBackend};

/// Bound on a statvfs that might hang on a broken mount.
const STAT_TIMEOUT: Duration = Duration::from_secs(5);

/// Static configuration of the node plugin.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    pub paths: PathPolicy,
    pub frontend: pb::Frontend,
    pub max_volumes_per_node: i64,
}

/// The node plugin.
pub struct NodeService {
    cfg: NodeConfig,
    node: Arc<dyn NodeBackend>,
    cluster: Arc<dyn VolumeBackend>,
    limiter: Limiter,
}

fn capability(cap: Option<&csi::VolumeCapability>) -> Result<Capability> {
    parse_capability(require_some(cap, "volume_capability")?)
}

/// The publish's fencing generation from the publish context (0: none, an older controller).
fn publish_generation(ctx: &HashMap<String, String>) -> Result<u64> {
    ctx.get(CTX_GENERATION).map_or(Ok(0), |g| {
        g.parse().map_err(|_| {
            CsiError::InvalidArgument(format!(
                "publish_context {CTX_GENERATION} `{g}` is not a generation number"
            ))
        })
    })
}

fn same_device(m: &MountEntry, other: &MountEntry) -> bool {
    (m.major, m.minor) == (other.major, other.minor) && m.root == other.root
}

fn not_found_volume(volume_id: &str) -> impl FnOnce(Status) -> CsiError + '_ {
    move |s| {
        if s.code() == Code::NotFound {
            CsiError::NotFound(format!("volume {volume_id}: {}", s.message()))
        } else {
            CsiError::storaged(format!("volume {volume_id}"), s)
        }
    }
}

impl NodeService {
    pub fn new(
        cfg: NodeConfig,
        node: Arc<dyn NodeBackend>,
        cluster: Arc<dyn VolumeBackend>,
    ) -> Self {
        NodeService {
            cfg,
            node,
            cluster,
            limiter: Limiter::new(),
        }
    }

    async fn attachment(&self, volume_id: &str) -> Result<Option<pb::NodeAttachment>> {
        let atts = self
            .node
            .list_attachments()
            .await
            .map_err(|s| CsiError::storaged("list attachments", s))?;
        Ok(atts.into_iter().find(|a| a.volume == volume_id))
    }

    async fn detach(&self, volume_id: &str) -> Result<()> {
        match self.node.detach_volume(volume_id).await {
            Ok(()) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(CsiError::storaged(format!("detach {volume_id}"), s)),
        }
    }

    /// The staging mount of a volume at `staging`: the filesystem, or the block device file.
    fn staged_at<'a>(mounts: &'a [MountEntry], staging: &Path) -> Option<&'a MountEntry> {
        mount::mount_at(mounts, staging)
            .or_else(|| mount::mount_at(mounts, &block_vol::staged_device(staging)))
    }

    async fn stage(&self, req: csi::NodeStageVolumeRequest) -> Result<()> {
        require(&req.volume_id, "volume_id")?;
        require(&req.staging_target_path, "staging_target_path")?;
        let cap = capability(req.volume_capability.as_ref())?;
        let staging = self
            .cfg
            .paths
            .check("staging_target_path", &req.staging_target_path)?;
        let id = req.volume_id.as_str();
        let _guard = self.limiter.try_acquire(id)?;
        let readonly = cap.read_only_mode()
            || req.publish_context.get(CTX_READONLY).map(String::as_str) == Some("true");
        let generation = publish_generation(&req.publish_context)?;

        let mounts = mount::read_mountinfo()?;
        let existing = self.attachment(id).await?;
        if let Some(here) = Self::staged_at(&mounts, &staging) {
            // Something is staged at this path already: ours and compatible means done.
            let ours = existing.as_ref().is_some_and(|a| {
                !a.device_path.is_empty()
                    && mount::mounts_of_device(&mounts, Path::new(&a.device_path))
                        .iter()
                        .any(|m| m.mount_id == here.mount_id)
            });
            if !ours {
                return Err(CsiError::FailedPrecondition(format!(
                    "{} already has another volume staged",
                    staging.display()
                )));
            }
            let is_block = here.mount_point != staging;
            if is_block != cap.is_block() || (!cap.is_block() && here.read_only() != readonly) {
                return Err(CsiError::AlreadyExists(format!(
                    "volume {id} is staged at {} with an incompatible capability",
                    staging.display()
                )));
            }
            // Staged under an older publish: its writes carry the new generation from now on.
            if let Some(a) = existing
                && generation > a.generation
            {
                self.attach(id, a.frontend, readonly, generation).await?;
            }
            return Ok(());
        }
        if let Some(a) = &existing
            && !a.device_path.is_empty()
            && let Some(m) = mount::mounts_of_device(&mounts, Path::new(&a.device_path)).first()
        {
            return Err(CsiError::FailedPrecondition(format!(
                "volume {id} is already staged on this node at {}",
                m.mount_point.display()
            )));
        }
        // Reuse an idle attachment only when its mode matches.
        let existing = match existing {
            Some(a) if a.readonly != readonly => {
                self.detach(id).await?;
                None
            }
            other => other,
        };
        // Local volumes are always a loop device on their pool file.
        let local = req.publish_context.get(CTX_KIND).map(String::as_str) == Some("local")
            || req.volume_context.get("type").map(String::as_str) == Some("local");
        let frontend = if local {
            pb::Frontend::Unspecified
        } else {
            self.cfg.frontend
        };
        let att = match existing {
            Some(a) if a.generation == generation || generation == 0 => a,
            // An idle attachment of an older publish: storaged moves it to this one's.
            Some(a) => self.attach(id, a.frontend, readonly, generation).await?,
            None => {
                self.attach(id, frontend as i32, readonly, generation)
                    .await?
            }
        };
        let result = self.stage_device(&att, &staging, &cap, readonly).await;
        if let Err(e) = &result {
            // Never leave a half-staged volume: the mount is already undone, detach too.
            tracing::warn!(volume_id = id, error = %e, "stage failed; detaching");
            if let Err(d) = self.detach(id).await {
                tracing::error!(volume_id = id, error = %d, "rollback detach failed");
            }
        }
        result
    }

    /// Attaches `id` on this node's storaged under publish `generation`. storaged reads its
    /// catalogue fresh (a follower read), so a volume created a moment ago is found.
    async fn attach(
        &self,
        id: &str,
        frontend: i32,
        readonly: bool,
        generation: u64,
    ) -> Result<pb::NodeAttachment> {
        self.node
            .attach_volume(pb::AttachVolumeRequest {
                volume: id.to_string(),
                frontend,
                readonly,
                generation,
            })
            .await
            .map_err(not_found_volume(id))
    }

    async fn stage_device(
        &self,
        att: &pb::NodeAttachment,
        staging: &Path,
        cap: &Capability,
        readonly: bool,
    ) -> Result<()> {
        if att.device_path.is_empty() {
            return Err(CsiError::FailedPrecondition(format!(
                "storaged exported {} without a kernel block device (nbd uri `{}`); \
                 this node has no NBD client",
                att.volume, att.nbd_uri
            )));
        }
        let device = Path::new(&att.device_path);
        if cap.is_block() {
            return block_vol::stage(device, staging);
        }
        let requested = match &cap.access {
            crate::params::Access::Mount { fs_type, .. } if !fs_type.is_empty() => {
                Some(fs_type.as_str())
            }
            _ => None,
        };
        let fs =
            filesystem_vol::stage(device, staging, requested, cap.mount_flags(), readonly).await?;
        tracing::info!(
            volume_id = att.volume,
            device = att.device_path,
            fs,
            "staged"
        );
        Ok(())
    }

    async fn unstage(&self, req: csi::NodeUnstageVolumeRequest) -> Result<()> {
        require(&req.volume_id, "volume_id")?;
        require(&req.staging_target_path, "staging_target_path")?;
        let staging = self
            .cfg
            .paths
            .check("staging_target_path", &req.staging_target_path)?;
        let id = req.volume_id.as_str();
        let _guard = self.limiter.try_acquire(id)?;
        let mounts = mount::read_mountinfo()?;
        let staged = Self::staged_at(&mounts, &staging).cloned();
        if let Some(att) = self.attachment(id).await?
            && !att.device_path.is_empty()
        {
            let block_file = block_vol::staged_device(&staging);
            let elsewhere: Vec<PathBuf> =
                mount::mounts_of_device(&mounts, Path::new(&att.device_path))
                    .into_iter()
                    .filter(|m| m.mount_point != staging && m.mount_point != block_file)
                    .map(|m| m.mount_point.clone())
                    .collect();
            match (&staged, elsewhere.first()) {
                (Some(_), Some(p)) => {
                    return Err(CsiError::FailedPrecondition(format!(
                        "volume {id} is still published at {}",
                        p.display()
                    )));
                }
                // Staged at another path, not here: nothing of ours to undo.
                (None, Some(_)) => return Ok(()),
                _ => {}
            }
        }
        filesystem_vol::unstage(&staging)?;
        block_vol::unstage(&staging)?;
        self.detach(id).await
    }

    async fn publish(&self, req: csi::NodePublishVolumeRequest) -> Result<()> {
        require(&req.volume_id, "volume_id")?;
        require(&req.target_path, "target_path")?;
        let cap = capability(req.volume_capability.as_ref())?;
        if req.staging_target_path.is_empty() {
            return Err(CsiError::FailedPrecondition(
                "staging_target_path is required (STAGE_UNSTAGE_VOLUME)".into(),
            ));
        }
        let staging = self
            .cfg
            .paths
            .check("staging_target_path", &req.staging_target_path)?;
        let target = self.cfg.paths.check("target_path", &req.target_path)?;
        let id = req.volume_id.as_str();
        let _guard = self.limiter.try_acquire(id)?;
        let readonly = req.readonly || cap.read_only_mode();
        let mounts = mount::read_mountinfo()?;
        let staged = if cap.is_block() {
            mount::mount_at(&mounts, &block_vol::staged_device(&staging))
        } else {
            mount::mount_at(&mounts, &staging)
        };
        let Some(staged) = staged else {
            return Err(CsiError::FailedPrecondition(format!(
                "volume {id} is not staged at {} for {} access",
                staging.display(),
                if cap.is_block() { "block" } else { "mount" }
            )));
        };
        if let Some(t) = mount::mount_at(&mounts, &target) {
            if same_device(t, staged) && t.read_only() == readonly {
                return Ok(());
            }
            return Err(CsiError::AlreadyExists(format!(
                "{} is already published with a different volume or readonly flag",
                target.display()
            )));
        }
        if cap.mode == csi::volume_capability::access_mode::Mode::SingleNodeSingleWriter
            && let Some(other) = mounts.iter().find(|m| {
                same_device(m, staged)
                    && m.mount_point != staged.mount_point
                    && m.mount_id != staged.mount_id
            })
        {
            return Err(CsiError::FailedPrecondition(format!(
                "SINGLE_NODE_SINGLE_WRITER volume {id} is already published at {}",
                other.mount_point.display()
            )));
        }
        if cap.is_block() {
            block_vol::publish(&staging, &target, readonly)
        } else {
            filesystem_vol::publish(&staging, &target, readonly)
        }
    }

    async fn unpublish(&self, req: csi::NodeUnpublishVolumeRequest) -> Result<()> {
        require(&req.volume_id, "volume_id")?;
        require(&req.target_path, "target_path")?;
        let target = self.cfg.paths.check("target_path", &req.target_path)?;
        let _guard = self.limiter.try_acquire(&req.volume_id)?;
        block_vol::remove_published(&target)
    }

    /// The mount of `volume_id` at `path`, or NOT_FOUND.
    async fn mounted_volume(
        &self,
        volume_id: &str,
        path: &str,
    ) -> Result<(pb::NodeAttachment, PathBuf)> {
        let att = self
            .attachment(volume_id)
            .await?
            .filter(|a| !a.device_path.is_empty())
            .ok_or_else(|| {
                CsiError::NotFound(format!("volume {volume_id} is not attached on this node"))
            })?;
        let p = Path::new(path);
        let real = if p.is_absolute() {
            std::fs::canonicalize(p).ok()
        } else {
            None
        };
        let real =
            real.ok_or_else(|| CsiError::NotFound(format!("volume path `{path}` does not exist")))?;
        let mounts = mount::read_mountinfo()?;
        let ours = mount::mounts_of_device(&mounts, Path::new(&att.device_path))
            .iter()
            .any(|m| m.mount_point == real);
        if !ours {
            return Err(CsiError::NotFound(format!(
                "volume {volume_id} is not mounted at {path}"
            )));
        }
        Ok((att, real))
    }

    async fn stats(
        &self,
        req: csi::NodeGetVolumeStatsRequest,
    ) -> Result<csi::NodeGetVolumeStatsResponse> {
        require(&req.volume_id, "volume_id")?;
        require(&req.volume_path, "volume_path")?;
        let (_, path) = self
            .mounted_volume(&req.volume_id, &req.volume_path)
            .await?;
        let mut abnormal = Vec::new();
        let mut usage = Vec::new();
        if block_vol::is_block_device(&path) {
            match block_vol::device_size(&path) {
                Ok(total) => usage.push(csi::VolumeUsage {
                    total: total as i64,
                    unit: csi::volume_usage::Unit::Bytes as i32,
                    ..Default::default()
                }),
                Err(e) => abnormal.push(format!("device unreadable: {e}")),
            }
        } else {
            let p = path.clone();
            let st = tokio::time::timeout(
                STAT_TIMEOUT,
                tokio::task::spawn_blocking(move || nix::sys::statvfs::statvfs(&p)),
            )
            .await;
            match st {
                Ok(Ok(Ok(s))) => {
                    let frag = s.fragment_size() as i64;
                    let (total, free, avail) = (
                        s.blocks() as i64,
                        s.blocks_free() as i64,
                        s.blocks_available() as i64,
                    );
                    usage.push(csi::VolumeUsage {
                        available: avail * frag,
                        total: total * frag,
                        used: (total - free) * frag,
                        unit: csi::volume_usage::Unit::Bytes as i32,
                    });
                    let (files, ffree) = (s.files() as i64, s.files_free() as i64);
                    usage.push(csi::VolumeUsage {
                        available: ffree,
                        total: files,
                        used: files - ffree,
                        unit: csi::volume_usage::Unit::Inodes as i32,
                    });
                }
                Ok(Ok(Err(e))) => abnormal.push(format!("mount broken: statvfs: {e}")),
                Ok(Err(e)) => abnormal.push(format!("statvfs task failed: {e}")),
                Err(_) => abnormal.push(format!("mount broken: statvfs hung for {STAT_TIMEOUT:?}")),
            }
        }
        match self.cluster.get_volume(&req.volume_id).await {
            Ok(v) => {
                let c = condition(&v);
                if c.abnormal {
                    abnormal.push(c.message);
                }
            }
            Err(s) => abnormal.push(format!("storaged unreachable: {}", s.message())),
        }
        Ok(csi::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(csi::VolumeCondition {
                abnormal: !abnormal.is_empty(),
                message: if abnormal.is_empty() {
                    "healthy".into()
                } else {
                    abnormal.join("; ")
                },
            }),
        })
    }

    /// Has the local storaged grow the device to the volume's committed size (storaged
    /// catches up with the catalogue first) and returns it; below `required` is OUT_OF_RANGE.
    async fn grown_device(&self, volume_id: &str, required: u64) -> Result<u64> {
        let size = self
            .node
            .refresh_size(volume_id)
            .await
            .map_err(not_found_volume(volume_id))?
            .size_bytes;
        if size < required {
            return Err(CsiError::OutOfRange(format!(
                "volume {volume_id} is {size} bytes, below the required {required}"
            )));
        }
        Ok(size)
    }

    async fn expand(
        &self,
        req: csi::NodeExpandVolumeRequest,
    ) -> Result<csi::NodeExpandVolumeResponse> {
        require(&req.volume_id, "volume_id")?;
        require(&req.volume_path, "volume_path")?;
        let cap = match req.volume_capability.as_ref() {
            Some(c) => Some(parse_capability(c)?),
            None => None,
        };
        let (att, path) = self
            .mounted_volume(&req.volume_id, &req.volume_path)
            .await?;
        let _guard = self.limiter.try_acquire(&req.volume_id)?;
        let required = req
            .capacity_range
            .as_ref()
            .map_or(0, |r| r.required_bytes.max(0) as u64);
        let size = self.grown_device(&req.volume_id, required).await?;
        let is_block =
            cap.as_ref().is_some_and(Capability::is_block) || block_vol::is_block_device(&path);
        if !is_block {
            let mounts = mount::read_mountinfo()?;
            let fs = mount::mount_at(&mounts, &path)
                .map(|m| m.fs_type.clone())
                .ok_or_else(|| CsiError::NotFound(format!("{} is not mounted", path.display())))?;
            format::grow(&fs, Path::new(&att.device_path), &path).await?;
        }
        Ok(csi::NodeExpandVolumeResponse {
            capacity_bytes: size as i64,
        })
    }
}

/// The node capabilities issue 3 asks for.
pub fn capabilities() -> Vec<csi::NodeServiceCapability> {
    use csi::node_service_capability::{Rpc, Type, rpc::Type as T};
    [
        T::StageUnstageVolume,
        T::GetVolumeStats,
        T::ExpandVolume,
        T::VolumeCondition,
        T::SingleNodeMultiWriter,
    ]
    .into_iter()
    .map(|t| csi::NodeServiceCapability {
        r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
    })
    .collect()
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        r: Request<csi::NodeStageVolumeRequest>,
    ) -> RpcResult<csi::NodeStageVolumeResponse> {
        let r = r.into_inner();
        record_subject(&r.volume_id, &self.cfg.node_id);
        reply(self.stage(r).await.map(|_| csi::NodeStageVolumeResponse {}))
    }
    async fn node_unstage_volume(
        &self,
        r: Request<csi::NodeUnstageVolumeRequest>,
    ) -> RpcResult<csi::NodeUnstageVolumeResponse> {
        let r = r.into_inner();
        record_subject(&r.volume_id, &self.cfg.node_id);
        reply(
            self.unstage(r)
                .await
                .map(|_| csi::NodeUnstageVolumeResponse {}),
        )
    }
    async fn node_publish_volume(
        &self,
        r: Request<csi::NodePublishVolumeRequest>,
    ) -> RpcResult<csi::NodePublishVolumeResponse> {
        let r = r.into_inner();
        record_subject(&r.volume_id, &self.cfg.node_id);
        reply(
            self.publish(r)
                .await
                .map(|_| csi::NodePublishVolumeResponse {}),
        )
    }
    async fn node_unpublish_volume(
        &self,
        r: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> RpcResult<csi::NodeUnpublishVolumeResponse> {
        let r = r.into_inner();
        record_subject(&r.volume_id, &self.cfg.node_id);
        reply(
            self.unpublish(r)
                .await
                .map(|_| csi::NodeUnpublishVolumeResponse {}),
        )
    }
    async fn node_get_volume_stats(
        &self,
        r: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> RpcResult<csi::NodeGetVolumeStatsResponse> {
        let r = r.into_inner();
        record_subject(&r.volume_id, &self.cfg.node_id);
        reply(self.stats(r).await)
    }
    async fn node_expand_volume(
        &self,
        r: Request<csi::NodeExpandVolumeRequest>,
    ) -> RpcResult<csi::NodeExpandVolumeResponse> {
        let r = r.into_inner();
        record_subject(&r.volume_id, &self.cfg.node_id);
        reply(self.expand(r).await)
    }
    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> RpcResult<csi::NodeGetCapabilitiesResponse> {
        record_subject("", &self.cfg.node_id);
        reply(Ok(csi::NodeGetCapabilitiesResponse {
            capabilities: capabilities(),
        }))
    }
    async fn node_get_info(
        &self,
        r: Request<csi::NodeGetInfoRequest>,
    ) -> RpcResult<csi::NodeGetInfoResponse> {
        record_subject("", &self.cfg.node_id);
        let deadline = caller_deadline(&r);
        reply(
            node_info::node_info(
                &*self.cluster,
                &self.cfg.node_id,
                self.cfg.max_volumes_per_node,
                INFO_WAIT,
                deadline,
            )
            .await,
        )
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
