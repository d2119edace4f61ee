//! Generated gRPC types and services for Cairn.
//! `csi` is the CSI v1 wire schema; `cairn` holds storaged's own APIs.

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
