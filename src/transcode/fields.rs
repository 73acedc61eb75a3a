//! Setting message fields from text: the values of REST path variables and
//! query parameters. A dotted path (`book.author.name`, JSON or proto field
//! names) is resolved against the descriptor; the text is converted by the
//! leaf field's type — every scalar, enums by name or number, bytes as
//! standard or URL-safe base64, and the well-known types that have a text
//! form (Timestamp, Duration, FieldMask, the wrappers). Maps and repeated
//! messages cannot be set this way and say so.

use base64::Engine;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value};

use super::FieldViolation;

/// Resolves a dotted path to the chain of field descriptors it names.
pub(crate) fn resolve_path(message: &MessageDescriptor, path: &str) -> Result<Vec<FieldDescriptor>, FieldViolation> {
    let mut fields = Vec::new();
    let mut current = message.clone();
    let segments: Vec<&str> = path.split('.').collect();
    for (i, segment) in segments.iter().enumerate() {
        let field = current
            .get_field_by_name(segment)
            .or_else(|| current.get_field_by_json_name(segment))
            .ok_or_else(|| FieldViolation::new(path, format!("{} has no field \"{segment}\"", current.full_name())))?;
        let last = i + 1 == segments.len();
        if !last {
            match field.kind() {
                Kind::Message(inner) if !field.is_list() && !field.is_map() && !has_text_form(&inner) => {
                    current = inner;
                }
                _ => {
                    return Err(FieldViolation::new(
                        path,
                        format!(
                            "\"{}\" is not a message field, so it has no field \"{}\"",
                            field.name(),
                            segments[i + 1]
                        ),
                    ));
                }
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

/// Sets the field at `path` from `values` (several only for repeated fields).
pub(crate) fn set_from_text(message: &mut DynamicMessage, path: &str, values: &[&str]) -> Result<(), FieldViolation> {
    let fields = resolve_path(&message.descriptor(), path)?;
    let Some((leaf, parents)) = fields.split_last() else {
        return Err(FieldViolation::new(path, "empty field path"));
    };
    if leaf.is_map() {
        return Err(FieldViolation::new(
            path,
            "map fields cannot be set from a path or query parameter; send them in the body",
        ));
    }
    if leaf.is_list() && matches!(leaf.kind(), Kind::Message(ref m) if !has_text_form(m)) {
        return Err(FieldViolation::new(
            path,
            "repeated message fields cannot be set from a path or query parameter; send them in the body",
        ));
    }
    if !leaf.is_list() && values.len() > 1 {
        return Err(FieldViolation::new(
            path,
            format!("given {} times, but the field is not repeated", values.len()),
        ));
    }
    let mut target = message;
    for parent in parents {
        let value = target.get_field_mut(parent);
        target = match value {
            Value::Message(inner) => inner,
            _ => {
                return Err(FieldViolation::new(
                    path,
                    format!("\"{}\" is not a message field", parent.name()),
                ));
            }
        };
    }
    let converted = values
        .iter()
        .map(|text| parse_value(&leaf.kind(), text).map_err(|why| FieldViolation::new(path, why)))
        .collect::<Result<Vec<_>, _>>()?;
    if leaf.is_list() {
        match target.get_field_mut(leaf) {
            Value::List(list) => list.extend(converted),
            _ => return Err(FieldViolation::new(path, "not a list")),
        }
    } else if let Some(value) = converted.into_iter().next() {
        target.set_field(leaf, value);
    }
    Ok(())
}

/// Whether a message type has a text form (and so can be a path or query leaf).
pub(crate) fn has_text_form(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

/// Converts text to a field value of `kind`, explaining what was expected.
pub(crate) fn parse_value(kind: &Kind, text: &str) -> Result<Value, String> {
    let expected = |what: &str| format!("expected {what}, got \"{}\"", shorten(text));
    Ok(match kind {
        Kind::Double => Value::F64(parse_float(text).ok_or_else(|| expected("a number"))?),
        Kind::Float => Value::F32(parse_float(text).ok_or_else(|| expected("a number"))? as f32),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(text.parse().map_err(|_| expected("a 32-bit integer"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(text.parse().map_err(|_| expected("a 64-bit integer"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(text.parse().map_err(|_| expected("an unsigned 32-bit integer"))?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(text.parse().map_err(|_| expected("an unsigned 64-bit integer"))?),
        Kind::Bool => Value::Bool(match text {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(expected("true or false")),
        }),
        Kind::String => Value::String(text.to_string()),
        Kind::Bytes => Value::Bytes(
            decode_base64(text)
                .ok_or_else(|| expected("base64 (standard or URL-safe)"))?
                .into(),
        ),
        Kind::Enum(enum_desc) => {
            if let Some(value) = enum_desc.get_value_by_name(text) {
                Value::EnumNumber(value.number())
            } else if let Ok(number) = text.parse::<i32>() {
                Value::EnumNumber(number)
            } else {
                let names: Vec<_> = enum_desc.values().map(|v| v.name().to_string()).take(20).collect();
                return Err(format!(
                    "\"{}\" is not a value of {}; expected one of {} or a number",
                    shorten(text),
                    enum_desc.full_name(),
                    names.join(", ")
                ));
            }
        }
        Kind::Message(message) => Value::Message(parse_message_text(message, text)?),
    })
}

fn parse_message_text(message: &MessageDescriptor, text: &str) -> Result<DynamicMessage, String> {
    let name = message.full_name();
    if let Some(inner) = name
        .strip_prefix("google.protobuf.")
        .filter(|n| n.ends_with("Value") && *n != "Value")
    {
        let _ = inner;
        let field = message
            .get_field_by_name("value")
            .ok_or_else(|| format!("{name} has no value field"))?;
        let mut wrapper = DynamicMessage::new(message.clone());
        wrapper.set_field(&field, parse_value(&field.kind(), text)?);
        return Ok(wrapper);
    }
    let what = match name {
        "google.protobuf.Timestamp" => "an RFC 3339 time such as 2024-05-01T12:00:00Z",
        "google.protobuf.Duration" => "a duration in seconds such as 1.5s",
        "google.protobuf.FieldMask" => "comma-separated field paths such as title,author.name",
        _ => {
            return Err(format!(
                "a message of type {name} cannot be given as text; send it in the request body"
            ));
        }
    };
    let json = serde_json::Value::String(text.to_string());
    DynamicMessage::deserialize(message.clone(), json)
        .map_err(|_| format!("expected {what}, got \"{}\"", shorten(text)))
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        // Rust also accepts "inf" and "nan"; the JSON mapping does not.
        _ if text.chars().any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') => None,
        _ => text.parse().ok(),
    }
}

/// Standard or URL-safe base64, padded or not.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = text.trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .ok()
}

fn shorten(text: &str) -> String {
    if text.chars().count() > 64 {
        format!("{}…", text.chars().take(64).collect::<String>())
    } else {
        text.to_string()
    }
}
