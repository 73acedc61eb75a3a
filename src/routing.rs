//! The route table: which upstream serves a gRPC path, and with which
//! timeouts. Every known method is resolved once at start-up into a hash
//! map, so a call costs one lookup; paths of methods the descriptors do not
//! know are matched against the routes in order (first match wins).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};

use crate::body::Body;
use crate::config::{Route, RouteMatch};
use crate::descriptors::{CallKind, Registry};
use crate::local::LocalService;
use crate::upstream::{CallOptions, Cluster};

/// What serves a route: a network cluster or an in-process service.
#[derive(Clone)]
pub(crate) enum Upstream {
    Cluster(Arc<Cluster>),
    Local(LocalService),
}

impl Upstream {
    /// Makes the call.
    pub(crate) async fn call(&self, request: Request<Body>, options: CallOptions) -> Response<Body> {
        match self {
            Upstream::Cluster(cluster) => cluster.call(request, options).await,
            Upstream::Local(service) => service.call(request, options).await,
        }
    }

    /// The upstream's name (`upstreams` key, or `in-process <service>`).
    pub(crate) fn name(&self) -> String {
        match self {
            Upstream::Cluster(cluster) => cluster.name.to_string(),
            Upstream::Local(service) => format!("in-process {}", service.name()),
        }
    }
}

/// Where and how calls to one method go.
pub(crate) struct RouteTarget {
    pub(crate) upstream: Upstream,
    /// Overall limit for unary calls.
    pub(crate) timeout: Duration,
    /// Idle limit for streams.
    pub(crate) stream_idle_timeout: Duration,
    /// The call shape, when the descriptors know the method.
    pub(crate) kind: Option<CallKind>,
    /// Index into `routes` (for `grpc-edge routes` and logs).
    pub(crate) route: usize,
}

/// Routes resolved against the method registry.
pub(crate) struct RouteTable {
    /// Looked up on every call, by the client's `:path` (a keyed hash).
    known: HashMap<String, Arc<RouteTarget>, foldhash::quality::RandomState>,
    /// For methods the descriptors do not know: (matcher, target with `kind: None`).
    ordered: Vec<(RouteMatch, Arc<RouteTarget>)>,
}

impl RouteTable {
    /// Resolves every route; `clusters` must hold every upstream a route names.
    ///
    /// In-process services take their own service's calls before any route.
    /// A route that names a service registered in-process is an error (one of
    /// the two would never be called); a route that names a built-in service
    /// (health, reflection) replaces it, so an operator can send health checks
    /// on to a backend.
    pub(crate) fn new(
        routes: &[Route],
        clusters: &HashMap<String, Arc<Cluster>>,
        services: &[LocalService],
        builtins: &[LocalService],
        registry: &Registry,
    ) -> Result<Self, String> {
        let mut ordered = Vec::with_capacity(routes.len() + services.len() + builtins.len());
        let route_naming = |service: &str| {
            routes.iter().position(|r| match RouteMatch::parse(&r.matches) {
                Ok(RouteMatch::Service(s)) | Ok(RouteMatch::Method { service: s, .. }) => s == service,
                _ => false,
            })
        };
        for local in services {
            if let Some(i) = route_naming(local.name()) {
                return Err(format!(
                    "routes[{i}].match: {} is served in-process (registered with GatewayBuilder::service) and \
                     this route sends it to upstream \"{}\"; keep one of the two",
                    local.name(),
                    routes[i].upstream
                ));
            }
        }
        let builtins = builtins.iter().filter(|l| route_naming(l.name()).is_none());
        for local in services.iter().chain(builtins) {
            let target = RouteTarget {
                upstream: Upstream::Local(local.clone()),
                timeout: std::time::Duration::from_secs(15),
                stream_idle_timeout: std::time::Duration::from_secs(300),
                kind: None,
                route: usize::MAX,
            };
            ordered.push((RouteMatch::Service(local.name().to_string()), Arc::new(target)));
        }
        for (i, route) in routes.iter().enumerate() {
            let matcher = RouteMatch::parse(&route.matches).map_err(|e| format!("routes[{i}].match: {e}"))?;
            let cluster = clusters
                .get(&route.upstream)
                .ok_or_else(|| format!("routes[{i}].upstream: no upstream named \"{}\"", route.upstream))?
                .clone();
            let target = RouteTarget {
                upstream: Upstream::Cluster(cluster),
                timeout: route.timeout.get(),
                stream_idle_timeout: route.stream_idle_timeout.get(),
                kind: None,
                route: i,
            };
            ordered.push((matcher, Arc::new(target)));
        }
        let mut known = HashMap::default();
        for method in registry.methods() {
            if let Some((_, target)) = ordered
                .iter()
                .find(|(m, _)| m.matches(method.service(), method.method()))
            {
                let resolved = RouteTarget {
                    upstream: target.upstream.clone(),
                    timeout: target.timeout,
                    stream_idle_timeout: target.stream_idle_timeout,
                    kind: Some(method.kind),
                    route: target.route,
                };
                known.insert(method.path.clone(), Arc::new(resolved));
            }
        }
        Ok(Self { known, ordered })
    }

    /// The target for a gRPC path, or `None` when no route matches.
    pub(crate) fn resolve(&self, path: &str) -> Option<&Arc<RouteTarget>> {
        if let Some(target) = self.known.get(path) {
            return Some(target);
        }
        let (service, method) = split_grpc_path(path)?;
        self.ordered
            .iter()
            .find(|(matcher, _)| matcher.matches(service, method))
            .map(|(_, target)| target)
    }

    /// Every routed method path, sorted.
    pub(crate) fn known_paths(&self) -> Vec<(&str, &Arc<RouteTarget>)> {
        let mut all: Vec<_> = self.known.iter().map(|(p, t)| (p.as_str(), t)).collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }
}

/// Splits `/pkg.Service/Method`; `None` for anything else.
pub(crate) fn split_grpc_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, method))
}

#[cfg(test)]
mod tests {
    use super::split_grpc_path;

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(split_grpc_path("/a.B/C"), Some(("a.B", "C")));
        for bad in ["", "/", "a.B/C", "/a.B", "/a.B/", "//C", "/a.B/C/D"] {
            assert_eq!(split_grpc_path(bad), None, "{bad:?}");
        }
    }
}
