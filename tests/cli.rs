//! The command line: `check` and `routes` on good and bad configurations,
//! with errors that name the file, the key and what was expected.

use std::path::Path;
use std::process::Command;

fn grpc_edge(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_grpc-edge"))
        .args(args)
        .env("RUST_LOG", "warn")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn check_file(dir: &Path, name: &str, yaml: &str) -> (i32, String, String) {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    grpc_edge(&["check", "--config", path.to_str().unwrap()])
}

#[test]
fn check_accepts_the_default_config_and_prints_the_routes() {
    let (code, stdout, stderr) = grpc_edge(&["check", "--config", "config/gateway.yaml"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("config/gateway.yaml: OK"), "{stdout}");
    assert!(stdout.contains("/demo.v1.OrderService/GetOrder"), "{stdout}");
    assert!(stdout.contains("→  demo.v1.OrderService/GetOrder"), "{stdout}");
}

#[test]
fn routes_prints_every_method() {
    let (code, stdout, _) = grpc_edge(&["routes"]);
    assert_eq!(code, 0);
    // Seven REST bindings (Chat has no annotation: POST /pkg.Service/Method) and seven gRPC paths.
    assert_eq!(stdout.lines().filter(|l| l.starts_with("gRPC")).count(), 7, "{stdout}");
    assert_eq!(stdout.lines().filter(|l| !l.starts_with("gRPC")).count(), 7, "{stdout}");
    assert!(
        stdout.contains("GET    /v1/{name=orders/*}:watch           →  demo.v1.OrderService/WatchOrder"),
        "{stdout}"
    );
}

const GOOD: &str = "listen: 127.0.0.1:0
descriptors: [DESCRIPTORS]
upstreams:
  library:
    endpoints: [\"127.0.0.1:50051\"]
routes:
  - match: testing.v1.Echo
    upstream: library
";

fn good(dir: &Path) -> String {
    let descriptors = Path::new(env!("CARGO_MANIFEST_DIR")).join("descriptors/testing.binpb");
    let _ = dir;
    GOOD.replace("DESCRIPTORS", descriptors.to_str().unwrap())
}

#[test]
fn every_kind_of_config_mistake_is_one_clear_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("garbage.binpb"), b"listen: not a descriptor set").unwrap();
    std::fs::write(
        dir.path().join("broken.proto"),
        "syntax = \"proto3\";\nmessage M {\n  string a = ;\n}\n",
    )
    .unwrap();
    let base = good(dir.path());
    let cases: Vec<(String, &str)> = vec![
        (
            base.replace(
                "endpoints: [\"127.0.0.1:50051\"]",
                "endpoints: [\"127.0.0.1:50051\"]\n    pool: {max_streams_per_connection: ten}",
            ),
            "upstreams.library.pool.max_streams_per_connection: expected a positive integer, got \"ten\"",
        ),
        (
            base.replace("upstream: library", "upstream: libary"),
            "routes[0].upstream: no upstream named \"libary\" (did you mean \"library\"?)",
        ),
        (
            base.replace("listen:", "lisen:"),
            "lisen: unknown key (did you mean \"listen\"?)",
        ),
        (
            base.replace("127.0.0.1:0", "localhost"),
            "listen: expected an address such as 0.0.0.0:8080",
        ),
        (
            base.replace("match: testing.v1.Echo", "match: \"testing..Echo\""),
            "routes[0].match: expected \"*\", a service",
        ),
        (
            base.replace(
                "    endpoints: [\"127.0.0.1:50051\"]\n",
                "    endpoints: [\"127.0.0.1:50051\"]\n    connect_timeout: soon\n",
            ),
            "upstreams.library.connect_timeout: expected a duration",
        ),
        (
            base.replace(
                &format!(
                    "[{}]",
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("descriptors/testing.binpb")
                        .display()
                ),
                "[garbage.binpb]",
            ),
            "descriptors[0] (",
        ),
        (
            base.replace(
                &format!(
                    "[{}]",
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("descriptors/testing.binpb")
                        .display()
                ),
                "[{proto: broken.proto}]",
            ),
            "broken.proto:3:",
        ),
        (
            base.replace(
                &format!(
                    "[{}]",
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("descriptors/testing.binpb")
                        .display()
                ),
                "[missing.binpb]",
            ),
            "cannot read",
        ),
        ("listen: [".to_string(), "(line "),
    ];
    for (i, (yaml, expected)) in cases.iter().enumerate() {
        let (code, _, stderr) = check_file(dir.path(), &format!("case{i}.yaml"), yaml);
        assert_eq!(code, 1, "case {i}: {stderr}");
        assert!(
            stderr.contains(expected),
            "case {i}: expected {expected:?} in:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("case{i}.yaml"))
                || expected.starts_with("descriptors")
                || expected.contains("proto")
                || expected.contains("cannot"),
            "case {i} does not name the file:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "case {i} panicked:\n{stderr}");
    }
}

#[test]
fn a_valid_config_with_an_unrouted_service_warns() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = good(dir.path()).replace("match: testing.v1.Echo", "match: other.v1.Service");
    let (code, stdout, stderr) = check_file(dir.path(), "warn.yaml", &yaml);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("warning: routes[0].match: \"other.v1.Service\" names nothing"),
        "{stdout}"
    );
    assert!(
        stdout.contains("warning: service testing.v1.Echo has no route"),
        "{stdout}"
    );
}
