use super::*;

const MINIMAL: &str = "
listen: 0.0.0.0:8080
descriptors: []
upstreams:
  library:
    endpoints: [\"127.0.0.1:50051\"]
routes:
  - match: \"*\"
    upstream: library
";

/// Parses `MINIMAL` with `extra` lines spliced in after `anchor`, expecting an error.
fn error_for(yaml: &str) -> String {
    match Config::from_yaml(yaml) {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let config = Config::from_yaml(MINIMAL).unwrap();
    let library = &config.upstreams["library"];
    assert_eq!(library.balancer, BalancerKind::PeakEwma);
    assert_eq!(library.pool.max_connections_per_endpoint, 4);
    assert_eq!(library.pool.max_streams_per_connection, 100);
    assert_eq!(library.connect_timeout, Duration::from_secs(5));
    assert_eq!(library.http2.initial_stream_window, ByteSize::mib(1));
    assert_eq!(library.outlier_detection.consecutive_failures, 5);
    assert_eq!(library.retry.max_replay_buffer, ByteSize::kib(64));
    assert_eq!(config.routes[0].timeout, Duration::from_secs(15));
    assert_eq!(config.routes[0].stream_idle_timeout, Duration::from_secs(300));
    assert_eq!(config.transcoding.max_request_body, ByteSize::mib(4));
    assert!(config.transcoding.reject_unknown_fields);
    assert!(config.cors.is_none() && config.admin.is_none() && config.tls.is_none());
}

#[test]
fn type_errors_name_the_key_and_what_was_expected() {
    let yaml = MINIMAL.replace(
        "endpoints: [\"127.0.0.1:50051\"]",
        "endpoints: [\"127.0.0.1:50051\"]\n    pool:\n      max_streams_per_connection: ten",
    );
    assert_eq!(
        error_for(&yaml),
        "upstreams.library.pool.max_streams_per_connection: expected a positive integer, got \"ten\" (line 8, column 7)"
    );
    let yaml = yaml.replace("connection: ten", "connection: 0");
    assert!(
        error_for(&yaml)
            .starts_with("upstreams.library.pool.max_streams_per_connection: expected a positive integer, got 0")
    );
}

#[test]
fn unknown_keys_are_errors_with_a_suggestion() {
    let yaml = MINIMAL.replace("listen:", "listn:");
    assert!(
        error_for(&yaml).starts_with("listn: unknown key (did you mean \"listen\"?)"),
        "{}",
        error_for(&yaml)
    );
    let yaml = MINIMAL.replace("    endpoints:", "    endpionts: [\"x:1\"]\n    endpoints:");
    assert!(error_for(&yaml).starts_with("upstreams.library.endpionts: unknown key (did you mean \"endpoints\"?)"));
    let yaml = MINIMAL.replace("descriptors: []", "descriptors: [{proto: a.proto, inclde: [x]}]");
    assert!(error_for(&yaml).starts_with("descriptors[0].inclde: unknown key (did you mean \"include\"?)"));
}

#[test]
fn route_to_a_missing_upstream_suggests_the_closest_name() {
    let yaml = MINIMAL.replace("upstream: library", "upstream: libary");
    assert_eq!(
        error_for(&yaml),
        "routes[0].upstream: no upstream named \"libary\" (did you mean \"library\"?)"
    );
}

#[test]
fn bad_values_are_explained() {
    let cases = [
        (
            "listen: 0.0.0.0:8080",
            "listen: nowhere",
            "listen: expected an address such as 0.0.0.0:8080",
        ),
        (
            "endpoints: [\"127.0.0.1:50051\"]",
            "endpoints: [\"127.0.0.1:50051\"]\n    connect_timeout: 5",
            "upstreams.library.connect_timeout: expected a duration such as 250ms, 5s, 10m or 1h, got \"5\"",
        ),
        (
            "endpoints: [\"127.0.0.1:50051\"]",
            "endpoints: [\"127.0.0.1:50051\"]\n    balancer: fastest",
            "upstreams.library.balancer: expected one of peak_ewma, least_request, round_robin, random, got \"fastest\"",
        ),
        (
            "endpoints: [\"127.0.0.1:50051\"]",
            "endpoints: [\"127.0.0.1:50051\"]\n    retry: {max_replay_buffer: 64KB}",
            "upstreams.library.retry.max_replay_buffer: expected a size such as 65536, 512KiB, 4MiB or 1GiB, got \"64KB\"",
        ),
        (
            "endpoints: [\"127.0.0.1:50051\"]",
            "endpoints: [\"127.0.0.1\"]",
            "upstreams.library.endpoints[0]: expected host:port",
        ),
        (
            "endpoints: [\"127.0.0.1:50051\"]",
            "endpoints: []",
            "upstreams.library.endpoints: list at least one endpoint",
        ),
        (
            "endpoints: [\"127.0.0.1:50051\"]",
            "endpoints: [\"a:1\"]\n    dns: b:1",
            "upstreams.library: set either endpoints or dns, not both",
        ),
        (
            "match: \"*\"",
            "match: \"library.v1.Library/\"",
            "routes[0].match: expected \"*\", a service",
        ),
        ("upstreams:", "upstreams: {}\nx:", "x: unknown key"),
    ];
    for (from, to, expected) in cases {
        let yaml = MINIMAL.replace(from, to);
        let error = error_for(&yaml);
        assert!(
            error.starts_with(expected),
            "for {to:?}:\n  got      {error}\n  expected {expected}"
        );
    }
}

#[test]
fn duplicate_keys_and_syntax_errors_give_a_line() {
    let yaml = MINIMAL.replace("routes:", "upstreams:\n  other: {endpoints: [\"a:1\"]}\nroutes:");
    assert!(
        error_for(&yaml).contains("is defined twice (line"),
        "{}",
        error_for(&yaml)
    );
    let error = error_for("listen: [0.0.0.0:8080\n");
    assert!(error.contains("(line "), "{error}");
}

#[test]
fn shadowed_routes_are_reported() {
    let yaml = MINIMAL.replace(
        "routes:\n",
        "routes:\n  - {match: library.v1.Library, upstream: library}\n  - {match: library.v1.Library/GetBook, upstream: library}\n",
    );
    let error = error_for(&yaml);
    assert!(
        error.contains("routes[1].match: \"library.v1.Library/GetBook\" can never match: routes[0]"),
        "{error}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = MINIMAL
        .replace("upstream: library", "upstream: nope")
        .replace("endpoints: [\"127.0.0.1:50051\"]", "endpoints: [\"bad\"]");
    let Err(errors) = Config::from_yaml(&yaml) else {
        panic!("expected errors")
    };
    assert_eq!(errors.0.len(), 2, "{errors}");
}

#[test]
fn descriptor_sources_accept_both_forms() {
    let yaml = MINIMAL.replace(
        "descriptors: []",
        "descriptors:\n  - descriptors/library.binpb\n  - proto: proto/library/v1/library.proto\n    include: [proto]",
    );
    let mut config = Config::from_yaml(&yaml).unwrap();
    config.resolve_paths(Path::new("/etc/edge"));
    assert_eq!(
        config.descriptors[0],
        DescriptorSource::Set("/etc/edge/descriptors/library.binpb".into())
    );
    assert_eq!(
        config.descriptors[1],
        DescriptorSource::Proto {
            proto: "/etc/edge/proto/library/v1/library.proto".into(),
            include: vec!["/etc/edge/proto".into()]
        }
    );
}

#[test]
fn route_matchers() {
    let any = RouteMatch::parse("*").unwrap();
    let service = RouteMatch::parse("pkg.Svc").unwrap();
    let method = RouteMatch::parse("pkg.Svc/Get").unwrap();
    assert!(any.covers(&service) && service.covers(&method) && !method.covers(&service));
    assert!(service.matches("pkg.Svc", "Other") && !service.matches("pkg.Svc2", "Get"));
    assert!(method.matches("pkg.Svc", "Get") && !method.matches("pkg.Svc", "Put"));
    for bad in ["", "pkg..Svc", "pkg.Svc/", "pkg.Svc/Get/x", "1pkg.Svc", "pkg Svc"] {
        assert!(RouteMatch::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn hostile_yaml_is_an_error_not_a_hang() {
    // A billion-laughs style alias bomb and deep nesting must fail fast.
    let mut bomb = String::from("a: &a [x,x,x,x,x,x,x,x,x]\n");
    for i in 0..20 {
        let prev = if i == 0 { "a".to_string() } else { format!("l{}", i - 1) };
        bomb.push_str(&format!(
            "l{i}: &l{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    assert!(Config::from_yaml(&bomb).is_err());
    let deep = "[".repeat(100_000);
    assert!(Config::from_yaml(&deep).is_err());
}

/// A configuration whose `l{levels}` entry, through merge keys, expands to
/// `fan^levels` copies of `l0`; bounded (at most 10^5 copies here), so the
/// test ends even if nothing stopped the expansion.
fn merge_bomb(levels: usize, fan: usize) -> String {
    let mut text =
        String::from("listen: 0.0.0.0:8080\ndescriptors: []\nupstreams:\n  l0: &l0 {endpoints: [\"127.0.0.1:1\"]}\n");
    for level in 1..=levels {
        let refs = vec![format!("*l{}", level - 1); fan].join(", ");
        text.push_str(&format!("  l{level}: &l{level} {{<<: [{refs}]}}\n"));
    }
    text.push_str("routes: [{match: \"*\", upstream: l0}]\n");
    text
}

#[test]
fn alias_bombs_inside_the_schema_are_rejected_quickly() {
    // Anchors aliased inside anchors, in places the schema accepts (the
    // bomb above only has keys `Config` rejects at once): each level
    // multiplies the last, 10^5 copies of l0 at the top for a 450-byte file.
    // The parser's own cap (a million replayed events) took seconds to hit
    // through `Config`; the file's limits stop it within milliseconds.
    let nested_routes = {
        let mut text = String::from(
            "listen: 0.0.0.0:8080\ndescriptors: []\nupstreams: {u: {endpoints: [\"127.0.0.1:1\"]}}\nroutes:\n  - &l0 {match: \"*\", upstream: u}\n",
        );
        for level in 1..=5 {
            let refs = vec![format!("*l{}", level - 1); 10].join(", ");
            text.push_str(&format!("  - &l{level} {{<<: [{refs}]}}\n"));
        }
        text
    };
    for bomb in [merge_bomb(5, 10), merge_bomb(16, 2), nested_routes] {
        let start = std::time::Instant::now();
        let error = error_for(&bomb);
        let took = start.elapsed();
        assert!(error.contains("aliases (*name) or merge keys (<<)"), "{error}");
        // Stopped by the file's own limits, not the parser's far larger ones.
        assert!(
            error.contains("alias replay limit exceeded") || error.contains("MergeKeys"),
            "{error}"
        );
        // About 0.3 s unoptimised (it was 2.5 to 3.5 s); a generous bound
        // for a loaded machine.
        assert!(took < std::time::Duration::from_secs(2), "{took:?} for\n{bomb}");
    }
}

#[test]
fn defaults_shared_through_merge_keys_still_load() {
    // Hundreds of upstreams sharing one block of settings: the use the alias
    // limits must leave room for.
    let mut text = String::from(
        "listen: 0.0.0.0:8080
descriptors: []
upstreams:
  u0: &defaults
    endpoints: [\"127.0.0.1:1\"]
    balancer: round_robin
    connect_timeout: 2s
    pool: {max_connections_per_endpoint: 2, idle_timeout: 30s}
    limits: {max_requests: 100, max_pending: 10}
    retry: {on: [unavailable], max_attempts: 3, backoff: {base: 10ms, max: 1s}}
",
    );
    let mut routes = String::from("routes:\n");
    for i in 1..300 {
        text.push_str(&format!(
            "  u{i}:\n    <<: *defaults\n    endpoints: [\"127.0.0.1:{i}\"]\n"
        ));
        routes.push_str(&format!("  - {{match: pkg.S{i}, upstream: u{i}}}\n"));
    }
    text.push_str(&routes);
    let config = Config::from_yaml(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.upstreams.len(), 300);
    assert_eq!(config.upstreams["u299"].retry.max_attempts, 3);
    assert_eq!(config.upstreams["u299"].endpoints, ["127.0.0.1:299"]);
}
