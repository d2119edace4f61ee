//! Snapshots and content sources. A snapshot is a hidden replicated volume named
//! `snapshot.<name>`, filled by a point-in-time copy; a volume may start as a copy of one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::cairn::v1 as pb;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::meta::catalog::{
    COPIED_LABEL, Catalog, MetaCommand, MetaReply, POPULATING_LABEL, SNAPSHOT_OF_LABEL,
    SNAPSHOT_PREFIX, SOURCE_LABEL, VolumeKind, VolumeRecord,
};
use crate::meta::placement::{self, Want};
use crate::node::StorageNode;
use crate::service::validate;
use crate::{Error, Result};

/// How long a create call waits for its copy before answering "not yet" (snapshots:
/// `ready: false`; volumes: ABORTED, and the caller asks again). The copy goes on regardless.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// Bound on one copy; HTTP/2 keep-alives notice a dead peer long before.
const COPY_DEADLINE: Duration = Duration::from_secs(6 * 3600);
const TOKEN_PREFIX: &str = "s1:";

type CopyResult = std::result::Result<u64, (tonic::Code, String)>;

/// Copies running on this node, by target volume: a retried create joins the copy in
/// progress instead of starting a second one into the same target.
#[derive(Default, Clone)]
pub struct Copies {
    running: Arc<Mutex<HashMap<String, Shared<BoxFuture<'static, CopyResult>>>>>,
}

impl Copies {
    /// Waits up to `ANSWER_WITHIN` for the copy of `source` into `target` (started in its
    /// own task unless one is running); `Ok(false)` if it is still going.
    async fn populate(&self, node: &Arc<StorageNode>, source: &str, target: &str) -> Result<bool> {
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
            Err(_) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err((code, message))) => Err(Error::Peer { code, message }),
        }
    }
}

