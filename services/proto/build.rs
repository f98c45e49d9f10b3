//! Compiles every contract under proto/ into Rust with protox (no system protoc) and
//! writes the file descriptor set next to the generated code for server reflection.
//!
//! The contracts are read from `proto/` inside this crate, a link to the repository's
//! proto/ (cargo packages the files it points to, so the published crate carries them).

use std::path::{Path, PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let mut files = Vec::new();
    collect_protos(&root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed={}", root.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let fds = protox::compile(&files, [&root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // tonic-prost-build does not write the set itself when given one, so reflection gets
    // its own copy here.
    std::fs::write(out_dir.join("llmesh_descriptor.bin"), fds.encode_to_vec())?;
    std::fs::write(
        out_dir.join("llmesh_retry_safe.rs"),
        rust_paths(&retry_safe_methods(&fds)),
    )?;
    std::fs::write(
        out_dir.join("llmesh_streaming.rs"),
        rust_paths(&streaming_methods(&fds)),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

/// Every method whose `idempotency_level` is NO_SIDE_EFFECTS or IDEMPOTENT.
fn retry_safe_methods(fds: &prost_types::FileDescriptorSet) -> Vec<String> {
    use prost_types::method_options::IdempotencyLevel;
    method_paths(fds, |method| {
        let level = method
            .options
            .as_ref()
            .map_or(IdempotencyLevel::IdempotencyUnknown, |o| {
                o.idempotency_level()
            });
        level != IdempotencyLevel::IdempotencyUnknown
    })
}

/// Every method whose response is a stream.
fn streaming_methods(fds: &prost_types::FileDescriptorSet) -> Vec<String> {
    method_paths(fds, |method| method.server_streaming())
}

/// The "/package.Service/Method" paths of the methods `keep` picks, sorted for binary
/// search.
fn method_paths(
    fds: &prost_types::FileDescriptorSet,
    keep: impl Fn(&prost_types::MethodDescriptorProto) -> bool,
) -> Vec<String> {
    let mut paths = Vec::new();
    for file in &fds.file {
        let package = file.package();
        for service in &file.service {
            for method in service.method.iter().filter(|m| keep(m)) {
                paths.push(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    paths.sort();
    paths
}

/// A Rust slice expression of `paths`.
fn rust_paths(paths: &[String]) -> String {
    let mut out = String::from("&[\n");
    for p in paths {
        out.push_str(&format!("    {p:?},\n"));
    }
    out.push(']');
    out
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
