//! Raft type declarations shared by every group (meta and volumes), the Raft
//! configuration, and the bincode codec used for log entries and the transport.

#[cfg(test)]
mod decode_props;
pub mod dedup;
#[cfg(test)]
mod dedup_apply_tests;
pub mod log_cache;
pub mod log_store;
pub mod log_window;
pub mod resume;
#[cfg(test)]
mod resume_tests;
pub mod snapshot;
pub mod state_machine;
pub mod transport;
pub mod wal_sync;

use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::fence::Fence;
use crate::meta::catalog::{CommandError, MetaCommand, MetaReply};

/// Group 0 is the meta group; a volume's group id is its volume id (>= 1).
pub const META_GROUP: u64 = 0;

/// A proposal: block writes for volume groups, catalogue commands for the meta group.
/// The log holds entries of every shape ever written: new variants go last.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum Request {
    /// A write from before fencing: applied as generation 0 (unfenced).
    Write {
        offset: u64,
        data: bytes::Bytes,
    },
    /// A discard from before fencing: applied as generation 0 (unfenced).
    Discard {
        offset: u64,
        len: u64,
    },
    Meta(MetaCommand),
    /// Who may write to the volume from now on (`fence.rs`).
    Fence(Fence),
    /// A write by the holder of a publish `generation` (0: unfenced), checked at apply.
    FencedWrite {
        offset: u64,
        data: bytes::Bytes,
        generation: u64,
    },
    /// A discard by the holder of a publish `generation`, checked at apply.
    FencedDiscard {
        offset: u64,
        len: u64,
        generation: u64,
    },
    /// A `FencedWrite` named by its writer, applied at most once (`dedup.rs`).
    TaggedWrite {
        offset: u64,
        data: bytes::Bytes,
        generation: u64,
        id: WriteId,
    },
    /// A `FencedDiscard` named by its writer, applied at most once (`dedup.rs`).
    TaggedDiscard {
        offset: u64,
        len: u64,
        generation: u64,
        id: WriteId,
    },
}

impl Request {
    /// A write for the holder of `generation`, tagged when its writer named it.
    pub fn write(offset: u64, data: bytes::Bytes, generation: u64, id: Option<WriteId>) -> Self {
        match id {
            Some(id) => Request::TaggedWrite {
                offset,
                data,
                generation,
                id,
            },
            None => Request::FencedWrite {
                offset,
                data,
                generation,
            },
        }
    }

    /// A discard for the holder of `generation`, tagged when its writer named it.
    pub fn discard(offset: u64, len: u64, generation: u64, id: Option<WriteId>) -> Self {
        match id {
            Some(id) => Request::TaggedDiscard {
                offset,
                len,
                generation,
                id,
            },
            None => Request::FencedDiscard {
                offset,
                len,
                generation,
            },
        }
    }