/// The copy task: copy on the source's leader, then drop the populating label.
async fn copy_and_seal(
    node: Arc<StorageNode>,
    source: String,
    target: String,
    copies: Copies,
) -> CopyResult {
    let r = async {
        let addrs: Vec<String> = node
            .catalog()
            .nodes
            .values()
            .map(|n| n.addr.clone())
            .collect();
        let client = cairn_client::VolumeClient::new(addrs)?
            .with_deadline(COPY_DEADLINE)
            .with_attempt_timeout(COPY_DEADLINE);
        // Only the meta leader copies: when leadership moves, the copy is dropped (which
        // cancels the RPC, and the copy on the source's leader with it) and the new
        // leader starts over when the create is retried, so two copies from different
        // moments do not interleave in the target (but for the last writes in flight).
        let me = node.cfg.id;
        let wait = node.meta.wait(None);
        let lost = wait.metrics(move |m| m.current_leader != Some(me), "meta leadership lost");
        let copied = tokio::select! {
            r = client.copy_to(&source, &target) => r?,
            _ = lost => {
                return Err(Error::Unavailable(format!(
                    "the meta leadership moved while copying into `{target}`; retry on the new leader"
                )));
            }
        };
        node.propose_meta(MetaCommand::SetLabels {
            name: target.clone(),
            set: BTreeMap::from([(COPIED_LABEL.to_string(), copied.to_string())]),
            remove: vec![POPULATING_LABEL.to_string()],
        })
        .await?;
        Ok::<u64, Error>(copied)
    }
    .await;
    copies
        .running
        .lock()
        .expect("copies poisoned")
        .remove(&target);
    match &r {
        Ok(n) => tracing::info!(source = %source, target = %target, copied_bytes = n, "populated"),
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
    v.name.starts_with(SNAPSHOT_PREFIX) && v.labels.contains_key(SNAPSHOT_OF_LABEL)
}

fn view(v: &VolumeRecord) -> pb::Snapshot {
    pb::Snapshot {
        name: v.name[SNAPSHOT_PREFIX.len()..].to_string(),
        source_volume: v.labels.get(SNAPSHOT_OF_LABEL).cloned().unwrap_or_default(),
        size_bytes: v.size,
        created_unix: v.created_unix,
        ready: !v.labels.contains_key(POPULATING_LABEL),
        stored_bytes: v
            .labels
            .get(COPIED_LABEL)
            .and_then(|b| b.parse().ok())
            .unwrap_or(0),
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

fn volume_reply(r: MetaReply) -> Result<VolumeRecord> {
    match r {
        MetaReply::Volume(v) => Ok(v),
        other => Err(Error::Internal(format!("unexpected meta reply {other:?}"))),
    }
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
                labels: BTreeMap::from([
                    (SNAPSHOT_OF_LABEL.to_string(), r.source_volume.clone()),
                    (POPULATING_LABEL.to_string(), "1".to_string()),
                ]),
                created_unix: super::volume_api::now_unix(),
            };
            let v = volume_reply(node.propose_meta(MetaCommand::CreateVolume(rec)).await?)?;
            tracing::info!(snapshot = %r.name, volume = %r.source_volume, group = v.id, "snapshot created");
            v
        }
    };
    if rec.labels.get(SNAPSHOT_OF_LABEL) != Some(&r.source_volume) {
        return Err(Error::AlreadyExists(format!(
            "snapshot `{}` exists of volume `{}`",
            r.name,
            rec.labels
                .get(SNAPSHOT_OF_LABEL)
                .map_or("?", |s| s.as_str())
        )));
    }
    if rec.labels.contains_key(POPULATING_LABEL)
        && copies.populate(node, &r.source_volume, &hidden).await?
    {
        let cat = node.read_catalog().await?;
        if let Some(v) = cat.volumes.get(&hidden) {
            return Ok(view(v));
        }
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
    let after = match r.page_token.as_str() {
        "" => None,
        t => Some(
            t.strip_prefix(TOKEN_PREFIX)
                .map(hidden_name)
                .ok_or_else(|| {
                    Error::invalid("page_token", format!("`{t}` was not issued by storaged"))
                })?,
        ),
    };
    let size = match r.page_size {
        0 => 100,
        n => n.min(1000),
    } as usize;
    let cat = node.read_catalog().await?;
    let matching = cat
        .volumes
        .range::<String, _>((
            after
                .as_ref()
                .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
            std::ops::Bound::Unbounded,
        ))
        .map(|(_, v)| v)
        .filter(|v| is_snapshot(v))
        .map(view)
        .filter(|s| r.name.is_empty() || s.name == r.name)
        .filter(|s| r.source_volume.is_empty() || s.source_volume == r.source_volume);
    let mut snapshots: Vec<pb::Snapshot> = matching.take(size + 1).collect();
    let more = snapshots.len() > size;
    snapshots.truncate(size);
    let next_page_token = match (more, snapshots.last()) {
        (true, Some(last)) => format!("{TOKEN_PREFIX}{}", last.name),
        _ => String::new(),
    };
    Ok(pb::ListSnapshotsResponse {
        snapshots,
        next_page_token,
    })
}

/// A create request's content source: the `cairn.dev/source` label it implies and the
/// volume to copy from (a snapshot's hidden volume, or the source volume itself).
pub struct Source {
    pub label: String,
    pub copy_from: String,
}

/// The validated content source of a create request: the `cairn.dev/source` label it
/// implies, the volume to copy from (a snapshot's hidden volume or the volume itself),
/// and the request field that named it. `None` without a source.
pub fn requested(r: &pb::CreateVolumeRequest) -> Result<Option<(String, String, &'static str)>> {
    match (r.source_snapshot.as_str(), r.source_volume.as_str()) {
        ("", "") => Ok(None),
        (s, "") => {
            validate::name("source_snapshot", s)?;
            Ok(Some((
                format!("snapshot:{s}"),
                hidden_name(s),
                "source_snapshot",
            )))
        }
        ("", v) => {
            validate::name("source_volume", v)?;
            refuse_reserved("source_volume", v)?;
            Ok(Some((
                format!("volume:{v}"),
                v.to_string(),
                "source_volume",
            )))
        }
        _ => Err(Error::invalid(
            "source_volume",
            "give at most one of source_snapshot and source_volume",
        )),
    }
}

/// Checks a new volume's content source against the catalogue; returns the label to
/// record and the volume to copy from.
pub fn check_source(
    cat: &Catalog,
    r: &pb::CreateVolumeRequest,
    kind: VolumeKind,
) -> Result<Option<(String, String)>> {
    let Some((label, copy_from, field)) = requested(r)? else {
        return Ok(None);
    };
    if kind == VolumeKind::Local {
        return Err(Error::invalid(
            "kind",
            "a local volume cannot start from a content source",
        ));
    }
    let src = match cat.volumes.get(&copy_from) {
        None if field == "source_snapshot" => {
            return Err(Error::not_found("snapshot", &r.source_snapshot));
        }
        _ => replicated(cat, field, &copy_from)?,
    };
    if src.labels.contains_key(POPULATING_LABEL) {
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
    Ok(Some((label, copy_from)))
}

/// Fills `v` from its source if it is still populating; ABORTED (retried by clients)
/// while the copy goes on past `ANSWER_WITHIN`.
pub async fn finish_populating(
    node: &Arc<StorageNode>,
    copies: &Copies,
    v: &VolumeRecord,
    copy_from: &str,
) -> Result<()> {
    if !v.labels.contains_key(POPULATING_LABEL) {
        return Ok(());
    }
    if copies.populate(node, copy_from, &v.name).await? {
        return Ok(());
    }
    Err(Error::Aborted(format!(
        "volume `{}` is still being copied from `{copy_from}`; retry",
        v.name
    )))
}

/// The copy source recorded on a populating volume (from its `cairn.dev/source` label).
pub fn copy_from_label(v: &VolumeRecord) -> Option<String> {
    let s = v.labels.get(SOURCE_LABEL)?;
    match s.split_once(':')? {
        ("snapshot", n) => Some(hidden_name(n)),
        ("volume", n) => Some(n.to_string()),
        _ => None,
    }
}
