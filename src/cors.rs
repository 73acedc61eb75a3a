//! CORS for browser callers, from the `cors` configuration section: the
//! gateway answers preflights itself (`204`, never forwarded, for any path —
//! gRPC-Web and REST alike) and adds the `Access-Control-*` headers to the
//! answers it gives allowed origins. A disallowed origin gets no CORS
//! headers at all; its preflight is still answered here, not forwarded, and
//! the browser refuses the call.
//!
//! Written by hand rather than with tower-http's `CorsLayer`: the gateway is
//! not a `tower::Service` (`Gateway::handle` takes the connection's facts
//! as well as the request), the policy needed is small and fixed by the
//! configuration, and a hand-written one precomputes every header value once
//! so a decorated answer costs no allocation and no extra dependency.
//!
//! Built-in lists: requests may send `x-grpc-web`, `x-user-agent`,
//! `grpc-timeout`, `content-type` and `authorization` (what gRPC-Web
//! clients send), plus `grpc-encoding`/`grpc-accept-encoding` (connect-web
//! compression) and `x-accept-content-transfer-encoding`/
//! `x-accept-response-streaming` (older grpc-web clients, in Envoy's
//! documented gRPC-Web CORS set). `keep-alive` is left out because browsers
//! never let scripts send it, and `x-requested-with` because no gRPC-Web
//! client sends it — add it with `allow_headers` if your HTTP library does.
//! Answers expose `grpc-status`, `grpc-message` and `grpc-status-details-bin`
//! so a trailers-only status is readable. Methods allowed: those of
//! `google.api.http` (GET, PUT, POST, DELETE, PATCH).

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD,
    ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};

use crate::body::Body;
use crate::config::{self, ConfigError, ConfigErrors};

/// Request headers every policy allows.
const BUILTIN_ALLOW_HEADERS: [&str; 9] = [
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "content-type",
    "authorization",
    "grpc-encoding",
    "grpc-accept-encoding",
    "x-accept-content-transfer-encoding",
    "x-accept-response-streaming",
];

/// Response headers every policy exposes.
const BUILTIN_EXPOSE_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// Methods a preflight may ask for: every HttpRule verb.
const ALLOW_METHODS: &str = "GET, PUT, POST, DELETE, PATCH";

/// The `allow_origins` entry that allows every origin.
const ANY_ORIGIN: &str = "*";

/// Which origins may call.
#[derive(Clone, Debug)]
enum Origins {
    /// `["*"]`: every origin, answered with `*`.
    Any,
    /// Exact origins (compared ASCII case-insensitively), answered by echoing the origin.
    List(Vec<String>),
}

/// Whether browsers may send cookies and read the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Credentials {
    Allowed,
    NotAllowed,
}

/// A CORS policy with every header value computed once.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    origins: Origins,
    credentials: Credentials,
    allow_headers: HeaderValue,
    expose_headers: HeaderValue,
    max_age: HeaderValue,
}

/// What a request means for CORS.
pub(crate) enum Check<'a> {
    /// A preflight: this is the whole answer.
    Preflight(Box<Response<Body>>),
    /// Any other request: decorate its answer afterwards.
    Actual(Decoration<'a>),
}

/// The CORS headers for one answer.
pub(crate) struct Decoration<'a> {
    policy: &'a Policy,
    /// `Access-Control-Allow-Origin`, when the origin is allowed.
    allow_origin: Option<HeaderValue>,
}

impl Policy {
    /// Builds the policy; a header name that is not one is an error naming its key.
    pub(crate) fn new(config: &config::Cors) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let allow_headers = header_list(
            &BUILTIN_ALLOW_HEADERS,
            &config.allow_headers,
            "cors.allow_headers",
            &mut errors,
        );
        let expose_headers = header_list(
            &BUILTIN_EXPOSE_HEADERS,
            &config.expose_headers,
            "cors.expose_headers",
            &mut errors,
        );
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let origins = if config.allow_origins.iter().any(|o| o == ANY_ORIGIN) {
            Origins::Any
        } else {
            Origins::List(
                config
                    .allow_origins
                    .iter()
                    .map(|o| o.trim_end_matches('/').to_string())
                    .collect(),
            )
        };
        Ok(Self {
            origins,
            credentials: if config.allow_credentials {
                Credentials::Allowed
            } else {
                Credentials::NotAllowed
            },
            allow_headers,
            expose_headers,
            max_age: HeaderValue::from(config.max_age.get().as_secs()),
        })
    }

    /// Classifies a request: preflights are answered at once.
    pub(crate) fn check<B>(&self, request: &Request<B>) -> Check<'_> {
        let origin = request.headers().get(ORIGIN);
        let allow_origin = origin.and_then(|origin| self.allow_origin(origin));
        let preflight = request.method() == Method::OPTIONS
            && origin.is_some()
            && request.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            return Check::Preflight(Box::new(self.preflight(allow_origin)));
        }
        Check::Actual(Decoration {
            policy: self,
            allow_origin,
        })
    }

    /// The `Access-Control-Allow-Origin` value for an origin, if it is allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.origins {
            Origins::Any => Some(HeaderValue::from_static(ANY_ORIGIN)),
            Origins::List(allowed) => {
                let origin_bytes = origin.as_bytes();
                allowed
                    .iter()
                    .any(|a| a.as_bytes().eq_ignore_ascii_case(origin_bytes))
                    .then(|| origin.clone())
            }
        }
    }

    fn preflight(&self, allow_origin: Option<HeaderValue>) -> Response<Body> {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        headers.insert(VARY, HeaderValue::from_static("origin"));
        if let Some(allow_origin) = allow_origin {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
            headers.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
            headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone());
            headers.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
            self.credentials_to(headers);
        }
        response
    }

    fn credentials_to(&self, headers: &mut HeaderMap) {
        if self.credentials == Credentials::Allowed {
            headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
}

impl Decoration<'_> {
    /// Sets the CORS headers of an answer. The gateway owns them: any an
    /// upstream sent are replaced, or removed for a disallowed origin.
    /// `Vary: Origin` is added to every answer, since each depends on it.
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        for name in [
            ACCESS_CONTROL_ALLOW_ORIGIN,
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            ACCESS_CONTROL_EXPOSE_HEADERS,
        ] {
            headers.remove(name);
        }
        let varies = headers.get_all(VARY).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|item| item.trim_ascii().eq_ignore_ascii_case(b"origin"))
        });
        if !varies {
            headers.append(VARY, HeaderValue::from_static("origin"));
        }
        if let Some(allow_origin) = self.allow_origin {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, self.policy.expose_headers.clone());
            self.policy.credentials_to(headers);
        }
    }
}

