//! The stored shape of a volume record: the record as older nodes wrote it, its lifecycle
//! in three labels. Catalogues, snapshots and log entries keep this shape, so both load.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::catalog::{
    AttachmentRecord, ContentSource, Origin, Repair, VolumeKind, VolumeRecord, VolumeState,
};

/// On a snapshot's volume: the volume it is a copy of.
const SNAPSHOT_OF_LABEL: &str = "cairn.dev/snapshot-of";
/// On a volume made from a content source: `snapshot:NAME` or `volume:NAME`.
const SOURCE_LABEL: &str = "cairn.dev/source";
/// Present while a snapshot or a volume made from a source is still being copied.
const POPULATING_LABEL: &str = "cairn.dev/populating";
/// Bytes of written data copied in (set when the copy completes).
const COPIED_LABEL: &str = "cairn.dev/bytes-copied";
/// The last fencing generation given to a publish (absent: none yet).
const GENERATION_LABEL: &str = "cairn.dev/generation";
/// Prefixes a node name: the generation of the volume's publish to that node.
const ATTACHED_PREFIX: &str = "cairn.dev/generation.";
/// A member replacement in progress: `FROM>TO` (node ids).
const REPAIR_LABEL: &str = "cairn.dev/repair";

/// An attachment as stored: field for field what older nodes encode and decode (its
/// generation is kept in a label).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StoredAttachment {
    pub node_name: String,
    pub readonly: bool,
    pub multi_node: bool,
}

/// `VolumeRecord` as stored: field for field what older nodes encode and decode.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StoredVolume {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub replicas: u32,
    pub kind: VolumeKind,
    pub members: Vec<u64>,
    pub attachments: Vec<StoredAttachment>,
    /// The user's labels and the lifecycle and generation labels above.
    pub labels: BTreeMap<String, String>,
    pub created_unix: i64,
}

impl From<StoredVolume> for VolumeRecord {
    fn from(s: StoredVolume) -> Self {
        let mut labels = s.labels;
        let snapshot_of = labels.remove(SNAPSHOT_OF_LABEL);
        // A source that does not parse (none of ours) stays a plain label.
        let source = match labels.remove(SOURCE_LABEL) {
            Some(l) => match l.parse::<ContentSource>() {
                Ok(src) => Some(src),
                Err(()) => {
                    labels.insert(SOURCE_LABEL.to_string(), l);
                    None
                }
            },
            None => None,
        };
        let origin = snapshot_of
            .map(Origin::SnapshotOf)
            .or(source.map(Origin::Source));
        let populating = labels.remove(POPULATING_LABEL).is_some();
        let copied = labels.remove(COPIED_LABEL).and_then(|b| b.parse().ok());
        let generation = take_number(&mut labels, GENERATION_LABEL);
        let repair = labels.remove(REPAIR_LABEL).and_then(|r| {
            let (from, to) = r.split_once('>')?;
            Some(Repair {
                from: from.parse().ok()?,
                to: to.parse().ok()?,
            })
        });
        let attachments = s
            .attachments
            .into_iter()
            .map(|a| AttachmentRecord {
                generation: take_number(&mut labels, &format!("{ATTACHED_PREFIX}{}", a.node_name)),
                node_name: a.node_name,
                readonly: a.readonly,
                multi_node: a.multi_node,
            })
            .collect();
        let state = match (populating, copied) {
            (true, _) => VolumeState::Populating,
            (false, Some(bytes)) => VolumeState::Populated { bytes },
            (false, None) => VolumeState::Ready,
        };
        VolumeRecord {
            id: s.id,
            name: s.name,
            size: s.size,
            replicas: s.replicas,
            kind: s.kind,
            members: s.members,
            attachments,
            labels,
            created_unix: s.created_unix,
            origin,
            state,
            generation,
            repair,
        }
    }
}

impl From<VolumeRecord> for StoredVolume {
    fn from(v: VolumeRecord) -> Self {
        let mut labels = v.labels;
        match v.origin {
            Some(Origin::SnapshotOf(of)) => {
                labels.insert(SNAPSHOT_OF_LABEL.to_string(), of);
            }
            Some(Origin::Source(src)) => {
                labels.insert(SOURCE_LABEL.to_string(), src.to_string());
            }
            None => {}
        }
        match v.state {
            VolumeState::Ready => {}
            VolumeState::Populating => {
                labels.insert(POPULATING_LABEL.to_string(), "1".to_string());
            }
            VolumeState::Populated { bytes } => {
                labels.insert(COPIED_LABEL.to_string(), bytes.to_string());
            }
        }
        if v.generation > 0 {
            labels.insert(GENERATION_LABEL.to_string(), v.generation.to_string());
        }
        if let Some(r) = v.repair {
            labels.insert(REPAIR_LABEL.to_string(), format!("{}>{}", r.from, r.to));
        }
        let attachments = v
            .attachments
            .into_iter()
            .map(|a| {
                if a.generation > 0 {
                    labels.insert(
                        format!("{ATTACHED_PREFIX}{}", a.node_name),
                        a.generation.to_string(),
                    );
                }
                StoredAttachment {
                    node_name: a.node_name,
                    readonly: a.readonly,
                    multi_node: a.multi_node,
                }
            })
            .collect();
        StoredVolume {
            id: v.id,
            name: v.name,
            size: v.size,
            replicas: v.replicas,
            kind: v.kind,
            members: v.members,
            attachments,
            labels,
            created_unix: v.created_unix,
        }
    }
}

