//! Reading `google.api.http` annotations (HttpRule) into REST bindings, and
//! checking each against its method's messages before anything is served.
//!
//! Every binding of every method is taken, `additional_bindings` too; a
//! method without the annotation gets `POST /pkg.Service/Method` with
//! `body: "*"`. A problem is reported as one line naming the method, the
//! binding and what is wrong:
//! `library.v1.Library/GetBook: GET /v1/{nme=books/*}: path variable "nme": no field "nme" in library.v1.GetBookRequest`.
//! Conflicts between bindings are found when the trie is built (`router`).

use std::sync::Arc;

use http::Method;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, Value};

use super::router::{Binding, BodyRule};
use super::template;
use crate::descriptors::{MethodInfo, Registry};

/// Messages that have a string form and so may fill a path variable.
const STRING_FORM_MESSAGES: &[&str] = &[
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
];

/// The five HttpRule fields that name a standard HTTP method.
const STANDARD: [(&str, Method); 5] = [
    ("get", Method::GET),
    ("put", Method::PUT),
    ("post", Method::POST),
    ("delete", Method::DELETE),
    ("patch", Method::PATCH),
];

/// Every binding of every method in `registry`, in declaration order, and a
/// line per problem found.
pub(super) fn bindings(registry: &Registry, pool: &DescriptorPool) -> (Vec<Binding>, Vec<String>) {
    let extension = pool.get_extension_by_name("google.api.http");
    let mut methods = registry.methods();
    methods.sort_by_key(|m| (m.descriptor.parent_service().index(), m.descriptor.index()));
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for info in methods {
        let options = info.descriptor.options();
        let rule = extension
            .as_ref()
            .filter(|ext| options.has_extension(ext))
            .map(|ext| options.get_extension(ext));
        match rule.as_deref() {
            None => {
                let fallback = RawBinding {
                    http_method: Method::POST,
                    pattern: info.path.clone(),
                    body: "*".into(),
                    response_body: String::new(),
                };
                push(info, fallback, &mut out, &mut problems);
            }
            Some(Value::Message(rule)) => {
                let mut rules = vec![(rule.clone(), true)];
                if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").as_deref() {
                    rules.extend(more.iter().filter_map(Value::as_message).map(|m| (m.clone(), false)));
                }
                for (rule, top) in rules {
                    match read_rule(&rule, top) {
                        Ok(raw) => push(info, raw, &mut out, &mut problems),
                        Err(why) => problems.push(format!("{}: {why}", name(info))),
                    }
                }
            }
            Some(_) => problems.push(format!("{}: the google.api.http option is not an HttpRule", name(info))),
        }
    }
    (out, problems)
}

/// An HttpRule's fields, before the template is parsed.
struct RawBinding {
    http_method: Method,
    pattern: String,
    body: String,
    response_body: String,
}

fn name(info: &MethodInfo) -> &str {
    info.path.trim_start_matches('/')
}

