//! Generated gRPC types and services for Cairn, and what both of its servers share on the wire:
//! the volume-name rule (`names`), the request log layer (`rpclog`) and mountinfo decoding.

pub mod mountinfo;
pub mod names;
pub mod rpclog;

pub use names::{NameError, VolumeName};

pub mod csi {
    pub mod v1 {
        tonic::include_proto!("csi.v1");
    }
}

pub mod cairn {
    pub mod v1 {
        tonic::include_proto!("cairn.v1");
    }
}

/// The etcd KV subset used by `cairn-bench` to measure etcd side by side.
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}
