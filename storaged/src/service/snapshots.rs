//! Snapshots and content sources. A snapshot is a hidden replicated volume named
//! `snapshot.<name>`, filled by a point-in-time copy; a volume may start as a copy of one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::cairn::v1 as pb;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::meta::catalog::{
    Catalog, ContentSource, MetaCommand, Origin, SNAPSHOT_PREFIX, VolumeKind, VolumeRecord,
    VolumeState, now_unix,
};
use crate::meta::placement::{self, Want};
use crate::node::StorageNode;
use crate::service::validate;
use crate::volume::copy::copy_on_leader;
use crate::volume::io::VolumeIo;
use crate::{Error, Result};

/// How long a create call waits for its copy before answering "not yet" (snapshots:
/// `ready: false`; volumes: ABORTED, and the caller asks again). The copy goes on regardless.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
const TOKEN_PREFIX: &str = "s1:";

/// The sealed target record, or the error's code and message (`Shared` needs `Clone`).
type CopyResult = std::result::Result<VolumeRecord, (tonic::Code, String)>;

/// Copies running on this node, by target volume: a retried create joins the copy in
/// progress instead of starting a second one into the same target.
#[derive(Default, Clone)]
pub struct Copies {
    running: Arc<Mutex<HashMap<String, Shared<BoxFuture<'static, CopyResult>>>>>,
}

impl Copies {
    /// Waits up to `ANSWER_WITHIN` for the copy of `source` into `target` (started in its
    /// own task unless one is running): the sealed target, or `None` if it is still going.
    async fn populate(
        &self,
        node: &Arc<StorageNode>,
        source: &str,
        target: &str,
    ) -> Result<Option<VolumeRecord>> {
        let copy = {
            let mut running = self.running.lock().expect("copies poisoned");
            match running.get(target) {
                Some(c) => c.clone(),
                None => {
                    let task = tokio::spawn(copy_and_seal(
                        node.clone(),
                        source.to_string(),
                        target.to_string(),
                        self.clone(),
                    ));
                    let c = async move {
                        task.await
                            .unwrap_or_else(|e| Err((tonic::Code::Internal, e.to_string())))
                    }
                    .boxed()
                    .shared();
                    running.insert(target.to_string(), c.clone());
                    c
                }
            }
        };
        match tokio::time::timeout(ANSWER_WITHIN, copy).await {
            Err(_) => Ok(None),
            Ok(Ok(sealed)) => Ok(Some(sealed)),
            Ok(Err((code, message))) => Err(Error::Peer { code, message }),
        }
    }
}

/// The copy task: copy on the source's leader, then mark the target populated.
async fn copy_and_seal(
    node: Arc<StorageNode>,
    source: String,
    target: String,
    copies: Copies,
) -> CopyResult {
    let r = async {
        let io = VolumeIo::new(node.clone());
        // Only the meta leader copies: when leadership moves, the copy is dropped (which
        // cancels the RPC, and the copy on the source's leader with it) and the new
        // leader starts over when the create is retried, so two copies from different
        // moments do not interleave in the target (but for the last writes in flight).
        let me = node.cfg().id;
        let wait = node.meta_raft().wait(None);
        let lost = wait.metrics(move |m| m.current_leader != Some(me), "meta leadership lost");
        let copied = tokio::select! {
            r = copy_on_leader(&io, &source, &target) => r?,
            _ = lost => {
                return Err(Error::Unavailable(format!(
                    "the meta leadership moved while copying into `{target}`; retry on the new leader"
                )));
            }
        };
        let sealed = node
            .propose_meta(MetaCommand::FinishPopulating {
                name: target.clone(),
                bytes: copied,
            })
            .await?;
        sealed.into_volume()
    }
    .await;
    copies
        .running
        .lock()
        .expect("copies poisoned")
        .remove(&target);
    match &r {
        Ok(v) => {
            tracing::info!(source = %source, target = %target, state = ?v.state, "populated")
        }
        Err(e) => tracing::warn!(source = %source, target = %target, error = %e, "copy failed"),
    }
    r.map_err(|e| (e.code(), e.to_string()))
}

fn hidden_name(snapshot: &str) -> String {
    format!("{SNAPSHOT_PREFIX}{snapshot}")
}

