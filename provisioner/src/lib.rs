//! cairn-provisioner: the Kubernetes-facing controllers of Cairn (provisioner, deleter,
//! attacher, capacity, resizer, local static PVs), speaking CSI to `cairn-csi` over a socket.

pub mod attach;
pub mod capacity;
pub mod cloning;
pub mod context;
pub mod csi;
pub mod delete;
pub mod error;
pub mod http;
pub mod leader;
pub mod local;
pub mod metrics;
pub mod names;
pub mod params;
pub mod provision;
pub mod quantity;
pub mod resize;
pub mod run;
pub mod source;
pub mod topology;

#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

pub use error::{Error, Result};
