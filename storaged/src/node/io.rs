//! Block I/O served on a volume group's leader: resolving the volume, the bounds check,
//! proposing writes and discards, linearizable reads, and the I/O metrics of each request.

use std::sync::Arc;
use std::time::Instant;

use crate::chunks::{self, IoKind};
use crate::engine::{Cf, Engine, Pages, keys};
use crate::fence::{self, Access, Fence};
use crate::meta::catalog::{VolumeKind, VolumeRecord};
use crate::metrics::Metrics;
use crate::node::groups::Groups;
use crate::node::meta::Meta;
use crate::node::space::Space;
use crate::raft::state_machine::GroupStateMachine;
use crate::raft::{META_GROUP, Raft, Request, Response, WriteId};
use crate::{Error, Result};

/// The leader side of block I/O; a request for a group led elsewhere is a `NotLeader`.
pub struct NodeIo {
    meta: Arc<Meta>,
    groups: Arc<Groups>,
    engine: Arc<dyn Engine>,
    metrics: Arc<Metrics>,
    space: Arc<Space>,
}

/// A snapshot is written only by the copy that makes it; after that it is read-only.
fn refuse_sealed_snapshot(vol: &VolumeRecord) -> Result<()> {
    if vol.is_sealed_snapshot() {
        return Err(Error::FailedPrecondition(format!(
            "`{}` holds a snapshot and is read-only",
            vol.name
        )));
    }
    Ok(())
}

impl NodeIo {
    pub(super) fn new(
        meta: Arc<Meta>,
        groups: Arc<Groups>,
        engine: Arc<dyn Engine>,
        metrics: Arc<Metrics>,
        space: Arc<Space>,
    ) -> Self {
        NodeIo {
            meta,
            groups,
            engine,
            metrics,
            space,
        }
    }

    /// The data filesystem's reserve, and what peers say of theirs.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// Resolves a volume for I/O on this node: its record and local leader Raft, or a redirect.
    fn target(&self, name: &str) -> Result<(VolumeRecord, Raft)> {
        // On every I/O: look up one record, never clone the whole catalogue.
        let found = self.meta.with_catalog(|cat| {
            cat.volumes.get(name).cloned().map(|v| {
                let first = v.members.first().and_then(|m| self.meta.addr_of(cat, *m));
                (v, first)
            })
        });
        let Some((vol, first_member)) = found else {
            if self.meta.raft().is_leader() {
                return Err(Error::not_found("volume", name));
            }
            // Our catalogue may lag: send the client to the meta leader.
            return Err(self.meta.not_leader(self.meta.raft(), META_GROUP));
        };
        if vol.kind == VolumeKind::Local {
            return Err(Error::FailedPrecondition(format!(
                "volume `{name}` is a local volume: it has no replicated block API; attach it on its node"
            )));
        }
        let local = self.groups.get(vol.id);
        if let Some(raft) = &local {
            // A quiet group restarts its timers: a leader for its read lease, a follower
            // whose leader's node is silent so that it elects.
            self.groups.wake_for_io(vol.id, raft);
        }
        match local {
            Some(raft) if raft.is_leader() => Ok((vol, raft)),
            Some(raft) => Err(self.meta.not_leader(&raft, vol.id)),
            None => Err(Error::NotLeader {
                group: vol.id,
                leader: first_member,
            }),
        }
    }

    /// Checks an I/O against the local catalogue; a range past the end is checked again
    /// against a fresh catalogue, since a resize may be committed but not yet applied here.
    /// The hot path never leaves the node.
    async fn check(&self, vol: &VolumeRecord, offset: u64, len: u64, kind: IoKind) -> Result<()> {
        match chunks::check_io(offset, len, vol.size, kind) {
            Err(Error::OutOfRange(_)) => {
                let cat = self.meta.fresh().await?;
                let size = cat.volumes.get(&vol.name).map_or(vol.size, |v| v.size);
                chunks::check_io(offset, len, size, kind)
            }
            other => other,
        }
    }

