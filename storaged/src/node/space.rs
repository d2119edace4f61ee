//! The data filesystem's reserve: whether this node, or a peer by its pings, is short of space,
//! and the refusal of new data writes to a group while any of its members is.
//!
//! Each node keeps `--reserve` bytes free on its data filesystem (default: 5 % of it or 1 GiB,
//! whichever is smaller). Below that, it says so in every ping, and a leader refuses writes to
//! any group that has such a member with RESOURCE_EXHAUSTED, before RocksDB itself meets ENOSPC
//! on any replica. Deletes, discards and Raft traffic go on, so space can be freed; once the
//! filesystem has the reserve free again the refusals stop by themselves.
//!
//! Pings also carry each node's real usage (decision 050): the bytes its data dir occupies,
//! the filesystem's free bytes and the reserve. Placement counts them while fresh.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::meta::placement::{Live, Usage};

/// How long a free-space reading is trusted before `statvfs` is asked again.
const FRESH_FOR: Duration = Duration::from_millis(200);
/// How long a peer's "short of space" stands without a new ping saying so (pings come every
/// 500 ms; a peer that stopped pinging is down, which Raft deals with, not this).
const PEER_REPORT_FOR: Duration = Duration::from_secs(3);
/// The default reserve's bounds: 5 % of the filesystem, at most 1 GiB.
const DEFAULT_SHARE: f64 = 0.05;
const DEFAULT_MAX: u64 = 1 << 30;
/// How often the data dir's usage is measured (a walk of its files).
const MEASURE_EVERY: Duration = Duration::from_secs(1);
/// The data dir's runtime subdirectory: sockets and FUSE mountpoints, never walked.
const RUN_DIR: &str = "run";

/// The reserve of a filesystem of `total` bytes when `--reserve` is not given.
pub fn default_reserve(total: u64) -> u64 {
    ((total as f64 * DEFAULT_SHARE) as u64).min(DEFAULT_MAX)
}

/// Free and total bytes of the filesystem holding `dir`, as an unprivileged user sees them.
fn statvfs(dir: &Path) -> std::io::Result<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    let unit = s.fragment_size();
    Ok((s.blocks_available() * unit, s.blocks() * unit))
}

#[derive(Debug)]
struct Reading {
    at: Instant,
    free: u64,
}

/// This node's free space against its reserve, and what its peers last said of theirs.
#[derive(Debug)]
pub struct Space {
    me: u64,
    dir: PathBuf,
    reserve: u64,
    reading: Mutex<Option<Reading>>,
    short_peers: Mutex<HashMap<u64, Instant>>,
    /// This node's data dir usage: when it was measured and the bytes.
    used: Mutex<Option<(Instant, u64)>>,
    /// What peers last reported of their usage, and when.
    peer_usage: Mutex<HashMap<u64, (Instant, Usage)>>,
}

impl Space {
    /// Watches the filesystem of `dir` with `reserve` bytes kept free (`None`: the default for
    /// its size).
    pub fn new(me: u64, dir: &Path, reserve: Option<u64>) -> Result<Space> {
        let (free, total) = statvfs(dir)?;
        let reserve = reserve.unwrap_or_else(|| default_reserve(total));
        tracing::info!(node = me, data_dir = %dir.display(), reserve, free, total, "data filesystem reserve");
        Ok(Space {
            me,
            dir: dir.to_path_buf(),
            reserve,
            reading: Mutex::new(Some(Reading {
                at: Instant::now(),
                free,
            })),
            short_peers: Mutex::default(),
            used: Mutex::default(),
            peer_usage: Mutex::default(),
        })
    }

    /// Walks the data dir and records the bytes it occupies on disk: every file's allocated
    /// blocks, on the data dir's filesystem only, the run dir left out. A walk of a few
    /// thousand files: `measure_loop` runs it off the async workers.
    fn measure(&self) -> u64 {
        let used = dir_usage(&self.dir);
        *self.used.lock().expect("space usage poisoned") = Some((Instant::now(), used));
        used
    }

