//! Workloads: clients that drive a cluster through its public API while faults run and record
//! every operation in the history (`block`: versioned 4 KiB blocks through the volume client).

pub mod block;
