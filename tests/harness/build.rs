// Compiles the kubelet's plugin registration API (pluginregistration.v1) with protox,
// as cairn-proto compiles CSI: no system protoc and no network during the build.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "kubelet/pluginregistration/v1/api.proto";
    let fds = protox::compile([file], ["../../proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=../../proto/{file}");
    Ok(())
}
