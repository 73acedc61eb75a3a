//! The checked-in descriptor sets and generated Rust code must match what the
//! `.proto` sources under `proto/` produce today. Run with
//! `GRPC_EDGE_REGENERATE=1 cargo test --test generated_files` to rewrite them
//! after changing a `.proto`.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compares `actual` with the file at `path` (or writes it when regenerating).
fn check(path: &Path, actual: &[u8]) {
    if std::env::var_os("GRPC_EDGE_REGENERATE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return;
    }
    let expected = std::fs::read(path).unwrap_or_default();
    assert!(
        expected == actual,
        "{} is out of date with proto/; run GRPC_EDGE_REGENERATE=1 cargo test --test generated_files",
        path.display()
    );
}

/// Compiles `files`; returns the set for code generation and its encoding with
/// every option kept (prost's own types would drop `google.api.http`).
fn descriptor_set(files: &[&str], source_info: bool) -> (prost_types::FileDescriptorSet, Vec<u8>) {
    let mut compiler = protox::Compiler::new([root().join("proto")]).unwrap();
    compiler.include_imports(true).include_source_info(source_info);
    compiler.open_files(files).unwrap();
    (compiler.file_descriptor_set(), compiler.encode_file_descriptor_set())
}

fn generate_rust(fds: prost_types::FileDescriptorSet, package: &str, out: &Path) {
    let dir = tempfile::tempdir().unwrap();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .out_dir(dir.path())
        .compile_fds(fds)
        .unwrap();
    let code = std::fs::read(dir.path().join(format!("{package}.rs"))).unwrap();
    check(out, &code);
}

#[test]
fn builtin_descriptors_match_proto_sources() {
    let fds = descriptor_set(
        &[
            "google/api/annotations.proto",
            "google/api/httpbody.proto",
            "google/rpc/status.proto",
            "google/rpc/error_details.proto",
            "google/protobuf/empty.proto",
            "google/protobuf/field_mask.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/timestamp.proto",
            "google/protobuf/wrappers.proto",
        ],
        false,
    );
    check(&root().join("descriptors/builtin.binpb"), &fds.1);
}

#[test]
fn demo_descriptors_and_code_match_proto_sources() {
    let fds = descriptor_set(&["demo/v1/orders.proto"], true);
    check(&root().join("descriptors/demo.binpb"), &fds.1);
    generate_rust(fds.0, "demo.v1", &root().join("src/demo/generated/demo.v1.rs"));
}

#[test]
fn testing_descriptors_and_code_match_proto_sources() {
    // The REST test service is served by a raw echo backend and needs no Rust code.
    let all = descriptor_set(&["testing/v1/echo.proto", "testing/rest/v1/rest.proto"], true);
    check(&root().join("descriptors/testing.binpb"), &all.1);
    let echo = descriptor_set(&["testing/v1/echo.proto"], true);
    generate_rust(
        echo.0,
        "testing.v1",
        &root().join("tests/support/generated/testing.v1.rs"),
    );
}
