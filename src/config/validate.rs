//! Cross-field rules of the configuration. Each rule reports the key path it
//! is about; all problems are collected so one `grpc-edge check` run shows
//! every mistake, not the first.

use super::{Config, ConfigError, RouteMatch, Upstream, did_you_mean};

/// The rules of a configuration file: it must route something somewhere.
/// (A gateway built in code may serve only in-process services instead.)
pub(super) fn require_routes(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    if config.upstreams.is_empty() {
        errors.push(ConfigError::new("upstreams", "at least one upstream is required"));
    }
    if config.routes.is_empty() {
        errors.push(ConfigError::new("routes", "at least one route is required"));
    }
    errors
}

pub(super) fn validate(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (name, upstream) in &config.upstreams {
        validate_upstream(&format!("upstreams.{name}"), upstream, &mut errors);
    }
    validate_routes(config, &mut errors);
    for (key, value) in [
        (
            "observability.access_log.sample_successes",
            config.observability.access_log.sample_successes,
        ),
        (
            "observability.tracing.sample_ratio",
            config.observability.tracing.sample_ratio,
        ),
    ] {
        if !(0.0..=1.0).contains(&value) {
            errors.push(ConfigError::new(
                key,
                format!("expected a share from 0.0 to 1.0, got {value}"),
            ));
        }
    }
    let endpoint = &config.observability.tracing.otlp_endpoint;
    if !endpoint.is_empty() && !endpoint.starts_with("http://") {
        errors.push(ConfigError::new(
            "observability.tracing.otlp_endpoint",
            format!("expected an http:// URL of an OTLP/HTTP collector, got \"{endpoint}\""),
        ));
    }
    if let Some(cors) = &config.cors {
        if cors.allow_origins.is_empty() {
            errors.push(ConfigError::new(
                "cors.allow_origins",
                "list at least one origin, or [\"*\"]; remove the cors section to disable CORS",
            ));
        }
        for (i, origin) in cors.allow_origins.iter().enumerate() {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                errors.push(ConfigError::new(
                    format!("cors.allow_origins[{i}]"),
                    format!("expected an origin such as https://app.example.com, got \"{origin}\""),
                ));
            }
        }
        if cors.allow_credentials && cors.allow_origins.iter().any(|o| o == "*") {
            errors.push(ConfigError::new(
                "cors.allow_credentials",
                "browsers refuse credentials with allow_origins: [\"*\"]; list the origins instead",
            ));
        }
    }
    if let Some(tls) = &config.tls {
        let _ = tls; // file contents are checked when certificates are loaded
    }
    errors
}

