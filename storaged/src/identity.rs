//! The data dir's identity: the `IDENTITY` stamp (node id, format) checked at every start,
//! and the rule that a node id the cluster knows never bootstraps again on an empty dir.
//!
//! The rule. A node whose meta Raft state is empty (a fresh disk, a wiped disk, a wrong
//! mount) must not run `initialize` or accept entries under an id the cluster already knows:
//! it would vote as if it had never promised anything, and a leader lacking a committed write
//! could be elected. So before touching Raft, such a node asks every peer it was given
//! (`--initial-cluster`, `--join`) over `RaftService.GroupStatus` for the meta group, which
//! any node answers from its local state without needing a leader or a quorum:
//! - a peer whose catalogue lists this id, or whose meta leader has matched a log entry on
//!   it, proves the id was in use: the node refuses to start and says to remove the id
//!   (`cairnctl node remove --id N`) and add the node again as a new member;
//! - otherwise (no peer lists it, or no peer answers) the start proceeds: that is a brand
//!   new cluster, where every initial member starts empty at once, races its peers and must
//!   still bootstrap. Nodes register in the catalogue only once the meta group has formed,
//!   so in that race no peer can list anyone yet.
//!
//! What it cannot see: a node wiped after it acknowledged meta entries but before its
//! registration committed, restarted while every peer is unreachable or equally stale. A
//! node is registered within moments of its first start, which keeps that window small.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::node::GroupStatus;
use crate::raft::{ChannelCache, META_GROUP};
use crate::{Error, Result};

/// The stamp's file name inside the data dir.
pub const STAMP_FILE: &str = "IDENTITY";
/// The stamp layout this build writes.
pub const FORMAT_VERSION: u32 = 1;
/// How long one peer may take to answer the identity probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `DATA/IDENTITY` holds (JSON).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub node_id: u64,
    pub format_version: u32,
    /// Seconds since the Unix epoch when the data dir was stamped.
    pub created_unix: i64,
    /// The initial meta voters this node was stamped with (id → address), kept so a node
    /// that chose them from its seeds (`discovery`) starts with the same ones again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub initial_cluster: BTreeMap<u64, String>,
}

/// How the data dir looked when `check_stamp` read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirState {
    /// Stamped for this node.
    Stamped,
    /// No stamp yet: stamp it once the start is known to be allowed.
    Unstamped,
}

fn stamp_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STAMP_FILE)
}

/// Reads the stamp, if any; refuses a garbled one or one of a newer format.
pub fn read_stamp(data_dir: &Path) -> Result<Option<Stamp>> {
    let path = stamp_path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io(e)),
    };
    let stamp: Stamp = serde_json::from_str(&text).map_err(|e| {
        Error::FailedPrecondition(format!(
            "{}: not a storaged identity stamp: {e}",
            path.display()
        ))
    })?;
    if stamp.format_version > FORMAT_VERSION {
        return Err(Error::FailedPrecondition(format!(
            "{}: format version {} is newer than this storaged understands ({FORMAT_VERSION})",
            path.display(),
            stamp.format_version
        )));
    }
    Ok(Some(stamp))
}

/// Reads the stamp, if any, and refuses one written for another node id or a newer format.
pub fn check_stamp(data_dir: &Path, node_id: u64) -> Result<DirState> {
    let Some(stamp) = read_stamp(data_dir)? else {
        return Ok(DirState::Unstamped);
    };
    if stamp.node_id != node_id {
        return Err(Error::FailedPrecondition(format!(
            "data dir {} belongs to node {}, not node {node_id}: start it with --node-id {}, \
             or give node {node_id} its own data dir",
            data_dir.display(),
            stamp.node_id,
            stamp.node_id
        )));
    }
    Ok(DirState::Stamped)
}

