//! The data dir's identity: the `IDENTITY` stamp (cluster, node id, format) checked at every
//! start, and the rule that an empty data dir never bootstraps under an id the cluster knows.
//!
//! The cluster is named by its CA (decision 032): the SHA-256 of each certificate in
//! `ca.crt`. A dir stamped with other CA fingerprints belongs to another cluster and is
//! refused; a CA bundle sharing one with the stamp (a CA rotation) adds the new ones; a
//! stamp from before cluster ids adopts the current CA at the next start.
//!
//! The rule. A node whose meta Raft state is empty (a fresh disk, a wiped disk, a wrong
//! mount) must not run `initialize` or take Raft messages under an id the cluster already
//! knows: it would vote as if it had never promised anything, and a leader lacking a
//! committed write could be elected. So before its Raft runs, such a node asks every peer
//! it was given (`--initial-cluster`, `--join`) over `RaftService.GroupStatus` for the meta
//! group, which any node answers from its local state (a node still deciding answers
//! "empty", `service/waiting.rs`), and loops:
//! - a peer whose catalogue lists this id, or whose meta leader has matched a log entry on
//!   it, proves the id was in use: the node refuses to start and says to remove the id
//!   (`cairnctl node remove --id N`) and add the node again as a new member;
//! - a peer that holds a formed meta group (voters or log entries) and does not know the
//!   id: the node starts without initializing and the leader brings it up to date;
//! - an initial voter initializes only when a majority of the initial voters, itself NOT
//!   counted, answered that they hold nothing: any committed entry is on a majority, so
//!   such a majority proves nothing was ever committed (a brand new cluster);
//! - otherwise (too few answers, e.g. every peer down) it waits and says so: it never
//!   bootstraps alone.
//!
//! What it cannot see: a node wiped after it acknowledged meta entries but before its
//! registration committed, restarted after the meta leader changed (a new leader has not
//! matched it). A node is registered within moments of its first start.

use std::collections::{BTreeMap, BTreeSet};
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
/// The wait between two probe rounds while the start cannot be decided.
const ROUND: Duration = Duration::from_secs(1);

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
    /// The cluster: fingerprints of the CA certificates trusted when stamped (`cluster_id`).
    /// Empty: stamped before cluster ids (adopted at the next start) or with `--insecure`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub cluster: BTreeSet<String>,
}

/// The cluster id of a `--tls-dir`: the SHA-256 (hex, first 16 bytes) of each certificate
/// in its `ca.crt` (several during a CA rotation); empty with `--insecure`.
pub fn cluster_id(security: &cairn_client::Security) -> Result<BTreeSet<String>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use sha2::Digest;
    let cairn_client::Security::Tls(tls) = security else {
        return Ok(BTreeSet::new());
    };
    let ids = CertificateDer::pem_slice_iter(&tls.current().files.ca)
        .map(|c| {
            let c = c.map_err(|e| Error::invalid("tls-dir", format!("ca.crt: {e}")))?;
            let digest = sha2::Sha256::digest(c.as_ref());
            Ok(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
        })
        .collect::<Result<BTreeSet<String>>>()?;
    if ids.is_empty() {
        return Err(Error::invalid("tls-dir", "ca.crt holds no certificate"));
    }
    Ok(ids)
}

/// How a start joins its Raft: `Initialize` bootstraps the meta group with the initial
/// voters; `Start` runs it empty, for the leader to bring up to date. `Start` carries the
/// nodes the answering peers know (meta voters, learners, catalogue): until this node's
/// own catalogue arrives, only they may send it Raft messages (`raft_sender`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Initialize,
    Start { senders: BTreeSet<u64> },
}

