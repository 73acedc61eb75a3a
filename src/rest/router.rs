//! The REST route table: every HttpRule binding of every method in one
//! segment trie, and matching a request's method and path against it.
//!
//! The table is built once (see [`RestRouter::new`]; reading and validating
//! the annotations lives in `rules`) and is read-only afterwards. A lookup
//! splits the path (query string stripped) into segments, checks its
//! percent-encoding once, and walks the trie; it visits each trie node at
//! most once, so its cost is bounded by the table's size, never by the
//! number of bindings times the path. This module never reads bodies and
//! never opens sockets.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use http::Method;
use prost_reflect::DescriptorPool;

use super::template::{self, NotUtf8, PathTemplate, Segment};
use crate::descriptors::{MethodInfo, Registry};

/// Where a request's body goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BodyRule {
    /// No body: every non-path field comes from the query string.
    None,
    /// `body: "*"`: the body is the request message (less the path fields).
    Whole,
    /// `body: "field"`: the body fills this top-level field.
    Field(String),
}

/// One HTTP route to one method.
#[derive(Clone, Debug)]
pub(crate) struct Binding {
    /// The HTTP method (`*` from `custom { kind: "*" }` accepts any).
    pub(crate) http_method: Method,
    /// The template as written in the annotation.
    pub(crate) pattern: String,
    /// The parsed template.
    pub(crate) template: PathTemplate,
    /// Where the request body goes.
    pub(crate) body: BodyRule,
    /// The top-level response field sent as the body (`None`: the whole message).
    pub(crate) response_body: Option<String>,
    /// The gRPC method called.
    pub(crate) method: Arc<MethodInfo>,
}

impl Binding {
    /// `pkg.Service/Method`.
    pub(crate) fn method_name(&self) -> &str {
        self.method.path.trim_start_matches('/')
    }
}

/// The answer to one lookup.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    /// A binding matched: its path variables as (field path, decoded value).
    Found {
        /// The binding.
        binding: &'a Binding,
        /// `("book.name", "shelves/1/books/2")`, in template order.
        variables: Vec<(String, String)>,
    },
    /// The path matches, but not with this HTTP method (answer 405 with `Allow`).
    MethodNotAllowed {
        /// The methods it does match with, in [`method_rank`] order.
        allowed: Vec<Method>,
    },
    /// No binding matches the path.
    NotFound,
    /// The path itself is malformed (answer 400): what and at which byte.
    BadPath(String),
}

/// The route table.
pub(crate) struct RestRouter {
    /// In the order they were added (declaration order).
    bindings: Vec<Binding>,
    /// Indices into `bindings`, sorted by pattern then HTTP method.
    sorted: Vec<usize>,
    /// The trie; `nodes[0]` is the root.
    nodes: Vec<Node>,
}

#[derive(Default)]
struct Node {
    /// Children by decoded literal.
    literals: HashMap<Box<str>, usize>,
    /// The `*` child.
    single: Option<usize>,
    /// Templates ending at this node.
    ends: Vec<End>,
    /// Templates with `**` here (and nothing but perhaps a verb after it).
    multi: Vec<End>,
}

/// Bindings sharing one shape (segments and verb), one per HTTP method.
struct End {
    verb: Option<Box<str>>,
    routes: Vec<(Method, usize)>,
}

impl End {
    fn verb_is(&self, verb: Option<&str>) -> bool {
        self.verb.as_deref() == verb
    }

    /// The binding for this HTTP method: an exact match, else a `*` binding.
    fn route_for(&self, method: &Method) -> Option<usize> {
        let exact = self.routes.iter().find(|(m, _)| m == method);
        let any = || self.routes.iter().find(|(m, _)| m.as_str() == "*");
        exact.or_else(any).map(|&(_, index)| index)
    }
}

/// One request path segment.
struct PathSegment<'p> {
    raw: &'p str,
    decoded: Cow<'p, str>,
}

/// The last segment split at its last raw `:` (an escaped `%3A` never splits).
struct VerbSplit<'p> {
    base_raw: &'p str,
    base: Cow<'p, str>,
    verb: Cow<'p, str>,
}

struct Request<'p> {
    segments: Vec<PathSegment<'p>>,
    split: Option<VerbSplit<'p>>,
}

impl RestRouter {
    /// Every binding of every method in `registry` (built from `pool`, whose
    /// `google.api.http` extension is read), validated; an error lists every
    /// problem found, one per line, each naming the method(s) at fault.
    pub(crate) fn new(registry: &Registry, pool: &DescriptorPool) -> Result<Self, String> {
        let (bindings, mut problems) = super::rules::bindings(registry, pool);
        let (router, conflicts) = Self::build(bindings);
        problems.extend(conflicts);
        if problems.is_empty() {
            Ok(router)
        } else {
            Err(problems.join("\n"))
        }
    }

    /// A table of already-validated bindings; errors on two bindings of one
    /// HTTP method that match the same paths.
    pub(crate) fn from_bindings(bindings: Vec<Binding>) -> Result<Self, String> {
        let (router, conflicts) = Self::build(bindings);
        if conflicts.is_empty() {
            Ok(router)
        } else {
            Err(conflicts.join("\n"))
        }
    }

