// Compiles the CSI and Cairn protos with protox (pure Rust): no system
// protoc and no network access during the build.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "csi/v1/csi.proto",
        "cairn/v1/volume.proto",
        "cairn/v1/raft.proto",
        "cairn/v1/node.proto",
        "bench/etcd_kv.proto",
    ];
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Zero-copy payloads on the I/O and Raft paths.
        .bytes(".cairn.v1")
        .compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