/// User volumes may not take the snapshot prefix.
pub fn refuse_reserved(field: &'static str, name: &str) -> Result<()> {
    if name.starts_with(SNAPSHOT_PREFIX) {
        return Err(Error::invalid(
            field,
            format!("`{name}`: the prefix `{SNAPSHOT_PREFIX}` is reserved for snapshots"),
        ));
    }
    Ok(())
}

pub fn is_snapshot(v: &VolumeRecord) -> bool {
    v.name.starts_with(SNAPSHOT_PREFIX) && v.snapshot_of().is_some()
}

fn view(v: &VolumeRecord) -> pb::Snapshot {
    pb::Snapshot {
        name: v.name[SNAPSHOT_PREFIX.len()..].to_string(),
        source_volume: v.snapshot_of().unwrap_or_default().to_string(),
        size_bytes: v.size,
        created_unix: v.created_unix,
        ready: !v.is_populating(),
        stored_bytes: match v.state {
            VolumeState::Populated { bytes } => bytes,
            VolumeState::Ready | VolumeState::Populating => 0,
        },
    }
}

fn replicated(cat: &Catalog, field: &'static str, name: &str) -> Result<VolumeRecord> {
    let v = cat
        .volumes
        .get(name)
        .ok_or_else(|| Error::not_found("volume", name))?;
    if v.kind == VolumeKind::Local {
        return Err(Error::FailedPrecondition(format!(
            "`{name}` ({field}) is a local volume: only replicated volumes can be snapshotted or cloned"
        )));
    }
    Ok(v.clone())
}

/// Creates (or finds) snapshot `name` of `source`; `ready` once its copy is done.
pub async fn create(
    node: &Arc<StorageNode>,
    copies: &Copies,
    r: pb::CreateSnapshotRequest,
) -> Result<pb::Snapshot> {
    validate::name("name", &r.name)?;
    validate::name("source_volume", &r.source_volume)?;
    refuse_reserved("source_volume", &r.source_volume)?;
    let hidden = hidden_name(&r.name);
    let cat = node.read_catalog().await?;
    let rec = match cat.volumes.get(&hidden) {
        Some(existing) => existing.clone(),
        None => {
            let src = replicated(&cat, "source_volume", &r.source_volume)?;
            let members = placement::place(
                &cat,
                &node.live_usage(),
                &Want {
                    size: src.size,
                    replicas: src.replicas,
                    kind: VolumeKind::Replicated,
                    requisite: &[],
                    preferred: &[],
                },
            )?;
            let rec = VolumeRecord {
                id: 0,
                name: hidden.clone(),
                size: src.size,
                replicas: src.replicas,
                kind: VolumeKind::Replicated,
                members,
                attachments: Vec::new(),
                labels: BTreeMap::new(),
                created_unix: now_unix(),
                origin: Some(Origin::SnapshotOf(r.source_volume.clone())),
                state: VolumeState::Populating,
                generation: 0,
                repair: None,
            };
            let v = node
                .propose_meta(MetaCommand::CreateVolume(rec))
                .await?
                .into_volume()?;
            tracing::info!(snapshot = %r.name, volume = %r.source_volume, group = v.id, "snapshot created");
            v
        }
    };
    if rec.snapshot_of() != Some(r.source_volume.as_str()) {
        return Err(Error::AlreadyExists(format!(
            "snapshot `{}` exists of volume `{}`",
            r.name,
            rec.snapshot_of().unwrap_or("?")
        )));
    }
    if rec.is_populating()
        && let Some(sealed) = copies.populate(node, &r.source_volume, &hidden).await?
    {
        return Ok(view(&sealed));
    }
    Ok(view(&rec))
}

pub async fn delete(node: &StorageNode, name: &str) -> Result<()> {
    validate::name("name", name)?;
    let hidden = hidden_name(name);
    match node
        .propose_meta(MetaCommand::DeleteVolume {
            name: hidden.clone(),
        })
        .await
    {
        Err(Error::NotFound { .. }) => Err(Error::not_found("snapshot", name)),
        Err(e) => Err(e),
        Ok(_) => {
            tracing::info!(snapshot = %name, "snapshot deleted");
            Ok(())
        }
    }
}

