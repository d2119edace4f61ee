//! cairn-csi: the CSI driver (`csi.cairn.dev`) for Cairn.
//! Identity, controller and node services over storaged, plus their helpers.

pub mod block_vol;
pub mod controller;
pub mod error;
pub mod filesystem_vol;
pub mod format;
pub mod identity;
pub mod limiter;
pub mod mount;
pub mod node;
pub mod node_info;
pub mod params;
pub mod paths;
pub mod rpc;
pub mod snapshots;
pub mod storaged;
