//! The REST front end: `google.api.http` (HttpRule) bindings turned into
//! gRPC calls and back. It owns no sockets; the JSON mapping itself lives in
//! `transcode`.
//!
//! - `template`: parsing path templates, and the percent-encoding rules.
//! - `rules`: reading HttpRule annotations into bindings and validating them
//!   against the methods' messages.
//! - `router`: the segment trie, lookups, and the binding list in route order.
//! - `handler`: a matched request → the request message (body, path
//!   variables, query parameters), HTTP headers → gRPC metadata, the call.
//! - `query`: query-string parsing.
//! - `response`: unary answers and the error body.
//! - `stream`: server streams (NDJSON, SSE) and client streams (NDJSON or a
//!   JSON array in, messages out), with `json_split` finding message boundaries.
//!
//! # Matching
//!
//! A request's path (anything from `?` on ignored) is split at `/` into
//! segments; a bad `%` escape, or a segment that does not decode to UTF-8, is
//! a bad path (400) naming the byte offset. Only bindings of the request's
//! HTTP method take part (a `custom { kind: "*" }` binding takes every
//! method); among them precedence is decided segment by segment, left to
//! right:
//!
//! 1. a literal segment beats `*`, which beats `**`; when a branch fails
//!    deeper down, the next one at the same segment is tried (backtracking),
//!    so `/v1/shelves/{s}/books` and `/v1/{parent=*}/x` both keep working;
//! 2. `*` matches exactly one non-empty segment; `**` matches the rest of the
//!    path, zero or more segments;
//! 3. a verb is split off the last segment (at its last `:`; an escaped
//!    `%3A` never splits) only for templates with a verb, and a template
//!    whose verb matches beats one matching the whole segment at the same
//!    branch. So `/v1/{name=orders/*}:watch` takes `/v1/orders/1:watch`,
//!    while `/v1/{name=orders/*}` still takes `/v1/orders/1` (and
//!    `/v1/orders/1:other`, with the colon kept in `name`).
//!
//! If no binding of the request's method matches but one of another method
//! does, the answer is 405 with those methods in `Allow`; otherwise 404.
//! Each trie node is visited at most once per lookup.
//!
//! Path variables are percent-decoded by http.proto's rules: a variable
//! covering one segment is fully decoded; one covering several segments (or
//! `**`) is decoded except `%2F`, which stays encoded so the segments can be
//! told apart.

mod handler;
pub(crate) mod json_split;
pub(crate) mod query;
mod response;
pub(crate) mod router;
mod rules;
mod stream;
pub(crate) mod template;

pub(crate) use handler::{RestFrontEnd, handle};

#[cfg(test)]
mod router_tests;
#[cfg(test)]
mod rules_tests;
#[cfg(test)]
mod template_tests;