    /// The table, and a line per conflict between bindings.
    fn build(bindings: Vec<Binding>) -> (Self, Vec<String>) {
        let mut router = RestRouter {
            bindings: Vec::with_capacity(bindings.len()),
            sorted: Vec::new(),
            nodes: vec![Node::default()],
        };
        let mut conflicts = Vec::new();
        for binding in bindings {
            let index = router.bindings.len();
            if let Err(existing) = router.insert(&binding, index) {
                conflicts.push(conflict(&router.bindings[existing], &binding));
            }
            router.bindings.push(binding);
        }
        let mut sorted: Vec<usize> = (0..router.bindings.len()).collect();
        sorted.sort_by_cached_key(|&i| {
            let b = &router.bindings[i];
            (
                b.pattern.clone(),
                method_rank(&b.http_method),
                b.http_method.to_string(),
            )
        });
        router.sorted = sorted;
        (router, conflicts)
    }

    /// Every binding, sorted by pattern, then HTTP method.
    pub(crate) fn bindings(&self) -> impl ExactSizeIterator<Item = &Binding> + '_ {
        self.sorted.iter().map(|&i| &self.bindings[i])
    }

    /// Adds a binding to the trie; `Err(index)` of a binding it conflicts with.
    fn insert(&mut self, binding: &Binding, index: usize) -> Result<(), usize> {
        let mut node = 0;
        let mut at_multi = false;
        for segment in &binding.template.segments {
            let next = self.nodes.len();
            node = match segment {
                Segment::Literal(text) => *self.nodes[node].literals.entry(text.as_str().into()).or_insert(next),
                Segment::Single => *self.nodes[node].single.get_or_insert(next),
                Segment::Multi => {
                    // The parser guarantees `**` is last.
                    at_multi = true;
                    break;
                }
            };
            if node == next {
                self.nodes.push(Node::default());
            }
        }
        let target = &mut self.nodes[node];
        let ends = if at_multi { &mut target.multi } else { &mut target.ends };
        let verb = binding.template.verb.as_deref();
        let end = match ends.iter().position(|e| e.verb_is(verb)) {
            Some(i) => &mut ends[i],
            None => {
                ends.push(End {
                    verb: verb.map(Into::into),
                    routes: Vec::new(),
                });
                let last = ends.len() - 1;
                &mut ends[last]
            }
        };
        if let Some(&(_, existing)) = end.routes.iter().find(|(m, _)| *m == binding.http_method) {
            return Err(existing);
        }
        end.routes.push((binding.http_method.clone(), index));
        Ok(())
    }

    /// Matches a request. `path` is the request target's path; anything from
    /// `?` on is ignored.
    pub(crate) fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let request = match Request::parse(path) {
            Ok(request) => request,
            Err(why) => return Lookup::BadPath(why),
        };
        let found = self.walk(0, 0, &request, &mut |end, with_verb| match end.route_for(method) {
            Some(index) => ControlFlow::Break((index, with_verb)),
            None => ControlFlow::Continue(()),
        });
        if let ControlFlow::Break((index, with_verb)) = found
            && let Some(binding) = self.bindings.get(index)
        {
            return match request.variables(&binding.template, with_verb) {
                Ok(variables) => Lookup::Found { binding, variables },
                Err(NotUtf8) => Lookup::BadPath("path is not UTF-8 once percent-decoded".into()),
            };
        }
        let mut allowed: Vec<Method> = Vec::new();
        let _ = self.walk(0, 0, &request, &mut |end, _| {
            for (m, _) in &end.routes {
                if !allowed.contains(m) {
                    allowed.push(m.clone());
                }
            }
            ControlFlow::<()>::Continue(())
        });
        if allowed.is_empty() {
            return Lookup::NotFound;
        }
        allowed.sort_by(|a, b| (method_rank(a), a.as_str()).cmp(&(method_rank(b), b.as_str())));
        Lookup::MethodNotAllowed { allowed }
    }

    /// Depth-first over the trie from `node` at request segment `i`, in
    /// precedence order (literal, then `*`, then `**`; a verb match before a
    /// whole-segment match), calling `visit` for every end that matches the
    /// whole path until it breaks. `visit` gets whether the verb was split off.
    fn walk<T>(
        &self,
        node: usize,
        i: usize,
        request: &Request<'_>,
        visit: &mut impl FnMut(&End, bool) -> ControlFlow<T>,
    ) -> ControlFlow<T> {
        let Some(node) = self.nodes.get(node) else {
            return ControlFlow::Continue(());
        };
        let Some(segment) = request.segments.get(i) else {
            // The path is used up: templates ending here, and `**` matching nothing.
            for end in node.ends.iter().chain(&node.multi) {
                if end.verb.is_none() {
                    visit(end, false)?;
                }
            }
            return ControlFlow::Continue(());
        };
        let last = i + 1 == request.segments.len();
        let split = request.split.as_ref().filter(|_| last);
        let verb = split.map(|s| &*s.verb);
        // 1. A literal child: with the verb split off, then the whole segment.
        if let Some(split) = split
            && let Some(child) = node.literals.get(&*split.base).and_then(|&c| self.nodes.get(c))
        {
            visit_verb_ends(&child.ends, verb, visit)?;
        }
        if let Some(&child) = node.literals.get(&*segment.decoded) {
            self.walk(child, i + 1, request, visit)?;
        }
        // 2. The `*` child (never an empty segment).
        if let Some(child) = node.single {
            if let Some(split) = split
                && !split.base.is_empty()
                && let Some(child) = self.nodes.get(child)
            {
                visit_verb_ends(&child.ends, verb, visit)?;
            }
            if !segment.raw.is_empty() {
                self.walk(child, i + 1, request, visit)?;
            }
        }
        // 3. `**`: the rest of the path, with the verb split off the last
        //    segment (wherever that is), then without.
        let last_verb = request.split.as_ref().map(|s| &*s.verb);
        visit_verb_ends(&node.multi, last_verb, visit)?;
        for end in node.multi.iter().filter(|e| e.verb.is_none()) {
            visit(end, false)?;
        }
        ControlFlow::Continue(())
    }
}

