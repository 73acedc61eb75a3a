use super::*;

fn demo_set() -> Bytes {
    Bytes::from_static(include_bytes!("../../descriptors/demo.binpb"))
}

#[test]
fn builtin_pool_has_google_api_and_wkt() {
    let descriptors = PoolBuilder::new().build().unwrap();
    let pool = descriptors.pool();
    for name in [
        "google.api.HttpRule",
        "google.api.HttpBody",
        "google.rpc.Status",
        "google.rpc.BadRequest",
        "google.protobuf.Timestamp",
        "google.protobuf.Struct",
    ] {
        assert!(pool.get_message_by_name(name).is_some(), "{name}");
    }
}

#[test]
fn descriptor_set_keeps_http_annotations_and_registers_methods() {
    let mut builder = PoolBuilder::new();
    builder.add_file_descriptor_set(demo_set(), "demo").unwrap();
    let descriptors = builder.build().unwrap();
    let get = descriptors.registry().get("/demo.v1.OrderService/GetOrder").unwrap();
    assert_eq!(get.kind, CallKind::Unary);
    assert_eq!(get.service(), "demo.v1.OrderService");
    let http = descriptors.pool().get_extension_by_name("google.api.http").unwrap();
    let options = get.descriptor.options();
    assert!(options.has_extension(&http), "google.api.http option lost in the merge");
    let kinds: Vec<_> = ["WatchOrder", "ImportOrders", "Chat"]
        .iter()
        .map(|m| {
            descriptors
                .registry()
                .get(&format!("/demo.v1.OrderService/{m}"))
                .unwrap()
                .kind
        })
        .collect();
    assert_eq!(
        kinds,
        [
            CallKind::ServerStreaming,
            CallKind::ClientStreaming,
            CallKind::BidiStreaming
        ]
    );
}

#[test]
fn the_same_file_twice_is_taken_once() {
    let mut builder = PoolBuilder::new();
    builder.add_file_descriptor_set(demo_set(), "a").unwrap();
    builder.add_file_descriptor_set(demo_set(), "b").unwrap();
    assert_eq!(builder.build().unwrap().registry().len(), 7);
}

#[test]
fn proto_sources_compile_without_protoc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let mut builder = PoolBuilder::new();
    builder
        .add_proto_file(
            &root.join("demo/v1/orders.proto"),
            std::slice::from_ref(&root),
            "demo proto",
        )
        .unwrap();
    let descriptors = builder.build().unwrap();
    assert!(descriptors.registry().get("/demo.v1.OrderService/Chat").is_some());
}

#[test]
fn proto_importing_google_api_needs_no_vendored_copy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("svc.proto"),
        "syntax = \"proto3\";\npackage x.v1;\nimport \"google/api/annotations.proto\";\nmessage M { string a = 1; }\nservice S { rpc Get(M) returns (M) { option (google.api.http) = {get: \"/v1/m\"}; } }\n",
    )
    .unwrap();
    let mut builder = PoolBuilder::new();
    builder
        .add_proto_file(&dir.path().join("svc.proto"), &[dir.path().to_path_buf()], "svc")
        .unwrap();
    let descriptors = builder.build().unwrap();
    let method = descriptors.registry().get("/x.v1.S/Get").unwrap();
    let http = descriptors.pool().get_extension_by_name("google.api.http").unwrap();
    assert!(method.descriptor.options().has_extension(&http));
}

#[test]
fn proto_syntax_error_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.proto"),
        "syntax = \"proto3\";\n\nmessage M {\n  string a = ;\n}\n",
    )
    .unwrap();
    let mut builder = PoolBuilder::new();
    let err = builder
        .add_proto_file(
            &dir.path().join("bad.proto"),
            &[dir.path().to_path_buf()],
            "descriptors[0] (bad.proto)",
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.proto:4:"), "{err}");
    assert!(err.starts_with("descriptors[0] (bad.proto): "), "{err}");
}

#[test]
fn missing_import_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.proto"),
        "syntax = \"proto3\";\nimport \"nowhere/b.proto\";\n",
    )
    .unwrap();
    let mut builder = PoolBuilder::new();
    let err = builder
        .add_proto_file(&dir.path().join("a.proto"), &[dir.path().to_path_buf()], "a")
        .unwrap_err()
        .to_string();
    assert!(err.contains("nowhere/b.proto"), "{err}");
}

#[test]
fn garbage_is_not_a_descriptor_set() {
    for garbage in [
        &b"listen: 0.0.0.0:8080\n"[..],
        b"\x0a\xff\xff\xff\xff\x0f",
        b"",
        b"\x0a\x05abc",
    ] {
        let mut builder = PoolBuilder::new();
        let err = builder
            .add_file_descriptor_set(Bytes::copy_from_slice(garbage), "x.binpb")
            .unwrap_err();
        assert!(err.to_string().starts_with("x.binpb: not a FileDescriptorSet"), "{err}");
    }
}

#[test]
fn conflicting_definitions_name_both_sources() {
    let one = |field: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.proto"),
            format!("syntax = \"proto3\";\npackage p;\nmessage M {{ string {field} = 1; }}\n"),
        )
        .unwrap();
        let mut compiler = protox::Compiler::new([dir.path()]).unwrap();
        compiler.open_file("m.proto").unwrap();
        Bytes::from(compiler.encode_file_descriptor_set())
    };
    let mut builder = PoolBuilder::new();
    builder.add_file_descriptor_set(one("a"), "first.binpb").unwrap();
    let err = builder
        .add_file_descriptor_set(one("b"), "second.binpb")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "second.binpb: file \"m.proto\" is defined differently here and in first.binpb"
    );
}

#[test]
fn one_symbol_in_two_files_names_both() {
    let set = |file: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(file),
            "syntax = \"proto3\";\npackage p;\nmessage M { string a = 1; }\n",
        )
        .unwrap();
        let mut compiler = protox::Compiler::new([dir.path()]).unwrap();
        compiler.open_file(file).unwrap();
        Bytes::from(compiler.encode_file_descriptor_set())
    };
    let mut builder = PoolBuilder::new();
    builder
        .add_file_descriptor_set(set("one.proto"), "first.binpb")
        .unwrap();
    builder
        .add_file_descriptor_set(set("two.proto"), "second.binpb")
        .unwrap();
    let err = builder.build().unwrap_err().to_string();
    assert!(err.contains("\"p.M\" is defined in"), "{err}");
    assert!(err.contains("first.binpb") && err.contains("second.binpb"), "{err}");
}

#[test]
fn users_copy_of_a_builtin_file_wins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("google/rpc")).unwrap();
    std::fs::write(
        dir.path().join("google/rpc/status.proto"),
        "syntax = \"proto3\";\npackage google.rpc;\nmessage Status { int32 code = 1; string message = 2; string extra = 9; }\n",
    )
    .unwrap();
    let mut builder = PoolBuilder::new();
    builder
        .add_proto_file(
            &dir.path().join("google/rpc/status.proto"),
            &[dir.path().to_path_buf()],
            "mine",
        )
        .unwrap();
    let pool = builder.build().unwrap();
    let status = pool.pool().get_message_by_name("google.rpc.Status").unwrap();
    assert!(status.get_field_by_name("extra").is_some());
}
