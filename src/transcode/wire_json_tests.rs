//! The wire printer against the `DynamicMessage` path: hand-picked cases,
//! then random messages of a type with every kind of field, encoded
//! canonically and then reshuffled, repeated and corrupted the ways a
//! backend's encoder may (or may not) write them.

use std::collections::HashMap;

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, Value};

use super::*;
use crate::config::{JsonOptions, Transcoding};
use crate::transcode::JsonCodec;

const PROTO: &str = r#"
syntax = "proto3";
package wire.test;
import "google/protobuf/timestamp.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/wrappers.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/any.proto";
import "google/protobuf/field_mask.proto";

enum Kind {
  option allow_alias = true;
  KIND_UNSPECIFIED = 0;
  BOOK = 1;
  VOLUME = 1;
  FILM = 2;
}

message Every {
  double d = 1; float f = 2; int32 i32 = 3; int64 i64 = 4; uint32 u32 = 5; uint64 u64 = 6;
  sint32 s32 = 7; sint64 s64 = 8; fixed32 fx32 = 9; fixed64 fx64 = 10; sfixed32 sfx32 = 11;
  sfixed64 sfx64 = 12; bool flag = 13; string text = 14; bytes raw = 15; Kind kind = 16;
  repeated double ds = 17; repeated float fs = 18; repeated int32 i32s = 19; repeated int64 i64s = 20;
  repeated uint32 u32s = 21; repeated uint64 u64s = 22; repeated sint32 s32s = 23;
  repeated sint64 s64s = 24; repeated fixed32 fx32s = 25; repeated fixed64 fx64s = 26;
  repeated sfixed32 sfx32s = 27; repeated sfixed64 sfx64s = 28; repeated bool flags = 29;
  repeated string texts = 30; repeated bytes raws = 31; repeated Kind kinds = 32;
  Every child = 33; repeated Every children = 34;
  map<string, Every> by_name = 35; map<int32, string> by_i32 = 36; map<int64, Kind> by_i64 = 37;
  map<uint32, bytes> by_u32 = 38; map<uint64, double> by_u64 = 39; map<sint32, int64> by_s32 = 40;
  map<sint64, bool> by_s64 = 41; map<fixed32, float> by_fx32 = 42; map<fixed64, uint64> by_fx64 = 43;
  map<sfixed32, sint32> by_sfx32 = 44; map<sfixed64, google.protobuf.Timestamp> by_sfx64 = 45;
  map<bool, google.protobuf.Int64Value> by_flag = 46;
  google.protobuf.Timestamp when = 47; google.protobuf.Duration wait = 48;
  google.protobuf.DoubleValue w_d = 49; google.protobuf.FloatValue w_f = 50;
  google.protobuf.Int64Value w_i64 = 51; google.protobuf.UInt64Value w_u64 = 52;
  google.protobuf.Int32Value w_i32 = 53; google.protobuf.UInt32Value w_u32 = 54;
  google.protobuf.BoolValue w_flag = 55; google.protobuf.StringValue w_text = 56;
  google.protobuf.BytesValue w_raw = 57;
  google.protobuf.Empty empty = 58; google.protobuf.NullValue nothing = 59;
  oneof choice { string pick_text = 60; Every pick_child = 61; int32 pick_number = 62; }
  optional int32 maybe_i32 = 63; optional string maybe_text = 64; optional Kind maybe_kind = 65;
  repeated google.protobuf.Timestamp whens = 66; repeated google.protobuf.Duration waits = 67;
  google.protobuf.Struct object = 68;
  string name_with_Caps_and_under_score = 69;
  repeated Kind unpacked_kinds = 70 [packed = false];
  google.protobuf.Value value = 71; google.protobuf.ListValue list = 72;
  google.protobuf.Any any = 73; repeated google.protobuf.Any anys = 74;
  google.protobuf.FieldMask mask = 75;
}
"#;

fn pool() -> DescriptorPool {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("every.proto"), PROTO).unwrap();
    let files = protox::compile(["every.proto"], [dir.path()]).unwrap();
    DescriptorPool::from_file_descriptor_set(files).unwrap()
}

fn every(pool: &DescriptorPool) -> MessageDescriptor {
    pool.get_message_by_name("wire.test.Every").unwrap()
}

fn options(bits: u8) -> JsonOptions {
    JsonOptions {
        use_proto_names: bits & 1 != 0,
        enums_as_ints: bits & 2 != 0,
        emit_unpopulated: bits & 4 != 0,
    }
}

