//! Generated gRPC types and services for Cairn, and what both of its servers share on the wire:
//! the volume-name rule (`names`), the metadata keys (`wire`), the request log layer (`rpclog`),
//! mountinfo decoding and gRPC over Unix sockets (`uds`).

pub mod mountinfo;
pub mod names;
pub mod rpclog;
pub mod uds;
pub mod wire;

pub use names::{NameError, VolumeName};

pub mod csi {
    pub mod v1 {
        tonic::include_proto!("csi.v1");
    }
}

pub mod cairn {
    pub mod v1 {
        tonic::include_proto!("cairn.v1");

        impl ReplicaState {
            /// The word operators see (cairnctl, CSI volume conditions).
            pub fn word(self) -> &'static str {
                match self {
                    ReplicaState::Unspecified => "unknown",
                    ReplicaState::Leader => "leader",
                    ReplicaState::Follower => "follower",
                    ReplicaState::Lagging => "lagging",
                    ReplicaState::Unreachable => "unreachable",
                    ReplicaState::Rebuilding => "rebuilding",
                    ReplicaState::Failed => "failed",
                }
            }
        }

        impl VolumeHealth {
            /// The word operators see (cairnctl, CSI volume conditions).
            pub fn word(self) -> &'static str {
                match self {
                    VolumeHealth::Unspecified => "unknown",
                    VolumeHealth::Healthy => "healthy",
                    VolumeHealth::Degraded => "degraded",
                    VolumeHealth::Unavailable => "unavailable",
                }
            }
        }
    }
}

/// The etcd KV subset used by `cairn-bench` to measure etcd side by side.
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}
