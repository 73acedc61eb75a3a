//! Human-readable reports for `grpc-edge check` and `grpc-edge routes`: the
//! route table and the warnings that are not errors.

use crate::config::RouteMatch;
use crate::gateway::Gateway;

/// One line per route, aligned: every REST binding
/// (`GET  /v1/{name=orders/*}  →  demo.v1.OrderService/GetOrder  (orders)`),
/// then every native gRPC path.
pub fn route_lines(gateway: &Gateway) -> Vec<String> {
    let upstream_of = |path: &str| {
        gateway
            .routes()
            .resolve(path)
            .map_or_else(|| "no route".to_string(), |t| t.upstream.name())
    };
    let mut rows: Vec<(String, String, String, String)> = gateway
        .rest()
        .router
        .bindings()
        .map(|b| {
            let note = upstream_of(&b.method.path);
            (
                b.http_method.to_string(),
                b.pattern.clone(),
                b.method_name().to_string(),
                note,
            )
        })
        .collect();
    rows.extend(gateway.method_routes().into_iter().map(|(path, upstream, kind)| {
        let method = path.trim_start_matches('/').to_string();
        ("gRPC".to_string(), path, method, format!("{upstream}, {kind}"))
    }));
    let width = |f: fn(&(String, String, String, String)) -> usize| rows.iter().map(f).max().unwrap_or(0);
    let (w0, w1, w2) = (width(|r| r.0.len()), width(|r| r.1.len()), width(|r| r.2.len()));
    rows.iter()
        .map(|(verb, path, method, note)| format!("{verb:<w0$}  {path:<w1$}  →  {method:<w2$}  ({note})"))
        .collect()
}

/// Things that work but are probably not what the operator meant.
pub fn check_warnings(gateway: &Gateway) -> Vec<String> {
    let registry = gateway.descriptors().registry();
    let mut warnings = Vec::new();
    for (i, route) in gateway.config().routes.iter().enumerate() {
        let unknown = match RouteMatch::parse(&route.matches) {
            Ok(RouteMatch::Service(service)) => !registry.has_service(&service),
            Ok(RouteMatch::Method { service, method }) => registry.get(&format!("/{service}/{method}")).is_none(),
            _ => false,
        };
        if unknown {
            warnings.push(format!(
                "routes[{i}].match: \"{}\" names nothing in the loaded descriptors; native gRPC calls to it still pass through, REST and gRPC-Web need its descriptors",
                route.matches
            ));
        }
    }
    let mut unrouted: Vec<&str> = registry
        .methods()
        .into_iter()
        .filter(|m| !m.service().starts_with("google.") && gateway.routes().resolve(&m.path).is_none())
        .map(|m| m.service())
        .collect();
    unrouted.dedup();
    for service in unrouted {
        warnings.push(format!("service {service} has no route: its calls get UNIMPLEMENTED"));
    }
    warnings
}
