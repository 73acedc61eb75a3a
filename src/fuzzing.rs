//! Entry points for the fuzz targets under `fuzz/`: thin, hidden wrappers
//! that run crate-private parsers on arbitrary input. They return nothing and
//! must never panic; in builds with debug assertions (fuzz builds) they also
//! check properties of what was parsed, so a wrong answer shows up as a
//! crash. Not part of the supported API.

use std::sync::{Arc, OnceLock};

use http::Method;
use prost_reflect::DescriptorPool;
use prost_types::{DescriptorProto, FileDescriptorProto, MethodDescriptorProto, ServiceDescriptorProto};

use crate::descriptors::{MethodInfo, Registry};
use crate::rest::router::{Binding, BodyRule, Lookup, RestRouter};
use crate::rest::template::{self, PathTemplate, Segment};

/// Parses `template` as a `google.api.http` path template and, if it parses,
/// builds a small route table around it (with a few fixed bindings that
/// compete with it) and matches `path` against it with a few HTTP methods.
///
/// Checked with debug assertions: the template's canonical form parses back
/// to the same template; every lookup gives what a slow, obvious reference
/// matcher (one template at a time, precedence as a sort key) says it
/// should; and a path made from the template always finds a binding.
pub fn path_template(template: &str, path: &str) {
    let Ok(parsed) = template::parse(template) else {
        return;
    };
    let canonical = parsed.to_string();
    debug_assert_eq!(
        template::parse(&canonical).as_ref(),
        Ok(&parsed),
        "canonical form {canonical:?}"
    );
    let Some(router) = tiny_router(template, &parsed) else {
        return;
    };
    let example = example_path(&parsed);
    for method in [Method::GET, Method::POST, Method::PATCH] {
        for path in [path, example.as_str()] {
            let got = summary(&router.lookup(&method, path));
            let expected = reference::lookup(&router, &method, path);
            debug_assert_eq!(got, expected, "{method} {path:?} with {template:?}");
        }
    }
    debug_assert!(
        matches!(router.lookup(&Method::GET, &example), Lookup::Found { .. }),
        "{example:?} found nothing with {template:?}"
    );
}

/// Fixed bindings that compete with the fuzzed one (`GET`).
const FIXED: &[(&str, &str)] = &[
    ("GET", "/v1/{name=things/*}"),
    ("GET", "/v1/things/{id}:run"),
    ("GET", "/{a}/{b}/x"),
    ("GET", "/v1/**"),
    ("GET", "/{rest=**}:get"),
    ("POST", "/v1/{name=things/*}:run"),
    ("DELETE", "/v1/*/{id}"),
    ("PUT", "/{rest=**}"),
    ("*", "/w/{x}/*"),
];

/// The fuzzed template as `GET` with every fixed binding, or, when it
/// conflicts with a fixed `GET` binding, with only the other methods'.
fn tiny_router(pattern: &str, template: &PathTemplate) -> Option<RestRouter> {
    let method = placeholder_method()?;
    let binding = |http_method: Method, pattern: &str, template: PathTemplate| Binding {
        http_method,
        pattern: pattern.to_string(),
        template,
        body: BodyRule::None,
        response_body: None,
        method: Arc::clone(&method),
    };
    let fixed = |include_get: bool| {
        FIXED.iter().filter_map(move |&(http_method, pattern)| {
            let http_method = Method::from_bytes(http_method.as_bytes()).ok()?;
            if http_method == Method::GET && !include_get {
                return None;
            }
            Some((http_method, pattern, template::parse(pattern).ok()?))
        })
    };
    for include_get in [true, false] {
        let mut bindings = vec![binding(Method::GET, pattern, template.clone())];
        bindings.extend(fixed(include_get).map(|(m, p, t)| binding(m, p, t)));
        if let Ok(router) = RestRouter::from_bindings(bindings) {
            return Some(router);
        }
    }
    None
}

/// A lookup's answer in comparable form.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Found(String, String, Vec<(String, String)>),
    NotAllowed(Vec<Method>),
    NotFound,
    BadPath,
}

fn summary(lookup: &Lookup<'_>) -> Answer {
    match lookup {
        Lookup::Found { binding, variables } => Answer::Found(
            binding.http_method.to_string(),
            binding.pattern.clone(),
            variables.clone(),
        ),
        Lookup::MethodNotAllowed { allowed } => Answer::NotAllowed(allowed.clone()),
        Lookup::NotFound => Answer::NotFound,
        Lookup::BadPath(_) => Answer::BadPath,
    }
}

