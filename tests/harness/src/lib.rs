//! cairn-harness: a minimal, faithful Kubernetes control plane and kubelets
//! (API server, controllers, scheduler) so a pod's whole lifecycle runs on one machine.

pub mod apiserver;
pub mod chaos_pods;
pub mod client;
pub mod cluster;
pub mod components;
pub mod controllers;
pub mod error;
pub mod in_cluster;
pub mod install;
pub mod kubelet;
pub mod node;
pub mod node_faults;
pub mod pvutil;
pub mod registry;
pub mod resources;
pub mod scheduler;
pub mod store;

pub use cluster::{Cluster, ClusterConfig};
pub use error::{Error, Result};