    /// The writer's name for this entry, if it gave one.
    pub fn write_id(&self) -> Option<WriteId> {
        match self {
            Request::TaggedWrite { id, .. } | Request::TaggedDiscard { id, .. } => Some(*id),
            _ => None,
        }
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Write { offset, data } => write!(f, "write@{offset}+{}", data.len()),
            Request::Discard { offset, len } => write!(f, "discard@{offset}+{len}"),
            Request::Meta(c) => write!(f, "meta:{}", c.kind()),
            Request::Fence(fence) => write!(f, "fence@{}", fence.generation),
            Request::FencedWrite {
                offset,
                data,
                generation,
            } => write!(f, "write@{offset}+{}#{generation}", data.len()),
            Request::FencedDiscard {
                offset,
                len,
                generation,
            } => write!(f, "discard@{offset}+{len}#{generation}"),
            Request::TaggedWrite {
                offset,
                data,
                generation,
                id,
            } => write!(
                f,
                "write@{offset}+{}#{generation} {:x}/{}",
                data.len(),
                id.client,
                id.seq
            ),
            Request::TaggedDiscard {
                offset,
                len,
                generation,
                id,
            } => write!(
                f,
                "discard@{offset}+{len}#{generation} {:x}/{}",
                id.client, id.seq
            ),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub enum Response {
    #[default]
    Done,
    Meta(Result<MetaReply, CommandError>),
    /// A write or discard the volume's fence refused: why.
    Fenced(String),
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Request,
        R = Response,
);

pub use dedup::WriteId;
pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub use snapshot::SnapshotData;
pub use transport::{ChannelCache, GROUP_METADATA, Members, NetworkFactory, TARGET_METADATA};
pub type Raft = openraft::Raft<TypeConfig, state_machine::GroupStateMachine>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type StreamAppendResult = openraft::raft::StreamAppendResult<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Timing: a volume group's leader change completes well within 3 s (heartbeats every
/// 100 ms, elections after 300–600 ms of silence). The meta group, which block I/O never
/// waits for and which never goes quiet, beats half as often (200 ms, elections after
/// 600–1200 ms): its heartbeats are most of an idle node's work.
/// Volume groups snapshot (and purge their log) every `snapshot_logs` entries.
pub fn config(meta: bool, snapshot_logs: u64) -> Arc<openraft::Config> {
    let cfg = openraft::Config {
        cluster_name: if meta {
            "cairn-meta".into()
        } else {
            "cairn-volume".into()
        },
        heartbeat_interval: if meta { 200 } else { 100 },
        election_timeout_min: if meta { 600 } else { 300 },
        election_timeout_max: if meta { 1200 } else { 600 },
        max_payload_entries: 64,
        // A node that cannot win an election (cut off from the others, or behind) asks
        // first whether it would be elected, so it never inflates its term and, back in
        // touch, makes a healthy leader step down (`RaftService.PreVote`).
        enable_pre_vote: Some(true),
        // A restarted leader stands for election like any node (openraft would otherwise
        // resume its term at once). After a power loss its log may lack the tail of its own
        // term: entries it had sent and that two followers made durable and committed before
        // its own fsync. Resuming that term, it would give the same log ids to new entries,
        // and followers that hold the old ones would keep them: acknowledged writes lost or
        // served stale (found by `cairn-chaos` with an EIO fault on a leader's disk, healed
        // by its power loss). Elected anew, it needs a log as complete as a majority's.
        enable_leader_restore: Some(false),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(if meta {
            1000
        } else {
            snapshot_logs.max(16)
        }),
        max_in_snapshot_log_to_keep: if meta {
            100
        } else {
            // Snapshots come often (every 32 MiB applied): keep a window of entries so a
            // briefly lagging follower (a node restarting) catches up from the log, not
            // from a whole-volume snapshot. Kept entries are written out again when the
            // raft_log memtable flushes; 256 halved that but made restarted nodes need
            // snapshots, stalling the group's first commits after a leader change.
            (snapshot_logs / 4).clamp(8, 1024)
        },
        ..Default::default()
    };
    Arc::new(cfg.validate().expect("static raft config is valid"))
}

pub fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    bincode::serde::encode_to_vec(v, bincode::config::standard())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Like `encode`, into a buffer of `hint` bytes reserved up front: a large entry is
/// then copied once, not through a series of doubling reallocations.
pub fn encode_sized<T: Serialize>(v: &T, hint: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(hint);
    bincode::serde::encode_into_std_write(v, &mut out, bincode::config::standard())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(out)
}

/// The volume offset and block payload an entry carries, if it is a write.
pub fn entry_data(e: &Entry) -> Option<(u64, &bytes::Bytes)> {
    match &e.payload {
        openraft::EntryPayload::Normal(
            Request::Write { offset, data }
            | Request::FencedWrite { offset, data, .. }
            | Request::TaggedWrite { offset, data, .. },
        ) => Some((*offset, data)),
        _ => None,
    }
}

/// The block payload of a write entry, to replace (`log_store.rs` stores it apart).
pub fn entry_data_mut(e: &mut Entry) -> Option<&mut bytes::Bytes> {
    match &mut e.payload {
        openraft::EntryPayload::Normal(
            Request::Write { data, .. }
            | Request::FencedWrite { data, .. }
            | Request::TaggedWrite { data, .. },
        ) => Some(data),
        _ => None,
    }
}

/// About how many bytes an entry encodes to: its block payload plus framing.
pub fn entry_size_hint(e: &Entry) -> usize {
    64 + entry_data(e).map_or(0, |(_, d)| d.len())
}

/// The most one decoded message may claim (bincode's limit): the transport's largest
/// message, so a length prefix that lies cannot ask for more.
pub const DECODE_LIMIT: usize = 512 << 20;

pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> io::Result<T> {
    let config = bincode::config::standard().with_limit::<DECODE_LIMIT>();
    bincode::serde::decode_from_slice(b, config)
        .map(|(v, _)| v)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub(crate) fn io_err(e: crate::Error) -> io::Error {
    io::Error::other(e.to_string())
}