fn validate_upstream(key: &str, upstream: &Upstream, errors: &mut Vec<ConfigError>) {
    match (&upstream.dns, upstream.endpoints.is_empty()) {
        (Some(_), false) => errors.push(ConfigError::new(key, "set either endpoints or dns, not both")),
        (None, true) => errors.push(ConfigError::new(
            format!("{key}.endpoints"),
            "list at least one endpoint (host:port), or set dns",
        )),
        _ => {}
    }
    for (i, endpoint) in upstream.endpoints.iter().enumerate() {
        if let Err(why) = check_host_port(endpoint) {
            errors.push(ConfigError::new(format!("{key}.endpoints[{i}]"), why));
        }
        if upstream.endpoints[..i].contains(endpoint) {
            errors.push(ConfigError::new(
                format!("{key}.endpoints[{i}]"),
                format!("\"{endpoint}\" is listed twice"),
            ));
        }
    }
    if let Some(dns) = &upstream.dns
        && let Err(why) = check_host_port(dns)
    {
        errors.push(ConfigError::new(format!("{key}.dns"), why));
    }
    let positive = [
        ("connect_timeout", upstream.connect_timeout),
        ("dns_refresh", upstream.dns_refresh),
        ("pool.max_connection_age", upstream.pool.max_connection_age),
        ("pool.idle_timeout", upstream.pool.idle_timeout),
        ("http2.keepalive_interval", upstream.http2.keepalive_interval),
        ("http2.keepalive_timeout", upstream.http2.keepalive_timeout),
        ("outlier_detection.interval", upstream.outlier_detection.interval),
        (
            "outlier_detection.base_ejection_time",
            upstream.outlier_detection.base_ejection_time,
        ),
        ("limits.pending_timeout", upstream.limits.pending_timeout),
    ];
    for (field, value) in positive {
        if value.get().is_zero() {
            errors.push(ConfigError::new(
                format!("{key}.{field}"),
                "expected a duration above zero, got 0",
            ));
        }
    }
    let windows = [
        ("http2.initial_stream_window", upstream.http2.initial_stream_window),
        (
            "http2.initial_connection_window",
            upstream.http2.initial_connection_window,
        ),
    ];
    for (field, value) in windows {
        if !(65_535..=(1 << 31) - 1).contains(&value.bytes()) {
            errors.push(ConfigError::new(
                format!("{key}.{field}"),
                format!("expected a size from 64KiB to 2GiB (HTTP/2 limits), got {value}"),
            ));
        }
    }
    let od = &upstream.outlier_detection;
    for (field, value) in [
        ("failure_percentage", od.failure_percentage),
        ("max_ejection_percent", od.max_ejection_percent),
    ] {
        if value > 100 {
            errors.push(ConfigError::new(
                format!("{key}.outlier_detection.{field}"),
                format!("expected a percentage from 0 to 100, got {value}"),
            ));
        }
    }
    if od.max_ejection_time < od.base_ejection_time {
        errors.push(ConfigError::new(
            format!("{key}.outlier_detection.max_ejection_time"),
            format!(
                "must not be shorter than base_ejection_time ({})",
                od.base_ejection_time
            ),
        ));
    }
    if upstream.retry.budget_percent > 100 {
        errors.push(ConfigError::new(
            format!("{key}.retry.budget_percent"),
            format!(
                "expected a percentage from 0 to 100, got {}",
                upstream.retry.budget_percent
            ),
        ));
    }
    if upstream.retry.backoff.max < upstream.retry.backoff.base {
        errors.push(ConfigError::new(
            format!("{key}.retry.backoff.max"),
            format!("must not be shorter than base ({})", upstream.retry.backoff.base),
        ));
    }
    if let Some(hc) = &upstream.health_check
        && (hc.timeout.get().is_zero() || hc.interval.get().is_zero())
    {
        errors.push(ConfigError::new(
            format!("{key}.health_check"),
            "interval and timeout must be above zero",
        ));
    }
    if let Some(tls) = &upstream.tls
        && tls.cert.is_some() != tls.key.is_some()
    {
        errors.push(ConfigError::new(
            format!("{key}.tls"),
            "cert and key go together: set both for mTLS, or neither",
        ));
    }
}

/// Checks `host:port` (IPv6 in brackets) and returns why it is not.
fn check_host_port(text: &str) -> Result<(), String> {
    let bad =
        || format!("expected host:port such as 127.0.0.1:50051 or svc.ns.svc.cluster.local:50051, got \"{text}\"");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    if host.starts_with('[') != host.ends_with(']') || (host.contains(':') && !host.starts_with('[')) {
        return Err(bad());
    }
    Ok(())
}

fn validate_routes(config: &Config, errors: &mut Vec<ConfigError>) {
    let mut earlier: Vec<(usize, RouteMatch)> = Vec::new();
    for (i, route) in config.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        match RouteMatch::parse(&route.matches) {
            Ok(matcher) => {
                if let Some((j, _)) = earlier.iter().find(|(_, e)| e.covers(&matcher)) {
                    errors.push(ConfigError::new(
                        format!("{key}.match"),
                        format!(
                            "\"{}\" can never match: routes[{j}] (\"{}\") comes first and matches it all",
                            route.matches, config.routes[*j].matches
                        ),
                    ));
                }
                earlier.push((i, matcher));
            }
            Err(why) => errors.push(ConfigError::new(format!("{key}.match"), why)),
        }
        if !config.upstreams.contains_key(&route.upstream) {
            let mut message = format!("no upstream named \"{}\"", route.upstream);
            if let Some(best) = did_you_mean(&route.upstream, config.upstreams.keys().map(String::as_str)) {
                message.push_str(&format!(" (did you mean \"{best}\"?)"));
            }
            errors.push(ConfigError::new(format!("{key}.upstream"), message));
        }
        if route.timeout.get().is_zero() {
            errors.push(ConfigError::new(
                format!("{key}.timeout"),
                "expected a duration above zero, got 0",
            ));
        }
        if route.stream_idle_timeout.get().is_zero() {
            errors.push(ConfigError::new(
                format!("{key}.stream_idle_timeout"),
                "expected a duration above zero, got 0",
            ));
        }
    }
}
