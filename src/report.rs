//! Human-readable reports for `grpc-edge check` and `grpc-edge routes`: the
//! route table and the warnings that are not errors.

use crate::config::RouteMatch;
use crate::gateway::Gateway;

/// One line per route: `METHOD  /path  →  pkg.Service/Method  (upstream, kind)`, aligned.
pub fn route_lines(gateway: &Gateway) -> Vec<String> {
    let rows: Vec<(String, String, String, String)> = gateway
        .method_routes()
        .into_iter()
        .map(|(path, upstream, kind)| {
            let method = path.trim_start_matches('/').to_string();
            (
                "POST".to_string(),
                path,
                method,
                format!("{upstream}, {kind}"),
            )
        })
        .collect();
    let width =
        |f: fn(&(String, String, String, String)) -> usize| rows.iter().map(f).max().unwrap_or(0);
    let (w0, w1, w2) = (
        width(|r| r.0.len()),
        width(|r| r.1.len()),
        width(|r| r.2.len()),
    );
    rows.iter()
        .map(|(verb, path, method, note)| {
            format!("{verb:<w0$}  {path:<w1$}  →  {method:<w2$}  ({note})")
        })
        .collect()
}

/// Things that work but are probably not what the operator meant.
pub fn check_warnings(gateway: &Gateway) -> Vec<String> {
    let registry = gateway.descriptors().registry();
    let mut warnings = Vec::new();
    for (i, route) in gateway.config().routes.iter().enumerate() {
        let unknown = match RouteMatch::parse(&route.matches) {
            Ok(RouteMatch::Service(service)) => !registry.has_service(&service),
            Ok(RouteMatch::Method { service, method }) => {
                registry.get(&format!("/{service}/{method}")).is_none()
            }
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
        .filter(|m| {
            !m.service().starts_with("google.") && gateway.routes().resolve(&m.path).is_none()
        })
        .map(|m| m.service())
        .collect();
    unrouted.dedup();
    for service in unrouted {
        warnings.push(format!(
            "service {service} has no route: its calls get UNIMPLEMENTED"
        ));
    }
    warnings
}