/// A number kept in a label (0 when absent or not a number), the label removed.
fn take_number(labels: &mut BTreeMap<String, String>, key: &str) -> u64 {
    labels.remove(key).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The labels a volume shows in the API: its own and its lifecycle's, as before (the
/// generations are shown in their own fields).
pub fn api_labels(v: &VolumeRecord) -> BTreeMap<String, String> {
    let mut labels = StoredVolume::from(v.clone()).labels;
    labels.retain(|k, _| {
        k != GENERATION_LABEL && k != REPAIR_LABEL && !k.starts_with(ATTACHED_PREFIX)
    });
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::catalog::{Catalog, MetaCommand};
    use crate::raft::{decode, encode};

    fn stored(name: &str, labels: &[(&str, &str)]) -> StoredVolume {
        StoredVolume {
            id: 3,
            name: name.into(),
            size: 1 << 20,
            replicas: 3,
            kind: VolumeKind::Replicated,
            members: vec![1, 2, 3],
            attachments: vec![],
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created_unix: 7,
        }
    }

    /// The catalogue as older nodes encoded it: volumes in their stored shape.
    #[derive(Serialize, Deserialize)]
    struct OldCatalog {
        next_volume_id: u64,
        volumes: BTreeMap<String, StoredVolume>,
        nodes: BTreeMap<u64, crate::meta::catalog::NodeRecord>,
    }

    #[test]
    fn a_catalogue_written_with_labels_loads_typed_and_stores_the_same_bytes() {
        let old = OldCatalog {
            next_volume_id: 9,
            volumes: [
                stored("plain", &[("team", "a")]),
                stored(
                    "snapshot.s1",
                    &[(SNAPSHOT_OF_LABEL, "plain"), (POPULATING_LABEL, "1")],
                ),
                stored(
                    "snapshot.s2",
                    &[(SNAPSHOT_OF_LABEL, "plain"), (COPIED_LABEL, "4096")],
                ),
                stored(
                    "clone",
                    &[(SOURCE_LABEL, "snapshot:s2"), (COPIED_LABEL, "4096")],
                ),
            ]
            .into_iter()
            .map(|v| (v.name.clone(), v))
            .collect(),
            nodes: BTreeMap::new(),
        };
        let bytes = encode(&old).unwrap();
        let cat: Catalog = decode(&bytes).unwrap();
        let v = |n: &str| cat.volumes[n].clone();
        assert_eq!(v("plain").origin, None);
        assert_eq!(v("plain").state, VolumeState::Ready);
        assert_eq!(v("plain").labels.len(), 1, "user labels only");
        assert_eq!(v("snapshot.s1").snapshot_of(), Some("plain"));
        assert_eq!(v("snapshot.s1").state, VolumeState::Populating);
        assert!(!v("snapshot.s1").is_sealed_snapshot());
        assert!(v("snapshot.s2").is_sealed_snapshot());
        assert_eq!(
            v("clone").source(),
            Some(&ContentSource::Snapshot("s2".into()))
        );
        assert_eq!(v("clone").state, VolumeState::Populated { bytes: 4096 });
        assert!(!v("clone").is_sealed_snapshot());
        assert!(v("clone").labels.is_empty());
        assert_eq!(encode(&cat).unwrap(), bytes, "stored in the old shape");
    }

    #[test]
    fn publish_generations_round_trip_in_the_old_shape() {
        let mut old = stored("v", &[("team", "a")]);
        old.attachments = vec![StoredAttachment {
            node_name: "node-1".into(),
            readonly: false,
            multi_node: false,
        }];
        // Written before generations: generation 0 (unfenced).
        let v: VolumeRecord = decode(&encode(&old).unwrap()).unwrap();
        assert_eq!((v.generation, v.attachments[0].generation), (0, 0));
        let mut cat = Catalog::default();
        cat.nodes.insert(
            2,
            crate::meta::catalog::NodeRecord {
                id: 2,
                name: "node-2".into(),
                addr: "a:1".into(),
                labels: BTreeMap::new(),
                capacity_bytes: 1,
                role: crate::meta::catalog::NodeRole::Voter,
            },
        );
        cat.volumes.insert("v".into(), v);
        cat.apply(MetaCommand::Unpublish {
            name: "v".into(),
            node_name: "node-1".into(),
        })
        .unwrap();
        let publish = MetaCommand::Publish {
            name: "v".into(),
            node_name: "node-2".into(),
            readonly: true,
            multi_node: false,
        };
        cat.apply(publish.clone()).unwrap();
        cat.apply(publish).unwrap();
        let v = cat.volumes["v"].clone();
        assert_eq!(
            (v.generation, v.attachments[0].generation),
            (1, 1),
            "a repeat keeps it"
        );
        let back: VolumeRecord = decode(&encode(&v).unwrap()).unwrap();
        assert_eq!(back, v);
        assert_eq!(api_labels(&v).len(), 1, "generations are not user labels");
    }

    #[test]
    fn an_old_set_labels_entry_still_finishes_a_copy() {
        let mut cat = Catalog::default();
        let v = VolumeRecord::from(stored(
            "snapshot.s",
            &[(SNAPSHOT_OF_LABEL, "a"), (POPULATING_LABEL, "1")],
        ));
        cat.volumes.insert(v.name.clone(), v);
        let entry = encode(&MetaCommand::SetLabels {
            name: "snapshot.s".into(),
            set: [(COPIED_LABEL.to_string(), "512".to_string())].into(),
            remove: vec![POPULATING_LABEL.to_string()],
        })
        .unwrap();
        cat.apply(decode(&entry).unwrap()).unwrap();
        let v = &cat.volumes["snapshot.s"];
        assert_eq!(v.state, VolumeState::Populated { bytes: 512 });
        assert!(v.is_sealed_snapshot());
    }
}
