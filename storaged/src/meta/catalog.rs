//! Catalogue records and the deterministic apply of meta commands. Validation
//! is repeated here (not only on the leader) so concurrent proposals stay safe.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::stored::StoredVolume;
use crate::Error;

pub const ZONE_LABEL: &str = "zone";
pub const NODE_KEY: &str = "topology.cairn.dev/node";
pub const ZONE_KEY: &str = "topology.kubernetes.io/zone";

/// Snapshots are volumes named `snapshot.<name>`; user volumes may not use the prefix.
pub const SNAPSHOT_PREFIX: &str = "snapshot.";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeKind {
    Replicated,
    Local,
}

/// A publish of a volume to a node. Stored in the old shape plus a label (`meta/stored.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentRecord {
    pub node_name: String,
    pub readonly: bool,
    pub multi_node: bool,
    /// The fencing generation of this publish (0: published before generations existed).
    pub generation: u64,
}

/// A volume in the catalogue. Stored (catalogue, snapshots, log entries) in the shape of
/// `StoredVolume`, so what older nodes wrote still loads (see `meta/stored.rs`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(from = "StoredVolume", into = "StoredVolume")]
pub struct VolumeRecord {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub replicas: u32,
    pub kind: VolumeKind,
    /// Node ids holding a replica (one for local volumes).
    pub members: Vec<u64>,
    pub attachments: Vec<AttachmentRecord>,
    /// The user's labels.
    pub labels: BTreeMap<String, String>,
    pub created_unix: i64,
    /// What its first contents are a copy of, if anything.
    pub origin: Option<Origin>,
    pub state: VolumeState,
    /// The last fencing generation given to a publish of this volume; grows with each.
    pub generation: u64,
    /// A member being replaced: `to` is in `members` beside `from` until the group's
    /// membership has promoted `to` and removed `from` (see `meta/moves.rs`).
    pub repair: Option<Repair>,
}

/// One member replacement in progress: `from` leaves the group, `to` joins it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repair {
    pub from: u64,
    pub to: u64,
}

/// What a volume's first contents are a copy of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A snapshot's hidden volume: a point-in-time copy of this volume.
    SnapshotOf(String),
    /// A volume created from a content source.
    Source(ContentSource),
}

/// A create request's content source, as the API names it (`snapshot:NAME`, `volume:NAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContentSource {
    Snapshot(String),
    Volume(String),
}

impl std::fmt::Display for ContentSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContentSource::Snapshot(s) => write!(f, "snapshot:{s}"),
            ContentSource::Volume(v) => write!(f, "volume:{v}"),
        }
    }
}

impl std::str::FromStr for ContentSource {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.split_once(':') {
            Some(("snapshot", name)) => Ok(ContentSource::Snapshot(name.to_string())),
            Some(("volume", name)) => Ok(ContentSource::Volume(name.to_string())),
            _ => Err(()),
        }
    }
}

/// Where a volume is in its lifecycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VolumeState {
    /// Its contents are its users' (a volume made without a source).
    #[default]
    Ready,
    /// Being filled by a copy of its origin: not usable yet.
    Populating,
    /// The copy of its origin is done, `bytes` of written data. A snapshot's volume is
    /// sealed (read-only) from then on; a clone belongs to its users.
    Populated { bytes: u64 },
}

impl VolumeRecord {
    /// A snapshot's volume once its copy is done: read-only from then on.
    pub fn is_sealed_snapshot(&self) -> bool {
        matches!(self.origin, Some(Origin::SnapshotOf(_)))
            && matches!(self.state, VolumeState::Populated { .. })
    }

    /// The volume a snapshot's volume is a copy of.
    pub fn snapshot_of(&self) -> Option<&str> {
        match &self.origin {
            Some(Origin::SnapshotOf(v)) => Some(v),
            _ => None,
        }
    }

    /// The content source a volume was created from.
    pub fn source(&self) -> Option<&ContentSource> {
        match &self.origin {
            Some(Origin::Source(s)) => Some(s),
            _ => None,
        }
    }

