//! gRPC services served by every storaged: the Raft transport, the volume and
//! node catalogue API, block I/O, and the node-local attach API.

pub mod block_api;
pub mod drain;
pub mod node_api;
pub mod raft_api;
pub mod raft_sender;
pub mod snapshots;
pub mod validate;
pub mod view;
pub mod volume_api;
pub mod waiting;
