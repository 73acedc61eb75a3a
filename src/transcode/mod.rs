//! JSON ⇄ protobuf for the REST front end, by the proto3 JSON mapping with
//! every well-known type (prost-reflect's serde support, driven by the
//! descriptor pool): parsing request JSON with errors that name the field
//! path, printing responses with the `transcoding.json` options, and the
//! `google.rpc.Status` error body with its details decoded.
//!
//! It only converts; it knows nothing about HTTP routes or upstreams.

pub(crate) mod fields;
mod non_finite;
pub(crate) mod wire_json;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, ReflectMessage, SerializeOptions,
    Value,
};
use serde::Serialize;

use crate::config::Transcoding;
use crate::status::{Code, Status};
use wire_json::WirePrinter;

/// One problem with one field of a request, as in `google.rpc.BadRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldViolation {
    /// Dotted field path, e.g. `book.author.birth_date` (empty for the body as a whole).
    pub(crate) field: String,
    /// What was wrong.
    pub(crate) description: String,
}

impl FieldViolation {
    pub(crate) fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.description)
        } else {
            write!(f, "{}: {}", self.field, self.description)
        }
    }
}

/// The JSON mapping with the configured options.
#[derive(Clone)]
pub(crate) struct JsonCodec {
    print: SerializeOptions,
    parse: DeserializeOptions,
    use_proto_names: bool,
    emit_unpopulated: bool,
    /// Prints encoded messages without decoding them first, where it can.
    wire: Option<Arc<WirePrinter>>,
}

impl JsonCodec {
    /// A codec that always prints through a `DynamicMessage`.
    pub(crate) fn new(options: &Transcoding) -> Self {
        Self {
            print: SerializeOptions::new()
                .use_proto_field_name(options.json.use_proto_names)
                .skip_default_fields(!options.json.emit_unpopulated)
                .use_enum_numbers(options.json.enums_as_ints),
            parse: DeserializeOptions::new().deny_unknown_fields(options.reject_unknown_fields),
            use_proto_names: options.json.use_proto_names,
            emit_unpopulated: options.json.emit_unpopulated,
            wire: None,
        }
    }

    /// A codec that prints encoded messages of `pool`'s types straight from
    /// the wire where it can (see [`wire_json`]).
    pub(crate) fn for_pool(options: &Transcoding, pool: &DescriptorPool) -> Self {
        Self {
            wire: Some(Arc::new(WirePrinter::new(pool, &options.json))),
            ..Self::new(options)
        }
    }

    /// The JSON of an encoded message of type `descriptor`, printed without
    /// decoding it; `None` when the wire printer declines it, and the caller
    /// decodes it and calls [`JsonCodec::print`].
    pub(crate) fn print_encoded(&self, descriptor: &MessageDescriptor, bytes: &[u8]) -> Option<Vec<u8>> {
        self.wire.as_deref()?.print(descriptor.full_name(), bytes)
    }

    /// [`JsonCodec::print_field`] for an encoded message, without decoding
    /// it; `None` when the wire printer declines it.
    pub(crate) fn print_encoded_field(
        &self,
        descriptor: &MessageDescriptor,
        field: &str,
        bytes: &[u8],
    ) -> Option<Vec<u8>> {
        let f = descriptor.get_field_by_name(field)?;
        self.wire
            .as_deref()?
            .print_field(descriptor.full_name(), f.number(), bytes)
    }

    /// Parses JSON into a message of type `descriptor`. Errors name the field
    /// path, prefixed with `prefix` (the body field, when the body is one field).
    pub(crate) fn parse(
        &self,
        descriptor: MessageDescriptor,
        json: &[u8],
        prefix: &str,
    ) -> Result<DynamicMessage, FieldViolation> {
        let mut deserializer = serde_json::Deserializer::from_slice(json);
        let mut track = serde_path_to_error::Track::new();
        let result = DynamicMessage::deserialize_with_options(
            descriptor,
            serde_path_to_error::Deserializer::new(&mut deserializer, &mut track),
            &self.parse,
        );
        let message = match result {
            Ok(message) => message,
            Err(error) => {
                // serde_path_to_error writes "?" for map keys it could not see.
                let mut path = track
                    .path()
                    .to_string()
                    .split('.')
                    .filter(|s| !s.is_empty() && *s != "?")
                    .collect::<Vec<_>>()
                    .join(".");
                let description = describe_json_error(&error);
                // An unknown key is not on the tracked path yet: name it.
                if let Some(name) = description
                    .strip_prefix("unrecognized field name '")
                    .and_then(|rest| rest.split_once('\'').map(|(name, _)| name))
                {
                    path = join_path(&path, name);
                }
                let field = join_path(prefix, &path);
                return Err(FieldViolation::new(field, description));
            }
        };
        deserializer
            .end()
            .map_err(|e| FieldViolation::new(prefix, format!("unexpected data after the JSON value ({e})")))?;
        Ok(message)
    }

