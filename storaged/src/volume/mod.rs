//! Block semantics of a replicated volume: 4 KiB chunks in the `data` column
//! family, read-modify-write for sub-chunk writes, zeros for holes, discard deletes.

pub mod blocks;
pub mod copy;