fn string_field(rule: &DynamicMessage, field: &str) -> String {
    rule.get_field_by_name(field)
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The method, pattern, body and response body of one HttpRule.
fn read_rule(rule: &DynamicMessage, top: bool) -> Result<RawBinding, String> {
    let standard = STANDARD
        .iter()
        .find(|(field, _)| rule.has_field_by_name(field))
        .map(|(field, method)| (method.clone(), string_field(rule, field)));
    let (http_method, pattern) = match standard {
        Some(found) => found,
        None if rule.has_field_by_name("custom") => {
            let custom = rule.get_field_by_name("custom");
            let custom = custom.as_deref().and_then(Value::as_message);
            let (kind, path) = custom
                .map(|c| (string_field(c, "kind"), string_field(c, "path")))
                .unwrap_or_default();
            let method = Method::from_bytes(kind.as_bytes())
                .map_err(|_| format!("google.api.http custom kind \"{kind}\" is not an HTTP method"))?;
            (method, path)
        }
        None => {
            return Err("google.api.http sets no pattern (get, put, post, delete, patch or custom)".into());
        }
    };
    if !top
        && rule
            .get_field_by_name("additional_bindings")
            .is_some_and(|v| v.as_list().is_some_and(|l| !l.is_empty()))
    {
        return Err(format!(
            "{http_method} {pattern}: additional_bindings may not have additional_bindings of their own"
        ));
    }
    Ok(RawBinding {
        http_method,
        pattern,
        body: string_field(rule, "body"),
        response_body: string_field(rule, "response_body"),
    })
}

/// Parses and checks one binding; adds it or a problem.
fn push(info: &Arc<MethodInfo>, raw: RawBinding, out: &mut Vec<Binding>, problems: &mut Vec<String>) {
    let at = format!("{}: {} {}", name(info), raw.http_method, raw.pattern);
    match check(info, raw) {
        Ok(binding) => out.push(binding),
        Err(why) => problems.push(format!("{at}: {why}")),
    }
}

fn check(info: &Arc<MethodInfo>, raw: RawBinding) -> Result<Binding, String> {
    let template = template::parse(&raw.pattern).map_err(|e| format!("bad path template: {e}"))?;
    let input = info.descriptor.input();
    for variable in &template.variables {
        path_field(&input, &variable.field_path)
            .map_err(|why| format!("path variable \"{}\": {why}", variable.field_name()))?;
    }
    let body = match raw.body.as_str() {
        "" => BodyRule::None,
        "*" => BodyRule::Whole,
        field => {
            top_level_field(&input, field).map_err(|why| format!("body \"{field}\": {why}"))?;
            BodyRule::Field(field.to_string())
        }
    };
    if body != BodyRule::None && matches!(raw.http_method, Method::GET | Method::DELETE) {
        return Err(format!(
            "a {} binding cannot have a body (body: \"{}\")",
            raw.http_method, raw.body
        ));
    }
    let response_body = match raw.response_body.as_str() {
        "" => None,
        field => {
            top_level_field(&info.descriptor.output(), field)
                .map_err(|why| format!("response_body \"{field}\": {why}"))?;
            Some(field.to_string())
        }
    };
    Ok(Binding {
        http_method: raw.http_method,
        pattern: raw.pattern,
        template,
        body,
        response_body,
        method: Arc::clone(info),
    })
}

/// A path variable's field: every step a singular field, the inner ones
/// messages, the last one a scalar, an enum or a message with a string form.
fn path_field(input: &MessageDescriptor, path: &[String]) -> Result<(), String> {
    let mut message = input.clone();
    for (k, name) in path.iter().enumerate() {
        let field = message
            .get_field_by_name(name)
            .ok_or_else(|| format!("no field \"{name}\" in {}", message.full_name()))?;
        let full = format!("{}.{name}", message.full_name());
        if field.is_map() {
            return Err(format!("{full} is a map"));
        }
        if field.is_list() {
            return Err(format!("{full} is repeated"));
        }
        let last = k + 1 == path.len();
        match field.kind() {
            Kind::Message(inner) if !last => message = inner,
            Kind::Message(inner) if !STRING_FORM_MESSAGES.contains(&inner.full_name()) => {
                return Err(format!(
                    "{full} is a message ({}); a path variable must name a scalar, an enum, a wrapper, Timestamp, Duration or FieldMask",
                    inner.full_name()
                ));
            }
            _ if !last => {
                return Err(format!(
                    "{full} is not a message, so it has no field \"{}\"",
                    path.get(k + 1).map_or("", String::as_str)
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// `body` and `response_body` name a field at the top level of their message.
fn top_level_field(message: &MessageDescriptor, field: &str) -> Result<(), String> {
    if field.contains('.') {
        return Err(format!("must name a top-level field of {}", message.full_name()));
    }
    match message.get_field_by_name(field) {
        Some(_) => Ok(()),
        None => Err(format!("no field \"{field}\" in {}", message.full_name())),
    }
}