    /// Prints a message as JSON.
    pub(crate) fn print(&self, message: &DynamicMessage) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        let mut serializer = serde_json::Serializer::new(&mut out);
        // Serializing a dynamic message into memory cannot fail: every value
        // has a JSON form (non-finite floats print as strings).
        if let Err(e) = non_finite::serialize(&WithOptions(message, &self.print), &mut serializer) {
            tracing::error!(error = %e, "could not print a message as JSON");
        }
        out
    }

    /// Prints one field of a message (`response_body`), by its proto name.
    ///
    /// A singular message field prints as any message does (fields at their
    /// default left out). Any other field prints even at its default (`""`,
    /// `0`, `[]`): it is the whole body. It is printed alone in an otherwise
    /// empty message and taken out of the result; messages inside it print
    /// as they do in the whole message (their defaults only with
    /// `emit_unpopulated`).
    pub(crate) fn print_field(&self, message: &DynamicMessage, field: &str) -> Vec<u8> {
        let Some(f) = message.descriptor().get_field_by_name(field) else {
            return b"null".to_vec();
        };
        let value = message.get_field(&f);
        if !f.is_list()
            && !f.is_map()
            && let Value::Message(inner) = value.as_ref()
        {
            return self.print(inner);
        }
        let holds_messages = match f.kind() {
            Kind::Message(entry) if f.is_map() => matches!(entry.map_entry_value_field().kind(), Kind::Message(_)),
            kind => matches!(kind, Kind::Message(_)),
        };
        let mut alone = DynamicMessage::new(message.descriptor());
        alone.set_field(&f, value.into_owned());
        // The field itself prints even at its default; messages inside it
        // print as they would in the whole message.
        let options = self
            .print
            .clone()
            .skip_default_fields(holds_messages && !self.emit_unpopulated);
        // Printed as text and the field's value taken out as text: a
        // `serde_json::Value` would print a float as the double it widens to.
        let mut printed = Vec::with_capacity(128);
        if non_finite::serialize(
            &WithOptions(&alone, &options),
            &mut serde_json::Serializer::new(&mut printed),
        )
        .is_err()
        {
            return b"null".to_vec();
        }
        let key = if self.use_proto_names { f.name() } else { f.json_name() };
        let fields: std::collections::HashMap<String, Box<serde_json::value::RawValue>> =
            serde_json::from_slice(&printed).unwrap_or_default();
        match fields.get(key) {
            Some(selected) => selected.get().as_bytes().to_vec(),
            // Left out at its default (only when it holds messages).
            None if f.is_map() => b"{}".to_vec(),
            None => b"[]".to_vec(),
        }
    }
}

/// A message and its print options, as one `Serialize` value.
struct WithOptions<'a>(&'a DynamicMessage, &'a SerializeOptions);

impl Serialize for WithOptions<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_with_options(serializer, self.1)
    }
}

fn join_path(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// serde_json's message without its own position suffix when a path says more.
fn describe_json_error(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let text = error.to_string();
    match error.classify() {
        Category::Syntax | Category::Eof => format!("malformed JSON: {text}"),
        Category::Data | Category::Io => text,
    }
}

/// The REST error body: `{"code":…, "message":…, "details":[…]}`, with the
/// details of `grpc-status-details-bin` decoded through the pool.
pub(crate) fn status_json(status: &Status, pool: &DescriptorPool, codec: &JsonCodec) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        code: i32,
        message: &'a str,
        details: Vec<serde_json::Value>,
    }
    let details = status
        .details
        .as_ref()
        .map(|raw| decode_details(raw, pool, codec))
        .unwrap_or_default();
    serde_json::to_vec(&Body {
        code: status.code.as_i32(),
        message: &status.message,
        details,
    })
    .unwrap_or_default()
}

