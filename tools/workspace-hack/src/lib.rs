//! Feature-unification anchor for RocksDB's build-time dependency graph.
//! It has no code, only the build-dependencies in Cargo.toml.