impl Admission {
    /// The nodes an empty node takes Raft messages from before it has a catalogue.
    pub fn first_senders(&self, initial: &BTreeMap<u64, String>) -> BTreeSet<u64> {
        match self {
            Admission::Initialize => initial.keys().copied().collect(),
            Admission::Start { senders } => senders.clone(),
        }
    }
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

/// Reads the stamp, if any, and refuses one written for another node id or another cluster
/// (`cluster`: this start's `cluster_id`). A stamp without a cluster adopts `cluster`, and
/// one sharing a CA with it (a CA rotation) adds the new CA: both rewrite the stamp.
pub fn check_stamp(data_dir: &Path, node_id: u64, cluster: &BTreeSet<String>) -> Result<DirState> {
    let Some(mut stamp) = read_stamp(data_dir)? else {
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
    if stamp.cluster == *cluster {
        return Ok(DirState::Stamped);
    }
    let show = |ids: &BTreeSet<String>| ids.iter().cloned().collect::<Vec<_>>().join(",");
    if cluster.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "data dir {} belongs to cluster {} (its CA): start it with that cluster's --tls-dir, \
             not --insecure",
            data_dir.display(),
            show(&stamp.cluster)
        )));
    }
    if !stamp.cluster.is_empty() && stamp.cluster.is_disjoint(cluster) {
        return Err(Error::FailedPrecondition(format!(
            "data dir {} belongs to cluster {}, but --tls-dir's CA is cluster {}: this is \
             another cluster's node (or a CA replaced without a rotation): give this node its \
             own data dir, or its own cluster's --tls-dir",
            data_dir.display(),
            show(&stamp.cluster),
            show(cluster)
        )));
    }
    if stamp.cluster.is_empty() {
        tracing::info!(node = node_id, cluster = %show(cluster), data_dir = %data_dir.display(), "adopting this CA as the cluster of a data dir stamped before cluster ids");
    } else {
        tracing::info!(node = node_id, old = %show(&stamp.cluster), new = %show(cluster), "CA rotation: the data dir's cluster now also holds the new CA");
    }
    stamp.cluster.extend(cluster.iter().cloned());
    store(data_dir, &stamp)?;
    Ok(DirState::Stamped)
}

/// Writes the stamp for `node_id` of `cluster` (atomically: a temp file renamed into place).
pub fn write_stamp(
    data_dir: &Path,
    node_id: u64,
    initial_cluster: &BTreeMap<u64, String>,
    cluster: &BTreeSet<String>,
) -> Result<()> {
    let stamp = Stamp {
        node_id,
        format_version: FORMAT_VERSION,
        created_unix: crate::meta::catalog::now_unix(),
        initial_cluster: initial_cluster.clone(),
        cluster: cluster.clone(),
    };
    store(data_dir, &stamp)
}

fn store(data_dir: &Path, stamp: &Stamp) -> Result<()> {
    let text = serde_json::to_string_pretty(stamp)
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

/// Every node the answers name: meta voters, learners and catalogue entries.
fn known_nodes<'a>(answers: impl Iterator<Item = &'a GroupStatus>) -> BTreeSet<u64> {
    answers
        .flat_map(|s| s.voters.iter().chain(&s.learners).chain(&s.catalogue_nodes))
        .copied()
        .collect()
}

/// Whether `status` shows a formed meta group: voters, or log entries.
fn formed(status: &GroupStatus) -> bool {
    !status.voters.is_empty() || status.last_log_index.is_some()
}

/// How many empty peers prove that no entry was ever committed among `voters` initial
/// voters: a majority of them, this node not counted (none for a single node).
pub fn empty_peers_needed(voters: usize) -> usize {
    (voters / 2 + 1).min(voters.saturating_sub(1))
}

