//! The gRPC metadata keys Cairn's servers and clients agree on, beside the messages they
//! qualify: defined once here so that neither side spells them on its own.

/// Carries the leader's address on a not-leader reply.
pub const LEADER_HINT_KEY: &str = "cairn-leader";
/// Set on replies to requests refused before executing anything (not the leader), so any
/// request may be resent elsewhere.
pub const NOT_EXECUTED_KEY: &str = "cairn-not-executed";
/// Names the node a Raft message is for: a node whose id differs (a wiped data dir restarted
/// at a member's address under a new id) refuses it rather than answer, and its votes and
/// acknowledgements are never counted as the old member's.
pub const TARGET_METADATA: &str = "x-cairn-target";
/// Names the group of an `AppendStream`.
pub const GROUP_METADATA: &str = "x-cairn-group";
