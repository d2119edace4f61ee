//! cairn-provisioner: the Kubernetes-facing controllers of Cairn (provisioner, deleter,
//! attacher, capacity, resizer, local static PVs), speaking CSI to `cairn-csi` over a socket.

pub mod controllers;

pub mod claim;
pub mod context;
pub mod csi;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod params;
pub mod quantity;
pub mod run;
pub mod topology;

#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

pub use error::{Error, Result};
