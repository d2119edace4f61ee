// Compiles the kubelet's plugin registration API (pluginregistration.v1) and the gRPC health
// protocol its grpc probes call (grpc.health.v1) with protox, as cairn-proto compiles CSI:
// no system protoc and no network during the build. Also writes the descriptor set of the
// Kubernetes messages the API server decodes from protobuf bodies (proto/k8s, decision 058).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    k8s_descriptors()?;
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

fn k8s_descriptors() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new("proto/k8s");
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".proto") {
            files.push(name);
        }
    }
    files.sort();
    let set = protox::Compiler::new([dir])?
        .include_imports(true)
        .open_files(&files)?
        .encode_file_descriptor_set();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("k8s_descriptors.bin");
    std::fs::write(out, set)?;
    println!("cargo:rerun-if-changed=proto/k8s");
    Ok(())
}