/// A path the template must match: `x` for `*`, `y/z` for `**`, literals
/// and the verb re-encoded.
fn example_path(template: &PathTemplate) -> String {
    let encode = |text: &str, out: &mut String| {
        for &b in text.as_bytes() {
            if template::is_unreserved(b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    };
    let mut out = String::new();
    for segment in &template.segments {
        out.push('/');
        match segment {
            Segment::Literal(text) => encode(text, &mut out),
            Segment::Single => out.push('x'),
            Segment::Multi => out.push_str("y/z"),
        }
    }
    if let Some(verb) = &template.verb {
        out.push(':');
        encode(verb, &mut out);
    }
    out
}

/// The matching rules written the slow, obvious way: each binding on its
/// own, precedence as a sort key. Independent of the trie.
mod reference {
    use http::Method;

    use super::Answer;
    use crate::rest::router::{Binding, RestRouter, method_rank};
    use crate::rest::template::{self, Segment};

    pub(super) fn lookup(router: &RestRouter, method: &Method, path: &str) -> Answer {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let Some(rest) = path.strip_prefix('/') else {
            return Answer::BadPath;
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let bad = |s: &&str| template::invalid_escape(s).is_some() || template::decode(s, false).is_err();
        if segments.iter().any(bad) {
            return Answer::BadPath;
        }
        let best = router
            .bindings()
            .filter(|b| b.http_method == *method || b.http_method.as_str() == "*")
            .filter_map(|b| {
                let (key, variables) = matches(b, &segments)?;
                Some(((key, b.http_method != *method), b, variables))
            })
            .min_by(|a, b| a.0.cmp(&b.0));
        if let Some((_, binding, variables)) = best {
            return Answer::Found(binding.http_method.to_string(), binding.pattern.clone(), variables);
        }
        let mut allowed: Vec<Method> = router
            .bindings()
            .filter(|b| matches(b, &segments).is_some())
            .map(|b| b.http_method.clone())
            .collect();
        allowed.sort_by(|a, b| (method_rank(a), a.as_str()).cmp(&(method_rank(b), b.as_str())));
        allowed.dedup();
        if allowed.is_empty() {
            Answer::NotFound
        } else {
            Answer::NotAllowed(allowed)
        }
    }

    /// A precedence key and the path variables.
    type Match = (Vec<u8>, Vec<(String, String)>);

    /// Whether one binding matches, with its precedence key (smaller wins:
    /// per segment literal < `*` < `**`, and at the verb's segment a verb
    /// match before a whole-segment one) and its variables.
    fn matches(binding: &Binding, path: &[&str]) -> Option<Match> {
        let t = &binding.template;
        let mut segments: Vec<&str> = path.to_vec();
        let n = segments.len();
        if let Some(verb) = &t.verb {
            let (base, found) = segments.last()?.rsplit_once(':')?;
            if template::decode(found, false).ok()? != *verb {
                return None;
            }
            *segments.last_mut()? = base;
        }
        let with_verb = t.verb.is_some();
        let mut key = Vec::new();
        for (j, segment) in t.segments.iter().enumerate() {
            let at_verb = |j: usize| with_verb && j + 1 == n;
            match segment {
                Segment::Literal(text) => {
                    let got = template::decode(segments.get(j)?, false).ok()?;
                    if got != *text {
                        return None;
                    }
                    key.push(if at_verb(j) { 0 } else { 1 });
                }
                Segment::Single => {
                    if segments.get(j)?.is_empty() {
                        return None;
                    }
                    key.push(if at_verb(j) { 2 } else { 3 });
                }
                Segment::Multi => {
                    if with_verb && j >= n {
                        return None; // a verb needs a segment to hang on
                    }
                    key.push(if with_verb { 4 } else { 5 });
                }
            }
        }
        if !t.segments.contains(&Segment::Multi) && t.segments.len() != n {
            return None;
        }
        let mut variables = Vec::new();
        for v in &t.variables {
            let value = if v.is_single_segment() {
                template::decode(segments.get(v.start)?, false).ok()?.into_owned()
            } else {
                let end = v.end.unwrap_or(n);
                let parts = segments.get(v.start..end).unwrap_or_default();
                let decoded: Option<Vec<String>> = parts
                    .iter()
                    .map(|s| template::decode(s, true).ok().map(|d| d.into_owned()))
                    .collect();
                decoded?.join("/")
            };
            variables.push((v.field_name(), value));
        }
        Some((key, variables))
    }
}

/// A method (`/fuzz.S/Call`, empty messages) to hang bindings on, built once.
pub(crate) fn placeholder_method() -> Option<Arc<MethodInfo>> {
    static METHOD: OnceLock<Option<Arc<MethodInfo>>> = OnceLock::new();
    METHOD
        .get_or_init(|| {
            let file = FileDescriptorProto {
                name: Some("fuzz.proto".into()),
                package: Some("fuzz".into()),
                syntax: Some("proto3".into()),
                message_type: vec![DescriptorProto {
                    name: Some("M".into()),
                    ..Default::default()
                }],
                service: vec![ServiceDescriptorProto {
                    name: Some("S".into()),
                    method: vec![MethodDescriptorProto {
                        name: Some("Call".into()),
                        input_type: Some(".fuzz.M".into()),
                        output_type: Some(".fuzz.M".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            let mut pool = DescriptorPool::new();
            pool.add_file_descriptor_proto(file).ok()?;
            Registry::new(&pool).get("/fuzz.S/Call").cloned()
        })
        .clone()
}