/// What the `DynamicMessage` path prints for `bytes`, if it decodes.
fn reference(codec: &JsonCodec, descriptor: &MessageDescriptor, bytes: &[u8]) -> Option<String> {
    let message = DynamicMessage::decode(descriptor.clone(), bytes).ok()?;
    Some(String::from_utf8(codec.print(&message)).unwrap())
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Both paths agree on `bytes`; returns whether the wire printer printed it.
fn agree(printer: &WirePrinter, codec: &JsonCodec, descriptor: &MessageDescriptor, bytes: &[u8]) -> bool {
    let Some(fast) = printer.print(descriptor.full_name(), bytes) else {
        return false;
    };
    let fast = String::from_utf8(fast).expect("the wire printer wrote UTF-8");
    let Some(slow) = reference(codec, descriptor, bytes) else {
        panic!("printed {fast} from bytes the DynamicMessage path rejects: {bytes:02x?}");
    };
    // Maps print sorted here and in hash order there: compare as values,
    // and as text when order cannot differ.
    assert_eq!(json(&fast), json(&slow), "bytes {bytes:02x?}");
    if !slow.contains("\"by") {
        assert_eq!(fast, slow, "bytes {bytes:02x?}");
    }
    true
}

/// The same for one field (`response_body`); returns whether it was printed.
fn agree_on_field(
    printer: &WirePrinter,
    codec: &JsonCodec,
    descriptor: &MessageDescriptor,
    bytes: &[u8],
    field: &str,
) -> bool {
    let f = descriptor.get_field_by_name(field).unwrap();
    let Some(fast) = printer.print_field(descriptor.full_name(), f.number(), bytes) else {
        return false;
    };
    let fast = String::from_utf8(fast).expect("the wire printer wrote UTF-8");
    let Ok(message) = DynamicMessage::decode(descriptor.clone(), bytes) else {
        panic!("printed {field} = {fast} from bytes the DynamicMessage path rejects: {bytes:02x?}");
    };
    let slow = String::from_utf8(codec.print_field(&message, field)).unwrap();
    assert_eq!(json(&fast), json(&slow), "{field} of {bytes:02x?}");
    if !f.is_map() && !slow.contains("\"by") {
        assert_eq!(fast, slow, "{field} of {bytes:02x?}");
    }
    true
}

#[test]
fn prints_what_the_dynamic_message_path_prints() {
    let pool = pool();
    let descriptor = every(&pool);
    let codec = JsonCodec::new(&Transcoding::default());
    let printer = WirePrinter::new(&pool, &JsonOptions::default());
    let mut message = DynamicMessage::new(descriptor.clone());
    let set = |m: &mut DynamicMessage, name: &str, value: Value| m.set_field_by_name(name, value);
    set(&mut message, "i64", Value::I64(-5));
    set(&mut message, "text", Value::String("é\"\n\u{1}".into()));
    set(&mut message, "raw", Value::Bytes(vec![0, 255, 7].into()));
    set(&mut message, "kind", Value::EnumNumber(1));
    set(
        &mut message,
        "kinds",
        Value::List(vec![Value::EnumNumber(2), Value::EnumNumber(9)]),
    );
    set(&mut message, "f", Value::F32(f32::NAN));
    set(
        &mut message,
        "ds",
        Value::List(vec![Value::F64(1.0), Value::F64(f64::NEG_INFINITY)]),
    );
    set(&mut message, "maybe_i32", Value::I32(0));
    set(&mut message, "nothing", Value::EnumNumber(0));
    set(
        &mut message,
        "name_with_Caps_and_under_score",
        Value::String("x".into()),
    );
    let bytes = message.encode_to_vec();
    assert!(agree(&printer, &codec, &descriptor, &bytes));
    let printed = String::from_utf8(printer.print("wire.test.Every", &bytes).unwrap()).unwrap();
    assert_eq!(
        printed,
        r#"{"f":"NaN","i64":"-5","text":"é\"\n\u0001","raw":"AP8H","kind":"BOOK","ds":[1.0,"-Infinity"],"kinds":["FILM",9],"maybeI32":0,"nameWithCapsAndUnderScore":"x"}"#
    );
}

/// A `response_body` naming a scalar, list or map: its value as the whole
/// message prints it (floats as floats, map keys sorted), or its default.
#[test]
fn a_response_body_of_any_kind_prints_its_value_or_its_default() {
    let pool = pool();
    let descriptor = every(&pool);
    let codec = JsonCodec::new(&Transcoding::default());
    let printer = WirePrinter::new(&pool, &JsonOptions::default());
    let mut message = DynamicMessage::new(descriptor.clone());
    message.set_field_by_name("fs", Value::List(vec![Value::F32(0.1), Value::F32(1e-43)]));
    let by_i32 = [(3, "c"), (-1, "a"), (20, "b")]
        .into_iter()
        .map(|(k, v)| (MapKey::I32(k), Value::String(v.into())))
        .collect();
    message.set_field_by_name("by_i32", Value::Map(by_i32));
    message.set_field_by_name("kind", Value::EnumNumber(2));
    let bytes = message.encode_to_vec();
    let field = |name: &str| {
        let number = descriptor.get_field_by_name(name).unwrap().number();
        String::from_utf8(printer.print_field("wire.test.Every", number, &bytes).unwrap()).unwrap()
    };
    assert_eq!(field("fs"), "[0.1,1e-43]");
    assert_eq!(field("by_i32"), r#"{"-1":"a","3":"c","20":"b"}"#);
    assert_eq!(field("kind"), r#""FILM""#);
    // Left out of the whole message, so printed as defaults.
    assert_eq!(field("i64"), r#""0""#);
    assert_eq!(field("text"), r#""""#);
    assert_eq!(field("maybe_kind"), r#""KIND_UNSPECIFIED""#);
    assert_eq!(field("nothing"), "null");
    assert_eq!(field("texts"), "[]");
    assert_eq!(field("by_name"), "{}");
    for name in [
        "fs",
        "by_i32",
        "kind",
        "i64",
        "text",
        "maybe_kind",
        "nothing",
        "texts",
        "by_name",
    ] {
        assert!(agree_on_field(&printer, &codec, &descriptor, &bytes, name), "{name}");
    }
}

#[test]
fn fields_out_of_order_unpacked_or_unknown_print_as_decoded() {
    let pool = pool();
    let descriptor = every(&pool);
    let codec = JsonCodec::new(&Transcoding::default());
    let printer = WirePrinter::new(&pool, &JsonOptions::default());
    let cases: &[(&str, &[u8])] = &[
        // text = "b" then i32 = 1: printed in field-number order.
        ("out of order", &[0x72, 1, b'b', 0x18, 1]),
        // i32s: 1 unpacked, then [2, 3] packed, then 4 unpacked.
        ("mixed packing", &[0x98, 1, 1, 0x9a, 1, 2, 2, 3, 0x98, 1, 4]),
        // field 1000 (unknown, varint) and field 999 (unknown, bytes) skipped.
        ("unknown fields", &[0xc0, 0x3e, 5, 0xba, 0x3e, 1, 0, 0x18, 7]),
        // i32 = 0 written explicitly: still left out.
        ("explicit default", &[0x18, 0]),
        // i32 = 1 as a two-byte varint.
        ("long varint", &[0x18, 0x81, 0x00]),
        // unpacked_kinds sent packed, which decoders must accept.
        ("packed where unpacked is declared", &[0xb2, 4, 2, 1, 2]),
        // An empty packed list is no list at all.
        ("empty packed list", &[0x9a, 1, 0]),
        // A map entry with neither key nor value.
        ("empty map entry", &[0xa2, 2, 0]),
        // by_i32: {1: "a"}, then {1: "b"}: the last wins.
        (
            "repeated map key",
            &[0xa2, 2, 5, 8, 1, 0x12, 1, b'a', 0xa2, 2, 5, 8, 1, 0x12, 1, b'b'],
        ),
        // by_name: {"": Every{i32: 1}}, then {"": Every{}}: the last wins.
        (
            "repeated map key, message values",
            &[0x9a, 2, 4, 0x12, 2, 0x18, 1, 0x9a, 2, 2, 0x12, 0],
        ),
    ];
    for (what, bytes) in cases {
        assert!(agree(&printer, &codec, &descriptor, bytes), "{what}: declined");
    }
}

#[test]
fn declines_what_only_the_dynamic_message_path_handles() {
    let pool = pool();
    let descriptor = every(&pool);
    let printer = WirePrinter::new(&pool, &JsonOptions::default());
    let cases: &[(&str, &[u8])] = &[
        ("i32 set twice", &[0x18, 1, 0x18, 2]),
        ("child set twice (merged)", &[0x8a, 2, 2, 0x18, 1, 0x8a, 2, 2, 0x20, 1]),
        ("two members of a oneof", &[0xe2, 3, 1, b'a', 0xf0, 3, 1]),
        ("a Value holding NaN", &[0xba, 4, 9, 0x11, 0, 0, 0, 0, 0, 0, 0xf8, 0x7f]),
        ("a Value with two kinds", &[0xba, 4, 4, 0x20, 1, 0x18, 0]),
        (
            "a FieldMask path with no camelCase form",
            &[0xda, 4, 6, 0x0a, 4, b'x', b'_', b'_', b'y'],
        ),
        (
            "an Any of a type not in the pool",
            &[0xca, 4, 10, 0x0a, 8, b't', b'/', b'x', b'.', b'N', b'o', b'p', b'e'],
        ),
        ("an Any URL without a slash", &[0xca, 4, 3, 0x0a, 1, b'x']),
        ("a map entry sent as a varint", &[0xa0, 2, 1]),
        // by_name: {"": <truncated Every>}, then {"": Every{}}: the first is
        // replaced, but decoding still rejects it (found by fuzzing).
        (
            "a replaced map value that is malformed",
            &[0x9a, 2, 4, 0x12, 2, 0x72, 5, 0x9a, 2, 2, 0x12, 0],
        ),
        ("text not UTF-8", &[0x72, 1, 0xff]),
        ("truncated", &[0x72, 5, b'a']),
        ("wrong wire type", &[0x1d, 0, 0, 0, 0]),
        ("a group", &[0x1b, 0x1c]),
        ("field number 0", &[0x00, 1]),
        (
            "varint too long",
            &[0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
        ),
        // seconds = 2^41 in both.
        (
            "timestamp after 9999",
            &[0xfa, 2, 7, 8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40],
        ),
        (
            "duration over 10,000 years",
            &[0x82, 3, 7, 8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40],
        ),
    ];
    for (what, bytes) in cases {
        assert!(printer.print("wire.test.Every", bytes).is_none(), "{what}: printed");
    }
    assert!(printer.print("wire.test.Nope", &[]).is_none());
    let _ = descriptor;
}

#[test]
fn nesting_deeper_than_the_decoder_allows_declines_without_overflowing() {
    let pool = pool();
    let printer = WirePrinter::new(&pool, &JsonOptions::default());
    // child { child { ... } }, 1,000 deep, each level's length prefixed.
    let mut bytes = Vec::new();
    for _ in 0..1_000 {
        let mut outer = vec![0x8a, 2];
        prost::encoding::encode_varint(bytes.len() as u64, &mut outer);
        outer.extend_from_slice(&bytes);
        bytes = outer;
    }
    assert!(printer.print("wire.test.Every", &bytes).is_none());
}

/// A small deterministic generator (xorshift), so failures reproduce; it
/// also counts the values it generated that have no JSON form.
struct Rng(u64, u32);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

fn random_value(rng: &mut Rng, kind: &Kind, depth: u32) -> Value {
    let edge = |rng: &mut Rng, values: &[u64]| values[rng.below(values.len() as u64) as usize];
    let bits = match rng.below(3) {
        0 => edge(rng, &[0, 1, u64::MAX, 1 << 31, 1 << 63, (1 << 32) - 1]),
        1 => rng.below(300),
        _ => rng.next(),
    };
    match kind {
        Kind::Double => Value::F64(match rng.below(4) {
            0 => f64::from_bits(bits),
            1 => [0.0, -0.0, 0.1, 1e300, f64::NAN, f64::INFINITY][rng.below(6) as usize],
            _ => bits as f64 / 7.0,
        }),
        Kind::Float => Value::F32(match rng.below(4) {
            0 => f32::from_bits(bits as u32),
            1 => [0.0, -0.0, 0.1, 3e38, f32::NAN, f32::NEG_INFINITY][rng.below(6) as usize],
            _ => bits as f32 / 7.0,
        }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(bits as i32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(bits as i64),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(bits as u32),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(bits),
        Kind::Bool => Value::Bool(bits & 1 == 1),
        Kind::String => Value::String(
            ["", "a", "é", "\"\\/\u{0}\u{1f}", "日本語", "x y", "\u{2028}"][rng.below(7) as usize]
                .repeat(rng.below(3) as usize + 1),
        ),
        Kind::Bytes => Value::Bytes((0..rng.below(5)).map(|_| rng.next() as u8).collect::<Vec<_>>().into()),
        Kind::Enum(_) => Value::EnumNumber([0, 1, 2, 7, -1][rng.below(5) as usize]),
        Kind::Message(m) => Value::Message(random_message(rng, m, depth + 1)),
    }
}

fn random_key(rng: &mut Rng, kind: &Kind) -> MapKey {
    match random_value(rng, kind, 0) {
        Value::Bool(v) => MapKey::Bool(v),
        Value::I32(v) => MapKey::I32(v % 4),
        Value::I64(v) => MapKey::I64(v % 4),
        Value::U32(v) => MapKey::U32(v % 4),
        Value::U64(v) => MapKey::U64(v),
        Value::String(v) => MapKey::String(v),
        other => panic!("not a key: {other:?}"),
    }
}

fn random_message(rng: &mut Rng, descriptor: &MessageDescriptor, depth: u32) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    match descriptor.full_name() {
        "google.protobuf.Timestamp" | "google.protobuf.Duration" => {
            let seconds = rng.below(20_000_000_000) as i64 - 10_000_000_000;
            let nanos = [0, 1_000_000, 1_000, 1, 999_999_999][rng.below(5) as usize];
            let nanos = if descriptor.name() == "Duration" && seconds < 0 {
                -nanos
            } else {
                nanos
            };
            message.set_field_by_name("seconds", Value::I64(seconds));
            message.set_field_by_name("nanos", Value::I32(nanos));
            return message;
        }
        "google.protobuf.Value" => {
            let (name, value) = match rng.below(8) {
                0 => ("null_value", Value::EnumNumber(0)),
                1 => ("bool_value", Value::Bool(rng.chance(2))),
                2 => ("string_value", random_value(rng, &Kind::String, depth)),
                3 if rng.chance(40) => {
                    // No JSON form: both paths refuse it.
                    rng.1 += 1;
                    ("number_value", Value::F64(f64::NAN))
                }
                3 | 4 => ("number_value", Value::F64(rng.below(1000) as f64 / 8.0 - 50.0)),
                5 if depth < 4 => (
                    "struct_value",
                    Value::Message(random_message(rng, &struct_type(descriptor), depth + 1)),
                ),
                6 if depth < 4 => (
                    "list_value",
                    Value::Message(random_message(rng, &list_type(descriptor), depth + 1)),
                ),
                _ => return message,
            };
            message.set_field_by_name(name, value);
            return message;
        }
        "google.protobuf.FieldMask" => {
            let paths = ["a", "foo_bar", "a.b_c.d", "trailing_", "x__y", "Upper", "a_1"];
            // Mostly the first four.
            let chosen: Vec<Value> = (0..rng.below(4))
                .map(|_| {
                    let choices = if rng.chance(20) { paths.len() } else { 4 };
                    Value::String(paths[rng.below(choices as u64) as usize].to_string())
                })
                .collect();
            // The last three have no lowerCamelCase form: both paths refuse them.
            if chosen
                .iter()
                .any(|p| matches!(p.as_str(), Some("x__y" | "Upper" | "a_1")))
            {
                rng.1 += 1;
            }
            message.set_field_by_name("paths", Value::List(chosen));
            return message;
        }
        "google.protobuf.Any" => {
            let types = [
                "wire.test.Every",
                "google.protobuf.Timestamp",
                "google.protobuf.Int64Value",
                "google.protobuf.Struct",
                "google.protobuf.Value",
                "google.protobuf.Empty",
                "google.protobuf.FieldMask",
                "google.protobuf.Any",
            ];
            // An empty Any has no type to print: none that deep.
            let choices = if depth < 4 { types.len() } else { types.len() - 1 };
            let name = types[rng.below(choices as u64) as usize];
            let inner = descriptor.parent_pool().get_message_by_name(name).unwrap();
            let payload = if depth < 4 {
                random_message(rng, &inner, depth + 1)
            } else {
                DynamicMessage::new(inner)
            };
            let url = format!("type.googleapis.com/{name}");
            message.set_field_by_name("type_url", Value::String(url));
            message.set_field_by_name("value", Value::Bytes(payload.encode_to_vec().into()));
            return message;
        }
        _ => {}
    }
    for field in descriptor.fields() {
        let nested = matches!(field.kind(), Kind::Message(_));
        if (nested && depth > 3) || !rng.chance(3) {
            continue;
        }
        let value = if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                unreachable!()
            };
            let (key, value) = (entry.map_entry_key_field().kind(), entry.map_entry_value_field().kind());
            let entries: HashMap<MapKey, Value> = (0..rng.below(4))
                .map(|_| (random_key(rng, &key), random_value(rng, &value, depth)))
                .collect();
            Value::Map(entries)
        } else if field.is_list() {
            Value::List(
                (0..rng.below(4))
                    .map(|_| random_value(rng, &field.kind(), depth))
                    .collect(),
            )
        } else {
            random_value(rng, &field.kind(), depth)
        };
        message.set_field(&field, value);
    }
    message
}

fn struct_type(any: &MessageDescriptor) -> MessageDescriptor {
    any.parent_pool().get_message_by_name("google.protobuf.Struct").unwrap()
}

fn list_type(any: &MessageDescriptor) -> MessageDescriptor {
    any.parent_pool()
        .get_message_by_name("google.protobuf.ListValue")
        .unwrap()
}

/// The top-level fields of an encoding, as byte ranges.
fn top_level_fields(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        read_field(bytes, &mut at).unwrap();
        ranges.push(start..at);
    }
    ranges
}

/// Rewrites a canonical encoding the ways encoders and the network may:
/// fields reordered or repeated, or bytes corrupted.
fn reshape(rng: &mut Rng, bytes: &[u8]) -> Vec<u8> {
    let mut fields = top_level_fields(bytes);
    match rng.below(4) {
        0 => {
            for i in (1..fields.len()).rev() {
                fields.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        1 if !fields.is_empty() => {
            let again = fields[rng.below(fields.len() as u64) as usize].clone();
            fields.push(again);
        }
        2 if !bytes.is_empty() => {
            let mut corrupted = bytes.to_vec();
            for _ in 0..=rng.below(3) {
                let at = rng.below(corrupted.len() as u64) as usize;
                match rng.below(3) {
                    0 => corrupted[at] = rng.next() as u8,
                    1 => corrupted.truncate(at),
                    _ => corrupted.insert(at, rng.next() as u8),
                }
                if corrupted.is_empty() {
                    break;
                }
            }
            return corrupted;
        }
        _ => {}
    }
    fields
        .iter()
        .flat_map(|range| bytes[range.clone()].iter().copied())
        .collect()
}

#[test]
fn random_messages_print_the_same_both_ways() {
    let pool = pool();
    let descriptor = every(&pool);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15, 0);
    for bits in 0..8 {
        let json = options(bits);
        let codec = JsonCodec::new(&Transcoding {
            json: json.clone(),
            ..Transcoding::default()
        });
        let printer = WirePrinter::new(&pool, &json);
        let (mut canonical_printed, mut reshaped_printed, mut fields_printed) = (0, 0, 0);
        for _ in 0..150 {
            let unprintable = rng.1;
            let bytes = random_message(&mut rng, &descriptor, 0).encode_to_vec();
            if agree(&printer, &codec, &descriptor, &bytes) {
                canonical_printed += 1;
            } else {
                let slow = reference(&codec, &descriptor, &bytes).unwrap_or_default();
                let shown: String = slow.chars().take(2000).collect();
                assert!(
                    rng.1 > unprintable,
                    "declined a canonical message, printed otherwise as {shown}"
                );
            }
            // `response_body` naming any one field.
            let fields: Vec<_> = descriptor.fields().collect();
            let field = fields[rng.below(fields.len() as u64) as usize].name();
            let printed = agree_on_field(&printer, &codec, &descriptor, &bytes, field);
            fields_printed += usize::from(printed);
            for _ in 0..4 {
                let reshaped = reshape(&mut rng, &bytes);
                agree_on_field(&printer, &codec, &descriptor, &reshaped, field);
                reshaped_printed += usize::from(agree(&printer, &codec, &descriptor, &reshaped));
            }
        }
        // About one in ten holds a value with no JSON form; half the
        // reshaped ones repeat a field or are corrupted.
        println!(
            "{canonical_printed} of 150 printed, {reshaped_printed} of 600 reshaped, {fields_printed} of 150 fields"
        );
        assert!(fields_printed > 60, "only {fields_printed} of 150 fields printed");
        assert!(canonical_printed > 100, "only {canonical_printed} of 150 printed");
        assert!(
            reshaped_printed > 200,
            "only {reshaped_printed} of 600 reshaped printed"
        );
    }
}