/// Decodes the `details` of an encoded `google.rpc.Status`; a detail whose
/// type the pool does not know is kept as `{"@type", "value": base64}`.
fn decode_details(raw: &Bytes, pool: &DescriptorPool, codec: &JsonCodec) -> Vec<serde_json::Value> {
    #[derive(Clone, PartialEq, Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
        #[prost(message, repeated, tag = "3")]
        details: Vec<prost_types::Any>,
    }
    let Ok(decoded) = RpcStatus::decode(raw.clone()) else {
        return Vec::new();
    };
    decoded
        .details
        .iter()
        .map(|any| {
            let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
            let known = pool
                .get_message_by_name(type_name)
                .and_then(|desc| DynamicMessage::decode(desc, any.value.as_slice()).ok());
            match known {
                Some(message) => {
                    let mut value: serde_json::Value =
                        serde_json::from_slice(&codec.print(&message)).unwrap_or_default();
                    if let serde_json::Value::Object(map) = &mut value {
                        map.insert("@type".into(), any.type_url.clone().into());
                    }
                    value
                }
                None => {
                    use base64::Engine;
                    serde_json::json!({
                        "@type": any.type_url,
                        "value": base64::engine::general_purpose::STANDARD.encode(&any.value),
                    })
                }
            }
        })
        .collect()
}

/// A 400 status with a `google.rpc.BadRequest` detail listing the violations.
pub(crate) fn bad_request(violations: &[FieldViolation]) -> Status {
    #[derive(Clone, PartialEq, Message)]
    struct Violation {
        #[prost(string, tag = "1")]
        field: String,
        #[prost(string, tag = "2")]
        description: String,
    }
    #[derive(Clone, PartialEq, Message)]
    struct BadRequest {
        #[prost(message, repeated, tag = "1")]
        field_violations: Vec<Violation>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
        #[prost(message, repeated, tag = "3")]
        details: Vec<prost_types::Any>,
    }
    let message = violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let detail = BadRequest {
        field_violations: violations
            .iter()
            .map(|v| Violation {
                field: v.field.clone(),
                description: v.description.clone(),
            })
            .collect(),
    };
    let encoded = RpcStatus {
        code: Code::InvalidArgument.as_i32(),
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.BadRequest".into(),
            value: detail.encode_to_vec(),
        }],
    };
    Status {
        code: Code::InvalidArgument,
        message,
        details: Some(Bytes::from(encoded.encode_to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use prost_reflect::{DescriptorPool, Value};

    use super::*;

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(&include_bytes!("../../descriptors/testing.binpb")[..]).unwrap()
    }

    #[test]
    fn doubles_survive_printing_and_parsing_exactly() {
        // Found by fuzzing (fuzz/fuzz_targets/json_transcode.rs): serde_json
        // parsed some decimals one unit in the last place off, so a double
        // printed as JSON came back as a different double, and a client's
        // number was not the nearest double to what it sent.
        let pool = pool();
        let codec = JsonCodec::new(&Transcoding::default());
        let value = pool.get_message_by_name("google.protobuf.Value").unwrap();
        for text in [
            "444444444444444440000000000000000000000001554303275",
            "4.444444444444444e+50",
            "4.4444444444444435e+50",
            "2.2250738585072011e-308",
            "1.7976931348623157e308",
            "0.1",
        ] {
            let expected: f64 = text.parse().unwrap();
            let message = codec.parse(value.clone(), text.as_bytes(), "").unwrap();
            let number = message.get_field_by_name("number_value").unwrap();
            assert_eq!(number.as_f64(), Some(expected), "{text}");
            let printed = codec.print(&message);
            let again = codec.parse(value.clone(), &printed, "").unwrap();
            assert_eq!(
                again.get_field_by_name("number_value").unwrap().as_f64(),
                Some(expected),
                "{text}"
            );
        }
        let all = pool.get_message_by_name("testing.rest.v1.AllTypes").unwrap();
        let message = codec.parse(all, br#"{"d": 4.444444444444444e+50}"#, "").unwrap();
        assert_eq!(
            message.get_field_by_name("d").as_deref(),
            Some(&Value::F64(4.444444444444444e50))
        );
    }
}