    /// This node's usage as a ping carries it; `None` before the first measure.
    pub fn report(&self) -> Option<Usage> {
        let (at, used) = (*self.used.lock().expect("space usage poisoned"))?;
        (at.elapsed() < PEER_REPORT_FOR).then(|| Usage {
            used,
            fs_free: self.free(),
            reserve: self.reserve,
        })
    }

    /// Records what `peer` said of its usage (nothing: an older node, which reports none).
    pub fn peer_usage(&self, peer: u64, usage: Option<Usage>) {
        let mut peers = self.peer_usage.lock().expect("peer usage poisoned");
        match usage {
            Some(u) => peers.insert(peer, (Instant::now(), u)),
            None => peers.remove(&peer),
        };
    }

    /// The fresh usage reports: this node's and its peers' at most `PEER_REPORT_FOR` old.
    pub fn live(&self) -> Live {
        let mut live: Live = self
            .peer_usage
            .lock()
            .expect("peer usage poisoned")
            .iter()
            .filter(|(_, (at, _))| at.elapsed() < PEER_REPORT_FOR)
            .map(|(peer, (_, u))| (*peer, *u))
            .collect();
        if let Some(mine) = self.report() {
            live.insert(self.me, mine);
        }
        live
    }

    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Free bytes now (a reading at most `FRESH_FOR` old).
    pub fn free(&self) -> u64 {
        let mut r = self.reading.lock().expect("space reading poisoned");
        match &*r {
            Some(reading) if reading.at.elapsed() < FRESH_FOR => reading.free,
            _ => {
                let was_short = r.as_ref().is_some_and(|x| x.free < self.reserve);
                // A filesystem that cannot be read counts as full: refusing writes is safe.
                let free = statvfs(&self.dir).map_or(0, |(free, _)| free);
                let short = free < self.reserve;
                if short != was_short {
                    if short {
                        tracing::warn!(
                            node = self.me,
                            free,
                            reserve = self.reserve,
                            "data filesystem below its reserve: new writes refused until space is freed"
                        );
                    } else {
                        tracing::info!(
                            node = self.me,
                            free,
                            reserve = self.reserve,
                            "data filesystem has its reserve free again: writes resume"
                        );
                    }
                }
                *r = Some(Reading {
                    at: Instant::now(),
                    free,
                });
                free
            }
        }
    }

    /// Whether this node is short of space (what its pings say).
    pub fn short(&self) -> bool {
        self.free() < self.reserve
    }

    /// Records what `peer` said of its space in a ping or a ping's reply.
    pub fn peer_reported(&self, peer: u64, short: bool) {
        let mut peers = self.short_peers.lock().expect("short peers poisoned");
        if short {
            peers.insert(peer, Instant::now());
        } else {
            peers.remove(&peer);
        }
    }

    /// The members among `members` short of space now (this node included), in order.
    pub fn short_members(&self, members: &[u64]) -> Vec<u64> {
        let peers = self.short_peers.lock().expect("short peers poisoned");
        let mut short: Vec<u64> = members
            .iter()
            .copied()
            .filter(|m| {
                if *m == self.me {
                    false
                } else {
                    peers
                        .get(m)
                        .is_some_and(|at| at.elapsed() < PEER_REPORT_FOR)
                }
            })
            .collect();
        drop(peers);
        if members.contains(&self.me) && self.short() {
            short.push(self.me);
            short.sort_unstable();
        }
        short
    }

    /// Refuses a new data write to `volume`, whose replicas are on `members`, while one of
    /// them is short of space.
    pub fn admit_write(&self, volume: &str, members: &[u64]) -> Result<()> {
        let short = self.short_members(members);
        if short.is_empty() {
            return Ok(());
        }
        let nodes: Vec<String> = short.iter().map(|n| format!("node {n}")).collect();
        Err(Error::ResourceExhausted(format!(
            "volume `{volume}`: the data filesystem of {} is below its reserve of free space \
             (storaged --reserve); writes are refused until space is freed (delete volumes or \
             snapshots, or grow the disk)",
            nodes.join(", ")
        )))
    }
}

