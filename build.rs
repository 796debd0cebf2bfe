//! Compiles the Open Inference Protocol's gRPC service (proto/) into Rust
//! with tonic-prost-build. It needs `protoc`: Debian's `protobuf-compiler`,
//! which `scripts/system-deps` installs (or name one with `PROTOC`).
//!
//! It also records the commit the binary is built from, for `lens --version`:
//! `LENS_GIT_COMMIT` if set (a build without `.git`, such as the Docker
//! image's, can pass it), else `git rev-parse --short HEAD`, else "unknown"
//! (a source tarball).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rustc-env=LENS_GIT_COMMIT={}", git_commit());
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

/// The short commit hash, and a rerun whenever HEAD moves: `.git/HEAD`
/// changes when a branch is checked out, the branch's ref (or `packed-refs`)
/// when a commit is made on it.
fn git_commit() -> String {
    println!("cargo:rerun-if-env-changed=LENS_GIT_COMMIT");
    if let Some(commit) = std::env::var("LENS_GIT_COMMIT").ok().filter(|c| !c.is_empty()) {
        return commit;
    }
    let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(PathBuf::from) else {
        return "unknown".into();
    };
    println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
    if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
        let loose = git_dir.join(&head_ref);
        if loose.exists() {
            println!("cargo:rerun-if-changed={}", loose.display());
        }
        let packed = git_dir.join("packed-refs");
        if packed.exists() {
            println!("cargo:rerun-if-changed={}", packed.display());
        }
    }
    git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into())
}

/// One line of git's output, if git is installed and this is a repository.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let line = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !line.is_empty()).then_some(line)
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}
