//! storaged: a Raft-replicated block storage service. One RocksDB per node holds
//! every group's log, Raft state, block data and the meta catalogue.

pub mod chunks;
pub mod discovery;
#[cfg(feature = "testkit")]
pub mod disk_faults;
pub mod engine;
pub mod error;
pub mod fence;
pub mod frontend;
pub mod hints;
pub mod identity;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod opener;
pub mod peers;
pub mod raft;
pub mod rebuild;
pub mod repair;
pub mod server;
pub mod service;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tls;
pub mod volume;

pub use error::{Error, Result};