/// Joins the built-in names and the configured ones (lower-cased, without
/// repeats) into one header value; a bad configured name is an error.
fn header_list(builtin: &[&str], configured: &[String], key: &str, errors: &mut Vec<ConfigError>) -> HeaderValue {
    let mut names: Vec<String> = builtin.iter().map(|n| (*n).to_string()).collect();
    for (i, name) in configured.iter().enumerate() {
        match HeaderName::from_bytes(name.trim().as_bytes()) {
            Ok(parsed) => {
                if !names.iter().any(|n| n == parsed.as_str()) {
                    names.push(parsed.as_str().to_string());
                }
            }
            Err(_) => errors.push(ConfigError::new(
                format!("{key}[{i}]"),
                format!("expected a header name such as x-request-id, got \"{name}\""),
            )),
        }
    }
    // Header names are visible ASCII, so the joined list is a valid value.
    HeaderValue::from_str(&names.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> Policy {
        let config = config::Cors {
            allow_origins: origins.iter().map(|o| (*o).to_string()).collect(),
            allow_credentials: credentials,
            allow_headers: vec!["X-Request-Id".into(), "x-grpc-web".into()],
            expose_headers: vec!["x-served-by".into()],
            max_age: config::Duration::from_secs(90),
        };
        Policy::new(&config).unwrap()
    }

    fn request(method: Method, headers: &[(&'static str, &'static str)]) -> Request<()> {
        let mut request = Request::new(());
        *request.method_mut() = method;
        for (name, value) in headers {
            request.headers_mut().insert(*name, HeaderValue::from_static(value));
        }
        request
    }

    const APP: &str = "https://app.example.com";

    #[test]
    fn header_lists_join_builtin_and_configured_names_once() {
        let policy = policy(&[APP], false);
        let allow = policy.allow_headers.to_str().unwrap();
        assert!(allow.starts_with("x-grpc-web, x-user-agent, grpc-timeout, content-type"));
        assert!(allow.ends_with(", x-request-id"), "{allow}");
        assert_eq!(allow.matches("x-grpc-web").count(), 1);
        assert_eq!(
            policy.expose_headers,
            "grpc-status, grpc-message, grpc-status-details-bin, x-served-by"
        );
        assert_eq!(policy.max_age, "90");
    }

    #[test]
    fn a_bad_header_name_is_a_config_error_naming_its_key() {
        let config = config::Cors {
            allow_origins: vec![APP.into()],
            allow_credentials: false,
            allow_headers: vec!["ok".into(), "not a header".into()],
            expose_headers: vec![],
            max_age: config::Duration::from_secs(1),
        };
        let errors = Policy::new(&config).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].key, "cors.allow_headers[1]");
    }

    #[test]
    fn origins_match_exactly_ignoring_case_and_a_configured_trailing_slash() {
        let policy = policy(&["https://app.example.com/"], false);
        let allowed = |origin: &'static str| policy.allow_origin(&HeaderValue::from_static(origin));
        assert_eq!(allowed(APP).unwrap(), APP);
        assert_eq!(allowed("HTTPS://APP.example.com").unwrap(), "HTTPS://APP.example.com");
        for other in ["https://app.example.com:8443", "http://app.example.com", "null", ""] {
            assert!(allowed(other).is_none(), "{other}");
        }
        let any = self::policy(&["*"], false);
        assert_eq!(any.allow_origin(&HeaderValue::from_static("null")).unwrap(), "*");
    }

    #[test]
    fn only_options_with_origin_and_request_method_is_a_preflight() {
        let policy = policy(&[APP], true);
        let preflight = request(
            Method::OPTIONS,
            &[("origin", APP), ("access-control-request-method", "POST")],
        );
        let Check::Preflight(answer) = policy.check(&preflight) else {
            panic!("not a preflight");
        };
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        let headers = answer.headers();
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], APP);
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_METHODS], ALLOW_METHODS);
        for not_preflight in [
            request(Method::OPTIONS, &[("origin", APP)]),
            request(Method::OPTIONS, &[("access-control-request-method", "POST")]),
            request(
                Method::POST,
                &[("origin", APP), ("access-control-request-method", "POST")],
            ),
        ] {
            assert!(matches!(policy.check(&not_preflight), Check::Actual(_)));
        }
    }

    #[test]
    fn a_disallowed_origin_gets_no_cors_headers_even_from_upstream() {
        let policy = policy(&[APP], true);
        let Check::Actual(decoration) = policy.check(&request(Method::POST, &[("origin", "https://evil.example")]))
        else {
            panic!("not an actual request");
        };
        let mut headers = HeaderMap::new();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        decoration.apply(&mut headers);
        assert!(
            headers.keys().all(|name| !name.as_str().starts_with("access-control-")),
            "{headers:?}"
        );
        assert_eq!(headers[VARY], "origin");
    }
}
