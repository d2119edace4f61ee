//! The volume layer above the node: routing block I/O to a volume's leader, and
//! volume-to-volume copies for snapshots and clones.

pub mod copy;
pub mod io;