    pub fn is_populating(&self) -> bool {
        self.state == VolumeState::Populating
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRole {
    Voter,
    Learner,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: u64,
    pub name: String,
    pub addr: String,
    pub labels: BTreeMap<String, String>,
    pub capacity_bytes: u64,
    pub role: NodeRole,
}

impl NodeRecord {
    pub fn zone(&self) -> Option<&str> {
        self.labels
            .get(ZONE_LABEL)
            .or_else(|| self.labels.get(ZONE_KEY))
            .map(String::as_str)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    pub next_volume_id: u64,
    pub volumes: BTreeMap<String, VolumeRecord>,
    pub nodes: BTreeMap<u64, NodeRecord>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum MetaCommand {
    CreateVolume(VolumeRecord),
    DeleteVolume {
        name: String,
    },
    ResizeVolume {
        name: String,
        size: u64,
    },
    Publish {
        name: String,
        node_name: String,
        readonly: bool,
        multi_node: bool,
    },
    Unpublish {
        name: String,
        node_name: String,
    },
    RegisterNode(NodeRecord),
    RemoveNode {
        id: u64,
    },
    /// Sets and removes labels of a volume, in their stored form (appended last: older
    /// entries still decode). Written by older nodes to finish a copy.
    SetLabels {
        name: String,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
    /// Marks a volume's copy done, `bytes` of written data (appended last).
    FinishPopulating {
        name: String,
        bytes: u64,
    },
    /// Starts replacing member `from` by `to` (appended last; see `meta/moves.rs`).
    StartRepair {
        name: String,
        from: u64,
        to: u64,
    },
    /// `to` is a voter and `from` is out of the group: `from` leaves `members`.
    FinishRepair {
        name: String,
        from: u64,
        to: u64,
    },
    /// `to` could not join (it went down): it leaves `members`, `from` stays.
    AbortRepair {
        name: String,
        from: u64,
        to: u64,
    },
    /// Cordons a node (no new replicas) and, with `draining`, moves its replicas off.
    SetNodeSchedule {
        id: u64,
        cordoned: bool,
        draining: bool,
    },
}

impl MetaCommand {
    pub fn kind(&self) -> &'static str {
        match self {
            MetaCommand::CreateVolume(_) => "create_volume",
            MetaCommand::DeleteVolume { .. } => "delete_volume",
            MetaCommand::ResizeVolume { .. } => "resize_volume",
            MetaCommand::Publish { .. } => "publish",
            MetaCommand::Unpublish { .. } => "unpublish",
            MetaCommand::RegisterNode(_) => "register_node",
            MetaCommand::RemoveNode { .. } => "remove_node",
            MetaCommand::SetLabels { .. } => "set_labels",
            MetaCommand::FinishPopulating { .. } => "finish_populating",
            MetaCommand::StartRepair { .. } => "start_repair",
            MetaCommand::FinishRepair { .. } => "finish_repair",
            MetaCommand::AbortRepair { .. } => "abort_repair",
            MetaCommand::SetNodeSchedule { .. } => "set_node_schedule",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum MetaReply {
    Volume(VolumeRecord),
    Node(NodeRecord),
    Done,
}

impl MetaReply {
    /// The volume a volume command replied with.
    pub fn into_volume(self) -> Result<VolumeRecord, Error> {
        match self {
            MetaReply::Volume(v) => Ok(v),
            other => Err(Error::Internal(format!("unexpected meta reply {other:?}"))),
        }
    }
}

/// Seconds since the Unix epoch, for `created_unix`.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A rejected command, carried through the Raft response and turned back into `Error`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum CommandError {
    NotFound { what: String, name: String },
    AlreadyExists(String),
    InvalidArgument { field: String, reason: String },
    FailedPrecondition(String),
}

impl From<CommandError> for Error {
    fn from(e: CommandError) -> Error {
        match e {
            CommandError::NotFound { what, name } => Error::NotFound {
                what: if what == "node" { "node" } else { "volume" },
                name,
            },
            CommandError::AlreadyExists(m) => Error::AlreadyExists(m),
            CommandError::InvalidArgument { field, reason } => Error::InvalidArgument {
                field: match field.as_str() {
                    "size_bytes" => "size_bytes",
                    "name" => "name",
                    _ => "request",
                },
                reason,
            },
            CommandError::FailedPrecondition(m) => Error::FailedPrecondition(m),
        }
    }
}

pub(super) fn not_found(what: &str, name: &str) -> CommandError {
    CommandError::NotFound {
        what: what.into(),
        name: name.into(),
    }
}

impl Catalog {
    pub fn node_by_name(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.values().find(|n| n.name == name)
    }

    /// Bytes promised to volumes with a replica on `node`.
    pub fn allocated(&self, node: u64) -> u64 {
        self.volumes
            .values()
            .filter(|v| v.members.contains(&node))
            .map(|v| v.size)
            .sum()
    }

    pub fn volume_by_id(&self, id: u64) -> Option<&VolumeRecord> {
        self.volumes.values().find(|v| v.id == id)
    }

    pub fn apply(&mut self, cmd: MetaCommand) -> Result<MetaReply, CommandError> {
        match cmd {
            MetaCommand::CreateVolume(mut rec) => {
                if let Some(existing) = self.volumes.get(&rec.name) {
                    if existing.size == rec.size
                        && existing.replicas == rec.replicas
                        && existing.kind == rec.kind
                    {
                        return Ok(MetaReply::Volume(existing.clone()));
                    }
                    return Err(CommandError::AlreadyExists(format!(
                        "volume `{}` exists with size {} and {} replicas",
                        rec.name, existing.size, existing.replicas
                    )));
                }
                if let Some(missing) = rec.members.iter().find(|m| !self.nodes.contains_key(m)) {
                    return Err(not_found("node", &missing.to_string()));
                }
                self.next_volume_id = self.next_volume_id.max(1);
                rec.id = self.next_volume_id;
                self.next_volume_id += 1;
                self.volumes.insert(rec.name.clone(), rec.clone());
                Ok(MetaReply::Volume(rec))
            }
            MetaCommand::DeleteVolume { name } => {
                let Some(v) = self.volumes.get(&name) else {
                    return Err(not_found("volume", &name));
                };
                if let Some(a) = v.attachments.first() {
                    return Err(CommandError::FailedPrecondition(format!(
                        "volume `{name}` is still published to node `{}`",
                        a.node_name
                    )));
                }
                self.volumes.remove(&name);
                Ok(MetaReply::Done)
            }
            MetaCommand::ResizeVolume { name, size } => {
                let Some(v) = self.volumes.get_mut(&name) else {
                    return Err(not_found("volume", &name));
                };
                if size < v.size {
                    return Err(CommandError::InvalidArgument {
                        field: "size_bytes".into(),
                        reason: format!(
                            "{size} is smaller than the current size {}: volumes only grow",
                            v.size
                        ),
                    });
                }
                v.size = size;
                Ok(MetaReply::Volume(v.clone()))
            }
            MetaCommand::Publish {
                name,
                node_name,
                readonly,
                multi_node,
            } => {
                if self.node_by_name(&node_name).is_none() {
                    return Err(not_found("node", &node_name));
                }
                let Some(v) = self.volumes.get_mut(&name) else {
                    return Err(not_found("volume", &name));
                };
                if let Some(a) = v.attachments.iter().find(|a| a.node_name == node_name) {
                    if a.readonly == readonly {
                        return Ok(MetaReply::Volume(v.clone()));
                    }
                    return Err(CommandError::AlreadyExists(format!(
                        "volume `{name}` is already published to `{node_name}` with readonly={}",
                        a.readonly
                    )));
                }
                if let Some(other) = v.attachments.iter().find(|a| !(a.multi_node && multi_node)) {
                    return Err(CommandError::FailedPrecondition(format!(
                        "volume `{name}` is attached to node `{}` with a single-node access mode",
                        other.node_name
                    )));
                }
                v.generation += 1;
                v.attachments.push(AttachmentRecord {
                    node_name,
                    readonly,
                    multi_node,
                    generation: v.generation,
                });
                Ok(MetaReply::Volume(v.clone()))
            }
            MetaCommand::Unpublish { name, node_name } => {
                if let Some(v) = self.volumes.get_mut(&name) {
                    v.attachments.retain(|a| a.node_name != node_name);
                }
                Ok(MetaReply::Done)
            }
            MetaCommand::RegisterNode(mut rec) => {
                if let Some(other) = self
                    .nodes
                    .values()
                    .find(|n| n.name == rec.name && n.id != rec.id)
                {
                    return Err(CommandError::AlreadyExists(format!(
                        "node name `{}` is taken by node {}",
                        rec.name, other.id
                    )));
                }
                // A node registers itself at every start: its cordon and drain stay.
                if let Some(old) = self.nodes.get(&rec.id) {
                    rec.keep_schedule(old);
                }
                self.nodes.insert(rec.id, rec.clone());
                Ok(MetaReply::Node(rec))
            }
            MetaCommand::RemoveNode { id } => {
                if !self.nodes.contains_key(&id) {
                    return Err(not_found("node", &id.to_string()));
                }
                if let Some(v) = self.volumes.values().find(|v| v.members.contains(&id)) {
                    return Err(CommandError::FailedPrecondition(format!(
                        "node {id} still holds a replica of volume `{}`",
                        v.name
                    )));
                }
                self.nodes.remove(&id);
                Ok(MetaReply::Done)
            }
            MetaCommand::SetLabels { name, set, remove } => {
                let Some(v) = self.volumes.get_mut(&name) else {
                    return Err(not_found("volume", &name));
                };
                let mut stored = StoredVolume::from(v.clone());
                for k in remove {
                    stored.labels.remove(&k);
                }
                stored.labels.extend(set);
                *v = VolumeRecord::from(stored);
                Ok(MetaReply::Volume(v.clone()))
            }
            MetaCommand::FinishPopulating { name, bytes } => {
                let Some(v) = self.volumes.get_mut(&name) else {
                    return Err(not_found("volume", &name));
                };
                v.state = VolumeState::Populated { bytes };
                Ok(MetaReply::Volume(v.clone()))
            }
            MetaCommand::StartRepair { name, from, to } => self.start_repair(&name, from, to),
            MetaCommand::FinishRepair { name, from, to } => self.finish_repair(&name, from, to),
            MetaCommand::AbortRepair { name, from, to } => self.abort_repair(&name, from, to),
            MetaCommand::SetNodeSchedule {
                id,
                cordoned,
                draining,
            } => self.set_schedule(id, cordoned, draining),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> NodeRecord {
        NodeRecord {
            id,
            name: format!("node-{id}"),
            addr: format!("127.0.0.1:{id}"),
            labels: BTreeMap::new(),
            capacity_bytes: 1 << 30,
            role: NodeRole::Voter,
        }
    }

    fn vol(name: &str, size: u64) -> VolumeRecord {
        VolumeRecord {
            id: 0,
            name: name.into(),
            size,
            replicas: 1,
            kind: VolumeKind::Replicated,
            members: vec![1],
            attachments: vec![],
            labels: BTreeMap::new(),
            created_unix: 0,
            origin: None,
            state: VolumeState::Ready,
            generation: 0,
            repair: None,
        }
    }

    #[test]
    fn create_is_idempotent_and_mismatch_is_already_exists() {
        let mut c = Catalog::default();
        c.apply(MetaCommand::RegisterNode(node(1))).unwrap();
        let a = c
            .apply(MetaCommand::CreateVolume(vol("a", 1 << 20)))
            .unwrap();
        let b = c
            .apply(MetaCommand::CreateVolume(vol("a", 1 << 20)))
            .unwrap();
        match (a, b) {
            (MetaReply::Volume(a), MetaReply::Volume(b)) => assert_eq!(a, b),
            other => panic!("unexpected {other:?}"),
        }
        let before = c.clone();
        assert!(matches!(
            c.apply(MetaCommand::CreateVolume(vol("a", 2 << 20))),
            Err(CommandError::AlreadyExists(_))
        ));
        assert_eq!(c, before, "a rejected command changes nothing");
    }

    #[test]
    fn shrink_is_refused_and_publish_fences_single_node_modes() {
        let mut c = Catalog::default();
        c.apply(MetaCommand::RegisterNode(node(1))).unwrap();
        c.apply(MetaCommand::RegisterNode(node(2))).unwrap();
        c.apply(MetaCommand::CreateVolume(vol("a", 2 << 20)))
            .unwrap();
        let before = c.clone();
        assert!(matches!(
            c.apply(MetaCommand::ResizeVolume {
                name: "a".into(),
                size: 1 << 20
            }),
            Err(CommandError::InvalidArgument { .. })
        ));
        assert_eq!(c, before);
        let publish = |n: &str| MetaCommand::Publish {
            name: "a".into(),
            node_name: n.into(),
            readonly: false,
            multi_node: false,
        };
        c.apply(publish("node-1")).unwrap();
        c.apply(publish("node-1")).unwrap();
        assert!(matches!(
            c.apply(publish("node-2")),
            Err(CommandError::FailedPrecondition(_))
        ));
        assert!(matches!(
            c.apply(publish("node-9")),
            Err(CommandError::NotFound { .. })
        ));
        assert!(matches!(
            c.apply(MetaCommand::DeleteVolume { name: "a".into() }),
            Err(CommandError::FailedPrecondition(_))
        ));
        c.apply(MetaCommand::Unpublish {
            name: "a".into(),
            node_name: "node-1".into(),
        })
        .unwrap();
        c.apply(publish("node-2")).unwrap();
        assert!(matches!(
            c.apply(MetaCommand::RemoveNode { id: 1 }),
            Err(CommandError::FailedPrecondition(_))
        ));
    }
}