impl<'p> Request<'p> {
    /// Splits and checks a path: it must start with `/`, every `%` must be
    /// followed by two hex digits, and every segment must decode to UTF-8.
    fn parse(path: &'p str) -> Result<Self, String> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err("at byte 0: the path must start with \"/\"".into());
        };
        let mut segments = Vec::new();
        let mut offset = 1;
        for raw in rest.split('/') {
            if let Some(at) = template::invalid_escape(raw) {
                return Err(format!("at byte {}: invalid percent-encoding", offset + at));
            }
            let decoded = template::decode(raw, false)
                .map_err(|NotUtf8| format!("at byte {offset}: the segment is not UTF-8 once percent-decoded"))?;
            segments.push(PathSegment { raw, decoded });
            offset += raw.len() + 1;
        }
        let split = segments.last().and_then(|last| {
            let (base_raw, verb_raw) = last.raw.rsplit_once(':')?;
            Some(VerbSplit {
                base_raw,
                base: template::decode(base_raw, false).ok()?,
                verb: template::decode(verb_raw, false).ok()?,
            })
        });
        Ok(Request { segments, split })
    }

    /// The values of a matched template's variables: one segment fully
    /// decoded, several (or `**`) decoded except `%2F`.
    fn variables(&self, template: &PathTemplate, with_verb: bool) -> Result<Vec<(String, String)>, NotUtf8> {
        let n = self.segments.len();
        let raw = |j: usize| match (&self.split, self.segments.get(j)) {
            (Some(split), _) if with_verb && j + 1 == n => split.base_raw,
            (_, Some(segment)) => segment.raw,
            (_, None) => "",
        };
        let mut out = Vec::with_capacity(template.variables.len());
        for variable in &template.variables {
            let end = variable.end.unwrap_or(n).min(n);
            let value = if variable.is_single_segment() {
                template::decode(raw(variable.start), false)?.into_owned()
            } else {
                let mut value = String::new();
                for j in variable.start..end {
                    if j > variable.start {
                        value.push('/');
                    }
                    value.push_str(&template::decode(raw(j), true)?);
                }
                value
            };
            out.push((variable.field_name(), value));
        }
        Ok(out)
    }
}

/// Visits the ends whose verb is `verb` (none when there is no verb).
fn visit_verb_ends<T>(
    ends: &[End],
    verb: Option<&str>,
    visit: &mut impl FnMut(&End, bool) -> ControlFlow<T>,
) -> ControlFlow<T> {
    if verb.is_some() {
        for end in ends.iter().filter(|e| e.verb_is(verb)) {
            visit(end, true)?;
        }
    }
    ControlFlow::Continue(())
}

/// Sort order of HTTP methods: GET, PUT, POST, DELETE, PATCH (http.proto's
/// order), then custom methods by name, `*` last.
pub(crate) fn method_rank(method: &Method) -> u8 {
    match *method {
        Method::GET => 0,
        Method::PUT => 1,
        Method::POST => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        _ if method.as_str() == "*" => 6,
        _ => 5,
    }
}

/// `GET /v1/{name=books/*}: bound by a.B/GetBook and a.B/FetchBook`.
fn conflict(first: &Binding, second: &Binding) -> String {
    let method = &second.http_method;
    if first.pattern == second.pattern {
        format!(
            "{method} {}: bound by {} and {}",
            first.pattern,
            first.method_name(),
            second.method_name()
        )
    } else {
        format!(
            "{method} {}: bound by {} and, as {} (the same paths), by {}",
            first.pattern,
            first.method_name(),
            second.pattern,
            second.method_name()
        )
    }
}

impl fmt::Debug for RestRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestRouter")
            .field("bindings", &self.bindings.len())
            .field("nodes", &self.nodes.len())
            .finish()
    }
}
