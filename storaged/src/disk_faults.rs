//! Offline faults and checks on a stopped node's data dir, for tests: a group's state
//! corrupted as a disk would leave it, and what of a group is left in each column family.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::Result;
use crate::engine::{Cf, keys};
use crate::raft::snapshot::spool_prefix;
use crate::raft::state_machine::GroupStateMachine;

/// What a corrupt spool file holds: not a length-framed page (its first four bytes read as
/// a page length far beyond any page's).
const GARBAGE: &[u8] = b"this is not a snapshot spool file\n";

/// Leaves `group` on the stopped node with data dir `data_dir` as a crash in the middle of
/// a snapshot install followed by a corrupted spool file would: the install marker set,
/// its spool file garbage. Opening the group then fails; returns the spool file's path.
pub fn corrupt_group(data_dir: &Path, group: u64) -> Result<PathBuf> {
    let spool_dir = data_dir.join("snapshots");
    std::fs::create_dir_all(&spool_dir)?;
    let path = spool_dir.join(format!("{}corrupt.snap", spool_prefix(group)));
    std::fs::write(&path, GARBAGE.repeat(64))?;
    let engine = crate::server::open_engine(data_dir)?;
    GroupStateMachine::mark_installing(engine.as_ref(), group, &path)?;
    engine.persist()?;
    Ok(path)
}

/// Keys of `group` left in each column family of the stopped node with data dir
/// `data_dir` (by column family name; zero counts included).
pub fn group_keys(data_dir: &Path, group: u64) -> Result<BTreeMap<&'static str, usize>> {
    let engine = crate::server::open_engine(data_dir)?;
    let (start, end) = (keys::group_start(group), keys::group_end(group));
    let mut out = BTreeMap::new();
    for cf in [Cf::Data, Cf::RaftLog, Cf::RaftState, Cf::Meta] {
        // Named keys (`keys::named`) lie in the group's range too: the id comes first.
        let n = engine.scan(cf, &start[..8], &end, usize::MAX)?.len();
        out.insert(cf.name(), n);
    }
    Ok(out)
}
