// Compiles the kubelet's plugin registration API (pluginregistration.v1) and the gRPC health
// protocol its grpc probes call (grpc.health.v1) with protox, as cairn-proto compiles CSI:
// no system protoc and no network during the build.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "kubelet/pluginregistration/v1/api.proto",
        "grpc/health/v1/health.proto",
    ];
    let fds = protox::compile(files, ["../../proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed=../../proto/{f}");
    }
    Ok(())
}