/// Writes the stamp for `node_id` (atomically: a temp file renamed into place).
pub fn write_stamp(
    data_dir: &Path,
    node_id: u64,
    initial_cluster: &BTreeMap<u64, String>,
) -> Result<()> {
    let stamp = Stamp {
        node_id,
        format_version: FORMAT_VERSION,
        created_unix: crate::meta::catalog::now_unix(),
        initial_cluster: initial_cluster.clone(),
    };
    let text = serde_json::to_string_pretty(&stamp)
        .map_err(|e| Error::Internal(format!("encoding the identity stamp: {e}")))?;
    let tmp = data_dir.join(format!("{STAMP_FILE}.tmp"));
    std::fs::write(&tmp, text + "\n")?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, stamp_path(data_dir))?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(())
}

/// Whether `status` (a peer's view of the meta group) shows node `me` as a known member.
pub fn knows(status: &GroupStatus, me: u64) -> bool {
    status.catalogue_nodes.contains(&me) || matches!(status.matched.get(&me), Some(Some(_)))
}

/// Asks `peers` (addresses, this node's own excluded) whether node `me` is a known member;
/// refuses the start when one says so (see the module comment for the rule).
pub async fn refuse_if_known(me: u64, peers: &[String], channels: &ChannelCache) -> Result<()> {
    let asks = peers.iter().map(|addr| async move {
        let status = crate::node::status::ask(channels, addr, META_GROUP, PROBE_TIMEOUT).await;
        (addr.clone(), status)
    });
    let answers = futures::future::join_all(asks).await;
    let mut answered = 0usize;
    for (addr, status) in answers {
        let Some(status) = status else { continue };
        answered += 1;
        if knows(&status, me) {
            tracing::error!(node = me, peer = %addr, "refusing to start: this node id is a cluster member but its data dir is empty");
            return Err(Error::FailedPrecondition(format!(
                "node {me} is a member of the cluster (peer {addr} knows it) but its data dir \
                 holds no Raft state: it may have lost promises it made, so it will not \
                 initialize anything under this id. To bring it back: `cairnctl node remove \
                 --id {me}` (after its volumes have moved), then start it with a new \
                 --node-id and --join so it enters as a learner and catches up"
            )));
        }
    }
    tracing::info!(
        node = me,
        peers = peers.len(),
        answered,
        "identity probe: no peer knows this node id; starting as a new member"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_for_another_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_stamp(dir.path(), 2).unwrap(), DirState::Unstamped);
        let initial = BTreeMap::from([(1, "a:1".to_string()), (2, "b:1".to_string())]);
        write_stamp(dir.path(), 2, &initial).unwrap();
        assert_eq!(check_stamp(dir.path(), 2).unwrap(), DirState::Stamped);
        let stamp = read_stamp(dir.path()).unwrap().unwrap();
        assert_eq!((stamp.node_id, stamp.initial_cluster), (2, initial));
        let err = check_stamp(dir.path(), 3).unwrap_err().to_string();
        assert!(err.contains("belongs to node 2"), "{err}");
    }

    #[test]
    fn a_garbled_or_newer_stamp_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STAMP_FILE), "not json").unwrap();
        assert!(check_stamp(dir.path(), 1).is_err());
        let older = r#"{"node_id":1,"format_version":1,"created_unix":0}"#;
        std::fs::write(dir.path().join(STAMP_FILE), older).unwrap();
        assert!(
            read_stamp(dir.path())
                .unwrap()
                .unwrap()
                .initial_cluster
                .is_empty()
        );
        let newer = r#"{"node_id":1,"format_version":99,"created_unix":0}"#;
        std::fs::write(dir.path().join(STAMP_FILE), newer).unwrap();
        assert!(check_stamp(dir.path(), 1).is_err());
    }

    #[test]
    fn a_peer_knows_a_registered_or_replicated_node() {
        let mut s = GroupStatus::default();
        assert!(!knows(&s, 2));
        s.matched.insert(2, None);
        assert!(!knows(&s, 2), "a member never reached is not proof of use");
        s.matched.insert(2, Some(0));
        assert!(knows(&s, 2));
        let s = GroupStatus {
            catalogue_nodes: vec![1, 2],
            ..Default::default()
        };
        assert!(knows(&s, 2));
        assert!(!knows(&s, 3));
    }
}