/// Runs while `space` lives: measures the data dir's usage every `MEASURE_EVERY` on a
/// blocking thread. Its own task, so a slow walk (a huge or hung filesystem) delays only
/// the usage reports, which go stale after `PEER_REPORT_FOR`, never the pings.
pub async fn measure_loop(space: Weak<Space>) {
    let mut tick = tokio::time::interval(MEASURE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(space) = space.upgrade() else { return };
        let _ = tokio::task::spawn_blocking(move || space.measure()).await;
    }
}

/// A usage report off the wire: all three figures, or none (an older node).
pub fn from_wire(used: Option<u64>, fs_free: Option<u64>, reserve: Option<u64>) -> Option<Usage> {
    Some(Usage {
        used: used?,
        fs_free: fs_free?,
        reserve: reserve?,
    })
}

/// Allocated bytes of the files under `dir` on its filesystem (not crossing mounts), the
/// top-level run dir left out; what cannot be read counts nothing.
fn dir_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let mut total = 0u64;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(md) = entry.metadata() else {
                continue;
            };
            if md.dev() != root.dev() || (d == dir && entry.file_name() == RUN_DIR) {
                continue;
            }
            if md.is_dir() {
                todo.push(entry.path());
            } else {
                total += md.blocks() * 512;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_reserve_is_five_percent_up_to_one_gib() {
        assert_eq!(default_reserve(100 << 20), 5 << 20);
        assert_eq!(default_reserve(10 << 30), 512 << 20);
        assert_eq!(default_reserve(100 << 30), 1 << 30);
    }

    #[tokio::test]
    async fn the_measure_loop_reports_usage_and_ends_with_its_space() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![7u8; 256 << 10]).unwrap();
        let space = std::sync::Arc::new(Space::new(1, dir.path(), Some(0)).unwrap());
        assert!(space.report().is_none(), "nothing measured yet");
        let task = tokio::spawn(measure_loop(std::sync::Arc::downgrade(&space)));
        let deadline = Instant::now() + Duration::from_secs(10);
        let usage = loop {
            if let Some(u) = space.report() {
                break u;
            }
            assert!(Instant::now() < deadline, "no usage measured within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(usage.used >= 256 << 10, "{usage:?}");
        drop(space);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the loop ends once its space is gone")
            .unwrap();
    }

    #[test]
    fn a_short_member_refuses_writes_and_its_recovery_lets_them_through() {
        let dir = tempfile::tempdir().unwrap();
        let space = Space::new(1, dir.path(), Some(0)).unwrap();
        assert!(space.admit_write("v", &[1, 2, 3]).is_ok());
        space.peer_reported(3, true);
        let err = space.admit_write("v", &[1, 2, 3]).unwrap_err();
        assert!(
            matches!(&err, Error::ResourceExhausted(m) if m.contains("node 3")),
            "{err}"
        );
        assert!(
            space.admit_write("w", &[1, 2]).is_ok(),
            "node 3 holds no replica of w"
        );
        space.peer_reported(3, false);
        assert!(space.admit_write("v", &[1, 2, 3]).is_ok());
    }

    #[test]
    fn this_node_below_its_reserve_refuses_writes_to_its_groups() {
        let dir = tempfile::tempdir().unwrap();
        let space = Space::new(2, dir.path(), Some(u64::MAX)).unwrap();
        assert!(space.short());
        let err = space.admit_write("v", &[1, 2, 3]).unwrap_err();
        assert!(
            matches!(&err, Error::ResourceExhausted(m) if m.contains("node 2")),
            "{err}"
        );
        assert!(space.admit_write("w", &[1, 3]).is_ok());
    }
}