/// Decides how an empty node `me` starts (see the module comment): refuses when a peer
/// knows the id, and waits, probing `peers` every round, while nothing proves either a
/// running cluster or a brand new one. `initial` holds the initial voters (id → address).
pub async fn admit(
    me: u64,
    initial: &BTreeMap<u64, String>,
    peers: &[String],
    channels: &ChannelCache,
) -> Result<Admission> {
    let voter = initial.contains_key(&me);
    let needed = empty_peers_needed(initial.len());
    for round in 1u64.. {
        let asks = peers.iter().map(|addr| async move {
            let status = crate::node::status::ask(channels, addr, META_GROUP, PROBE_TIMEOUT).await;
            (addr.clone(), status)
        });
        let answers: Vec<(String, GroupStatus)> = futures::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(|(a, s)| s.map(|s| (a, s)))
            .collect();
        if let Some((addr, _)) = answers.iter().find(|(_, s)| knows(s, me)) {
            tracing::error!(node = me, peer = %addr, "refusing to start: this node id is a cluster member but its data dir is empty");
            return Err(Error::FailedPrecondition(format!(
                "node {me} is a member of the cluster (peer {addr} knows it) but its data dir \
                 holds no Raft state: it may have lost promises it made, so it will not \
                 initialize anything under this id. To bring it back: `cairnctl node remove \
                 --id {me}` (after its volumes have moved), then start it with a new \
                 --node-id and --join so it enters as a learner and catches up"
            )));
        }
        if let Some((addr, _)) = answers.iter().find(|(_, s)| formed(s)) {
            let senders = known_nodes(answers.iter().map(|(_, s)| s));
            tracing::info!(node = me, peer = %addr, senders = ?senders, "identity probe: a cluster runs and does not know this node id; starting empty");
            return Ok(Admission::Start { senders });
        }
        let empty_voters = answers
            .iter()
            .filter(|(a, _)| initial.iter().any(|(id, addr)| *id != me && addr == a))
            .count();
        if voter && empty_voters >= needed {
            tracing::info!(
                node = me,
                empty_voters,
                "identity probe: a majority of the initial voters hold nothing; bootstrapping"
            );
            return Ok(Admission::Initialize);
        }
        if round % 10 == 1 {
            tracing::warn!(
                node = me,
                round,
                answered = answers.len(),
                empty_voters,
                needed,
                "this node's data dir is empty and no peer's answer decides yet whether a \
                 cluster ran under its id: waiting (it never bootstraps alone)"
            );
        }
        tokio::time::sleep(ROUND).await;
    }
    Err(Error::Internal(
        "the identity probe loop does not end".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_for_another_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let none = BTreeSet::new();
        assert_eq!(
            check_stamp(dir.path(), 2, &none).unwrap(),
            DirState::Unstamped
        );
        let initial = BTreeMap::from([(1, "a:1".to_string()), (2, "b:1".to_string())]);
        write_stamp(dir.path(), 2, &initial, &none).unwrap();
        assert_eq!(
            check_stamp(dir.path(), 2, &none).unwrap(),
            DirState::Stamped
        );
        let stamp = read_stamp(dir.path()).unwrap().unwrap();
        assert_eq!((stamp.node_id, stamp.initial_cluster), (2, initial));
        let err = check_stamp(dir.path(), 3, &none).unwrap_err().to_string();
        assert!(err.contains("belongs to node 2"), "{err}");
    }

    #[test]
    fn a_garbled_or_newer_stamp_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STAMP_FILE), "not json").unwrap();
        assert!(check_stamp(dir.path(), 1, &BTreeSet::new()).is_err());
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
        assert!(check_stamp(dir.path(), 1, &BTreeSet::new()).is_err());
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

    fn ids(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_stamp_is_for_one_cluster_adopted_once_and_rotated_by_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let none = BTreeSet::new();
        // Stamped before cluster ids: the first CA it starts with is adopted.
        write_stamp(dir.path(), 1, &BTreeMap::new(), &none).unwrap();
        assert_eq!(
            check_stamp(dir.path(), 1, &ids(&["a"])).unwrap(),
            DirState::Stamped
        );
        assert_eq!(
            read_stamp(dir.path()).unwrap().unwrap().cluster,
            ids(&["a"])
        );
        // Another cluster's CA, or no CA at all, is refused and changes nothing.
        let err = check_stamp(dir.path(), 1, &ids(&["b"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("belongs to cluster a") && err.contains("cluster b"),
            "{err}"
        );
        assert!(
            check_stamp(dir.path(), 1, &none)
                .unwrap_err()
                .to_string()
                .contains("--insecure")
        );
        assert_eq!(
            read_stamp(dir.path()).unwrap().unwrap().cluster,
            ids(&["a"])
        );
        // A rotation bundle (old and new CA) adds the new one; the new CA alone then passes.
        check_stamp(dir.path(), 1, &ids(&["a", "b"])).unwrap();
        assert_eq!(
            check_stamp(dir.path(), 1, &ids(&["b"])).unwrap(),
            DirState::Stamped
        );
        assert!(check_stamp(dir.path(), 1, &ids(&["c"])).is_err());
    }

    #[test]
    fn the_cluster_id_is_the_ca_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let (ca1, ca2) = (dir.path().join("ca1"), dir.path().join("ca2"));
        crate::tls::certs::init_ca(&ca1).unwrap();
        crate::tls::certs::init_ca(&ca2).unwrap();
        let id_of = |ca: &Path, out: &str| {
            let out = dir.path().join(out);
            let req = crate::tls::certs::Issue {
                identity: crate::tls::Identity::Node(1),
                ips: vec![],
                dns: vec![],
            };
            crate::tls::certs::issue(ca, &req, &out).unwrap();
            let security = cairn_client::Security::from_flags(Some(&out), false).unwrap();
            cluster_id(&security).unwrap()
        };
        let (a, a_again, b) = (id_of(&ca1, "n1"), id_of(&ca1, "n2"), id_of(&ca2, "n3"));
        assert_eq!(a.len(), 1);
        assert_eq!(a, a_again, "one CA, one cluster");
        assert_ne!(a, b, "another CA, another cluster");
        assert!(
            cluster_id(&cairn_client::Security::Insecure)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn bootstrapping_needs_a_majority_of_empty_peers() {
        // A majority of the voters without this node: for 3 voters both peers.
        assert_eq!(
            (1..=5).map(empty_peers_needed).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 3]
        );
    }
}