pub async fn list(
    node: &StorageNode,
    r: pb::ListSnapshotsRequest,
) -> Result<pb::ListSnapshotsResponse> {
    let (after, size) = validate::page(&r.page_token, TOKEN_PREFIX, r.page_size)?;
    let cat = node.read_catalog().await?;
    // Snapshot volumes sort together, under their prefix.
    let start = match after.map(|a| hidden_name(&a)) {
        Some(a) => std::ops::Bound::Excluded(a),
        None => std::ops::Bound::Included(SNAPSHOT_PREFIX.to_string()),
    };
    let mut snapshots: Vec<pb::Snapshot> = cat
        .volumes
        .range((start, std::ops::Bound::Unbounded))
        .take_while(|(name, _)| name.starts_with(SNAPSHOT_PREFIX))
        .map(|(_, v)| v)
        .filter(|v| is_snapshot(v))
        .map(view)
        .filter(|s| r.name.is_empty() || s.name == r.name)
        .filter(|s| r.source_volume.is_empty() || s.source_volume == r.source_volume)
        .take(size + 1)
        .collect();
    let more = snapshots.len() > size;
    snapshots.truncate(size);
    let next_page_token = validate::next_page(
        TOKEN_PREFIX,
        more,
        snapshots.last().map(|s| s.name.as_str()),
    );
    Ok(pb::ListSnapshotsResponse {
        snapshots,
        next_page_token,
    })
}

/// A create request's content source, validated.
pub struct Source {
    /// The source as the catalogue records it.
    pub source: ContentSource,
    /// The volume to copy from: a snapshot's hidden volume, or the source volume itself.
    copy_from: String,
    /// The request field that named it.
    field: &'static str,
}

/// The content source of a create request; `None` without one.
pub fn requested(r: &pb::CreateVolumeRequest) -> Result<Option<Source>> {
    match (r.source_snapshot.as_str(), r.source_volume.as_str()) {
        ("", "") => Ok(None),
        (s, "") => {
            validate::name("source_snapshot", s)?;
            Ok(Some(Source {
                source: ContentSource::Snapshot(s.to_string()),
                copy_from: hidden_name(s),
                field: "source_snapshot",
            }))
        }
        ("", v) => {
            validate::name("source_volume", v)?;
            refuse_reserved("source_volume", v)?;
            Ok(Some(Source {
                source: ContentSource::Volume(v.to_string()),
                copy_from: v.to_string(),
                field: "source_volume",
            }))
        }
        _ => Err(Error::invalid(
            "source_volume",
            "give at most one of source_snapshot and source_volume",
        )),
    }
}

/// Checks a new volume's content source against the catalogue.
pub fn check_source(
    cat: &Catalog,
    source: &Source,
    r: &pb::CreateVolumeRequest,
    kind: VolumeKind,
) -> Result<()> {
    if kind == VolumeKind::Local {
        return Err(Error::invalid(
            "kind",
            "a local volume cannot start from a content source",
        ));
    }
    let copy_from = &source.copy_from;
    let src = match cat.volumes.get(copy_from) {
        None if source.field == "source_snapshot" => {
            return Err(Error::not_found("snapshot", &r.source_snapshot));
        }
        _ => replicated(cat, source.field, copy_from)?,
    };
    if src.is_populating() {
        return Err(Error::Aborted(format!(
            "`{copy_from}` is still being copied; retry once it is ready"
        )));
    }
    if r.size_bytes < src.size {
        return Err(Error::OutOfRange(format!(
            "size_bytes {} is smaller than the source's {} bytes",
            r.size_bytes, src.size
        )));
    }
    Ok(())
}

/// Fills `v` from `source` if it is still populating; ABORTED (the caller asks again)
/// while the copy goes on past `ANSWER_WITHIN`.
pub async fn finish_populating(
    node: &Arc<StorageNode>,
    copies: &Copies,
    v: &VolumeRecord,
    source: &Source,
) -> Result<()> {
    if !v.is_populating() {
        return Ok(());
    }
    if copies
        .populate(node, &source.copy_from, &v.name)
        .await?
        .is_some()
    {
        return Ok(());
    }
    Err(Error::Aborted(format!(
        "volume `{}` is still being copied from `{}`; retry",
        v.name, source.copy_from
    )))
}
