//! Compiles the Open Inference Protocol's gRPC service (proto/) into Rust
//! with tonic-prost-build. It needs `protoc`: Debian's `protobuf-compiler`,
//! which `scripts/system-deps` installs (or name one with `PROTOC`).

fn main() {
    println!("cargo:rerun-if-changed=proto");
    if std::env::var_os("PROTOC").is_none() && which("protoc").is_none() {
        panic!("protoc is not installed: run `scripts/system-deps run` (Debian's protobuf-compiler) or set PROTOC");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The client is generic over its transport; the tests bring tonic's channel.
        .build_transport(false)
        // RPCs Lens does not serve (shared memory, trace and log settings)
        // answer UNIMPLEMENTED.
        .generate_default_stubs(true)
        // Byte fields (images, raw tensors) as `Bytes`: sliced from the message, not copied.
        .bytes(".")
        .compile_protos(&["proto/grpc_service.proto"], &["proto"])
        .unwrap_or_else(|e| panic!("compiling proto/grpc_service.proto: {e}"));
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}