    /// Writes `data` for the holder of publish `generation` (0: unfenced, see `fence.rs`),
    /// at most once per write `id` (`raft/dedup.rs`; `None`: a caller that names no writes).
    pub async fn write(
        &self,
        name: &str,
        offset: u64,
        data: bytes::Bytes,
        generation: u64,
        id: Option<WriteId>,
    ) -> Result<()> {
        let (started, len) = (Instant::now(), data.len() as u64);
        let r = async {
            let (vol, raft) = self.target(name)?;
            refuse_sealed_snapshot(&vol)?;
            self.check(&vol, offset, len, IoKind::Write).await?;
            self.space.admit_write(&vol.name, &vol.members)?;
            let req = Request::write(offset, data, generation, id);
            self.propose(&raft, vol.id, req).await
        }
        .await;
        self.metrics.io("write", len, started, &r);
        r
    }

    /// Discards a range like `write`, at most once per write `id`.
    pub async fn discard(
        &self,
        name: &str,
        offset: u64,
        len: u64,
        generation: u64,
        id: Option<WriteId>,
    ) -> Result<()> {
        let started = Instant::now();
        let r = async {
            let (vol, raft) = self.target(name)?;
            refuse_sealed_snapshot(&vol)?;
            self.check(&vol, offset, len, IoKind::Discard).await?;
            let req = Request::discard(offset, len, generation, id);
            self.propose(&raft, vol.id, req).await
        }
        .await;
        self.metrics.io("discard", len, started, &r);
        r
    }

    /// Proposes a block entry; the fence's refusal at apply is FAILED_PRECONDITION.
    async fn propose(&self, raft: &Raft, group: u64, req: Request) -> Result<()> {
        let resp = raft
            .client_write(req)
            .await
            .map_err(|e| self.meta.write_error(raft, group, e))?;
        match resp.data {
            Response::Fenced(why) => Err(Error::FailedPrecondition(why)),
            _ => Ok(()),
        }
    }

    /// Brings the fence of `name`'s group up to date with the catalogue (after a publish
    /// committed there), on the group's leader; returns the fence's generation.
    pub async fn fence(&self, name: &str) -> Result<u64> {
        let (_, raft) = self.target(name)?;
        let cat = self.meta.fresh().await?;
        let vol = cat
            .volumes
            .get(name)
            .ok_or_else(|| Error::not_found("volume", name))?;
        let fence = Fence::of(vol);
        let generation = fence.generation;
        self.propose(&raft, vol.id, Request::Fence(fence)).await?;
        Ok(generation)
    }

    pub async fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let started = Instant::now();
        let r = async {
            let (vol, raft) = self.target(name)?;
            self.check(&vol, offset, len, IoKind::Read).await?;
            self.meta.linearize(&raft, vol.id).await?;
            chunks::read(self.engine.as_ref(), vol.id, offset, len)
        }
        .await;
        self.metrics.io("read", len, started, &r);
        r
    }

    /// Every acknowledged write is already committed (fsynced on a majority), so a flush
    /// only has to confirm that this node still leads the group, and that the fence it has
    /// applied by then still lets the holder of `generation` in.
    pub async fn flush(&self, name: &str, generation: u64) -> Result<()> {
        let started = Instant::now();
        let r = async {
            let (vol, raft) = self.target(name)?;
            self.meta.linearize(&raft, vol.id).await?;
            let applied = GroupStateMachine::applied_fence(self.engine.as_ref(), vol.id)?;
            fence::check(applied.as_ref(), generation, Access::Flush)
                .map_err(Error::FailedPrecondition)
        }
        .await;
        self.metrics.io("flush", 0, started, &r);
        r
    }

    /// A point-in-time view of `name`'s written chunks, paged `page_bytes` at a time, taken
    /// after a linearizable barrier (this node must lead the volume's group): it holds
    /// every write acknowledged before the call and, since entries apply atomically, a
    /// prefix of the volume's log.
    pub async fn chunk_pages(
        &self,
        name: &str,
        page_bytes: usize,
    ) -> Result<(VolumeRecord, Pages)> {
        let (vol, raft) = self.target(name)?;
        self.meta.linearize(&raft, vol.id).await?;
        let pages = self.engine.clone().scan_pages(
            Cf::Data,
            keys::group_start(vol.id).to_vec(),
            keys::group_end(vol.id),
            page_bytes,
        )?;
        Ok((vol, pages))
    }
}
