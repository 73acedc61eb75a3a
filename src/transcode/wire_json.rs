//! Protobuf wire bytes → JSON in one pass, straight from the descriptors: the
//! fast path for REST responses. Printing through a `DynamicMessage` builds
//! a map of boxed values per message (and encodes and re-decodes every
//! `Timestamp`) only to walk it once; this reads each field off the wire and
//! writes its JSON at once, with plans compiled from the pool at start-up.
//!
//! It prints exactly what the `DynamicMessage` path prints for the same bytes,
//! every well-known type included (a differential test and a fuzz target
//! hold it to that, map key order aside: maps print sorted here, in hash
//! order there). For anything rare or intricate it declines, and the caller
//! takes the `DynamicMessage` path, which also reports what cannot be
//! printed: messages with extensions or groups, a singular field or oneof
//! set twice (merge semantics), a map entry with a repeated key or value, a
//! `Value` with two kinds, malformed bytes, and nesting deeper than 100;
//! and what has no JSON form: an out-of-range
//! `Timestamp` or `Duration`, a non-finite number in a `Value`, a
//! `FieldMask` path with no camelCase form, an `Any` of a type the pool
//! does not hold.

use std::collections::HashMap;
use std::io::Write as _;

use base64::Engine as _;
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};
use serde::Serializer as _;
use serde_json::ser::{CompactFormatter, Formatter as _};

use crate::config::JsonOptions;

/// As deep as `prost`'s decoder goes before it gives up.
const MAX_DEPTH: u32 = 100;
/// `google.protobuf.Timestamp`'s range: years 0001 to 9999.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;
/// `google.protobuf.Duration`'s range: ±10,000 years.
const MAX_DURATION_SECONDS: u64 = 315_576_000_000;
const MAX_DURATION_NANOS: u32 = 999_999_999;

/// The fast path gave up on this message: take the `DynamicMessage` path.
#[derive(Debug)]
struct Decline;

type Printed = Result<(), Decline>;

/// Prints encoded messages of any type in one pool as JSON.
pub(crate) struct WirePrinter {
    messages: Vec<MessagePlan>,
    enums: Vec<EnumPlan>,
    by_name: HashMap<String, u32>,
    enums_as_ints: bool,
    emit_unpopulated: bool,
}

/// How a field's values are typed on the wire and in JSON.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scalar {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    /// An index into `WirePrinter::enums`.
    Enum(u32),
    /// An index into `WirePrinter::messages`.
    Message(u32),
}

#[derive(Clone, Copy)]
enum Shape {
    Single,
    List,
    Map { key: Scalar, value: Scalar },
}

struct FieldPlan {
    number: u32,
    /// `"name":`, escaped, as the options name it.
    key: Box<[u8]>,
    scalar: Scalar,
    shape: Shape,
    /// Printed when set even at its default (proto3 `optional`, messages, oneofs, proto2).
    presence: bool,
    /// Its oneof's index in the message (at most 64 oneofs; more decline).
    oneof: Option<u8>,
}

enum MessagePlan {
    Fields(Vec<FieldPlan>),
    Timestamp,
    Duration,
    /// `google.protobuf.*Value`: the value of field 1.
    Wrapper(Scalar),
    Empty,
    FieldMask,
    /// `google.protobuf.Struct`; `value` is `google.protobuf.Value`'s index.
    Struct {
        value: u32,
    },
    /// `google.protobuf.Value`, with `Struct`'s and `ListValue`'s indexes.
    Value {
        structure: u32,
        list: u32,
    },
    /// `google.protobuf.ListValue`; `value` is `google.protobuf.Value`'s index.
    ListValue {
        value: u32,
    },
    /// `google.protobuf.Any`: the type its URL names, from the pool.
    Any,
    /// Always declined (see the module docs).
    Unsupported,
}

struct EnumPlan {
    /// (number, `"NAME"`), sorted by number.
    names: Vec<(i32, Box<[u8]>)>,
    /// `google.protobuf.NullValue` prints as `null`.
    null: bool,
}

/// One field value as read off the wire.
#[derive(Clone, Copy)]
struct Raw {
    field: u32,
    wire: u8,
    /// A varint's value, a fixed value's bits, or a length-delimited value's start.
    value: u64,
    /// A length-delimited value's length.
    len: u32,
}

/// A decoded scalar, borrowing from the message bytes.
enum Decoded<'a> {
    I32(i32),
    I64(i64),
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(&'a str),
    Bytes(&'a [u8]),
    Enum(i32),
    Message(&'a [u8]),
}

impl WirePrinter {
    /// Plans for every message in `pool`, printing with `options`.
    pub(crate) fn new(pool: &DescriptorPool, options: &JsonOptions) -> Self {
        let by_name: HashMap<String, u32> = pool
            .all_messages()
            .enumerate()
            .map(|(i, m)| (m.full_name().to_string(), i as u32))
            .collect();
        let enum_index: HashMap<String, u32> = pool
            .all_enums()
            .enumerate()
            .map(|(i, e)| (e.full_name().to_string(), i as u32))
            .collect();
        let enums = pool
            .all_enums()
            .map(|e| {
                let mut numbers: Vec<i32> = e.values().map(|v| v.number()).collect();
                numbers.sort_unstable();
                numbers.dedup();
                // Of aliases, the name the other path prints.
                let names = numbers
                    .into_iter()
                    .filter_map(|n| Some((n, quoted(e.get_value(n)?.name()))))
                    .collect();
                EnumPlan {
                    names,
                    null: e.full_name() == "google.protobuf.NullValue",
                }
            })
            .collect();
        let lookup = Lookup {
            messages: &by_name,
            enums: &enum_index,
        };
        let messages = pool
            .all_messages()
            .map(|m| plan_message(&m, &lookup, options.use_proto_names))
            .collect();
        Self {
            messages,
            enums,
            by_name,
            enums_as_ints: options.enums_as_ints,
            emit_unpopulated: options.emit_unpopulated,
        }
    }

    /// The JSON of `bytes`, an encoded `message_type`; `None` when this
    /// path declines it.
    pub(crate) fn print(&self, message_type: &str, bytes: &[u8]) -> Option<Vec<u8>> {
        let &index = self.by_name.get(message_type)?;
        let mut out = Vec::with_capacity(bytes.len() * 2 + 16);
        let mut scratch = Vec::with_capacity(32);
        self.message(index, bytes, 0, &mut scratch, &mut out).ok()?;
        Some(out)
    }

    /// The JSON of one field (field `number`) of `bytes`, an encoded
    /// `message_type`: what a `response_body` naming it sends. That is the
    /// field's value as the whole message prints it; when the whole message
    /// leaves it out, its default: a message prints as its type's empty
    /// message does, a list as `[]`, a map as `{}`, a scalar as its zero
    /// value. `None` when this path declines the message or the field.
    pub(crate) fn print_field(&self, message_type: &str, number: u32, bytes: &[u8]) -> Option<Vec<u8>> {
        let &index = self.by_name.get(message_type)?;
        let MessagePlan::Fields(plan) = &self.messages[index as usize] else {
            return None;
        };
        let at = plan.binary_search_by_key(&number, |f| f.number).ok()?;
        // Decoding checks the whole message, so this prints it all (which
        // also declines a field set twice, whose values would merge) and
        // keeps the part where the field's value landed.
        let mut scratch = Vec::with_capacity(32);
        let mut out = Vec::with_capacity(bytes.len() * 2 + 16);
        let mut capture = Capture { field: at, span: None };
        self.fields(plan, bytes, 0, &mut scratch, &mut out, Open::Brace, Some(&mut capture))
            .ok()?;
        match capture.span {
            Some(span) => {
                out.truncate(span.end);
                out.drain(..span.start);
            }
            None => {
                out.clear();
                match (plan[at].shape, plan[at].scalar) {
                    (Shape::Single, Scalar::Message(inner)) => {
                        self.message(inner, &[], 1, &mut scratch, &mut out).ok()?
                    }
                    (Shape::Single, scalar) => self
                        .value(scalar, &default_of(scalar), 1, &mut scratch, &mut out)
                        .ok()?,
                    (Shape::List, _) => out.extend_from_slice(b"[]"),
                    (Shape::Map { .. }, _) => out.extend_from_slice(b"{}"),
                }
            }
        }
        Some(out)
    }

    fn message(&self, index: u32, bytes: &[u8], depth: u32, scratch: &mut Vec<Raw>, out: &mut Vec<u8>) -> Printed {
        if depth > MAX_DEPTH {
            return Err(Decline);
        }
        match &self.messages[index as usize] {
            MessagePlan::Fields(fields) => self.fields(fields, bytes, depth, scratch, out, Open::Brace, None),
            MessagePlan::Timestamp => {
                let (seconds, nanos) = seconds_and_nanos(bytes)?;
                if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&seconds) {
                    return Err(Decline);
                }
                write_display(out, &prost_types::Timestamp { seconds, nanos });
                Ok(())
            }
            MessagePlan::Duration => {
                let (seconds, nanos) = seconds_and_nanos(bytes)?;
                if seconds.unsigned_abs() > MAX_DURATION_SECONDS || nanos.unsigned_abs() > MAX_DURATION_NANOS {
                    return Err(Decline);
                }
                write_display(out, &prost_types::Duration { seconds, nanos });
                Ok(())
            }
            MessagePlan::Wrapper(scalar) => {
                let mut value = None;
                for raw in Fields::new(bytes) {
                    let raw = raw?;
                    if raw.field == 1 {
                        value = Some(decode(*scalar, raw, bytes)?);
                    }
                }
                match value {
                    Some(value) => self.value(*scalar, &value, depth, scratch, out),
                    None => self.value(*scalar, &default_of(*scalar), depth, scratch, out),
                }
            }
            MessagePlan::Empty => {
                // Unknown fields are skipped, but must be well formed.
                for raw in Fields::new(bytes) {
                    raw?;
                }
                out.extend_from_slice(b"{}");
                Ok(())
            }
            MessagePlan::FieldMask => {
                let mut text = String::new();
                for raw in Fields::new(bytes) {
                    let raw = raw?;
                    if raw.field != 1 {
                        continue;
                    }
                    let Decoded::Str(path) = decode(Scalar::String, raw, bytes)? else {
                        return Err(Decline);
                    };
                    if !text.is_empty() {
                        text.push(',');
                    }
                    for (i, part) in path.split('.').enumerate() {
                        if i > 0 {
                            text.push('.');
                        }
                        snake_to_camel(&mut text, part)?;
                    }
                }
                let _ = write_str(out, &text);
                Ok(())
            }
            MessagePlan::Struct { value } => {
                let base = scratch.len();
                for raw in Fields::new(bytes) {
                    let raw = raw?;
                    if raw.field == 1 {
                        scratch.push(raw);
                    }
                }
                let end = scratch.len();
                let result = self.map(
                    Scalar::String,
                    Scalar::Message(*value),
                    bytes,
                    base..end,
                    depth,
                    scratch,
                    out,
                );
                scratch.truncate(base);
                result
            }
            MessagePlan::Value { structure, list } => {
                let mut kind = None;
                for raw in Fields::new(bytes) {
                    let raw = raw?;
                    // Two kinds set (or one twice, which may merge): decline.
                    if (1..=6).contains(&raw.field) && kind.replace(raw).is_some() {
                        return Err(Decline);
                    }
                }
                let Some(raw) = kind else {
                    out.extend_from_slice(b"null");
                    return Ok(());
                };
                let scalar = match raw.field {
                    1 => Scalar::Int32,
                    2 => Scalar::Double,
                    3 => Scalar::String,
                    4 => Scalar::Bool,
                    5 => Scalar::Message(*structure),
                    _ => Scalar::Message(*list),
                };
                match decode(scalar, raw, bytes)? {
                    // `null_value`, whatever its number.
                    Decoded::I32(_) => {
                        out.extend_from_slice(b"null");
                        Ok(())
                    }
                    // The JSON mapping has no form for these in a Value.
                    Decoded::F64(number) if !number.is_finite() => Err(Decline),
                    value => self.value(scalar, &value, depth, scratch, out),
                }
            }
            MessagePlan::ListValue { value } => {
                out.push(b'[');
                let mut first = true;
                for raw in Fields::new(bytes) {
                    let raw = raw?;
                    if raw.field != 1 {
                        continue;
                    }
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    let element = decode(Scalar::Message(*value), raw, bytes)?;
                    self.value(Scalar::Message(*value), &element, depth, scratch, out)?;
                }
                out.push(b']');
                Ok(())
            }
            MessagePlan::Any => self.any(bytes, depth, scratch, out),
            MessagePlan::Unsupported => Err(Decline),
        }
    }

    /// `{"@type": url, ...}`: the fields of the message the URL names, or
    /// its JSON form as `"value"` when it is a well-known type.
    fn any(&self, bytes: &[u8], depth: u32, scratch: &mut Vec<Raw>, out: &mut Vec<u8>) -> Printed {
        let (mut url, mut payload) = ("", &[][..]);
        for raw in Fields::new(bytes) {
            let raw = raw?;
            match raw.field {
                1 => url = std::str::from_utf8(slice(bytes, raw)?).map_err(|_| Decline)?,
                2 => payload = slice(bytes, raw)?,
                _ => {}
            }
        }
        let (_, name) = url.rsplit_once('/').ok_or(Decline)?;
        let &index = self.by_name.get(name).ok_or(Decline)?;
        out.extend_from_slice(b"{\"@type\":");
        let _ = write_str(out, url);
        match &self.messages[index as usize] {
            MessagePlan::Fields(fields) => self.fields(fields, payload, depth + 1, scratch, out, Open::AfterType, None),
            MessagePlan::Unsupported => Err(Decline),
            _ => {
                out.extend_from_slice(b",\"value\":");
                self.message(index, payload, depth + 1, scratch, out)?;
                out.push(b'}');
                Ok(())
            }
        }
    }

    /// A plain message: its set fields in field-number order, as the
    /// `DynamicMessage` path prints them. Its fields' values are collected in
    /// `scratch` past what is there; on success `scratch` is left as it was
    /// (on failure the whole print is abandoned, so it need not be).
    #[allow(clippy::too_many_arguments)]
    fn fields(
        &self,
        plan: &[FieldPlan],
        bytes: &[u8],
        depth: u32,
        scratch: &mut Vec<Raw>,
        out: &mut Vec<u8>,
        open: Open,
        mut capture: Option<&mut Capture>,
    ) -> Printed {
        let base = scratch.len();
        let mut sorted = true;
        for raw in Fields::new(bytes) {
            let mut raw = raw?;
            // Unknown fields are skipped, as the other path does.
            let Ok(at) = plan.binary_search_by_key(&raw.field, |f| f.number) else {
                continue;
            };
            raw.field = at as u32;
            if scratch.len() > base && scratch[scratch.len() - 1].field > raw.field {
                sorted = false;
            }
            scratch.push(raw);
        }
        if !sorted {
            scratch[base..].sort_by_key(|raw| raw.field);
        }
        let end = scratch.len();
        let mut oneofs_seen = 0u64;
        let mut first = match open {
            Open::Brace => {
                out.push(b'{');
                true
            }
            Open::AfterType => false,
        };
        let mut i = base;
        // The next field in the plan not yet printed or passed over.
        let mut unvisited = 0;
        while i < end {
            let index = scratch[i].field as usize;
            self.unpopulated(&plan[unvisited..index], &mut first, depth, scratch, out)?;
            unvisited = index + 1;
            let field = &plan[index];
            let mut next = i + 1;
            while next < end && scratch[next].field == scratch[i].field {
                next += 1;
            }
            let before = out.len();
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(&field.key);
            let value_start = out.len();
            let printed = match field.shape {
                Shape::Single => {
                    if next - i > 1 {
                        // Set twice: the last wins, or messages merge.
                        return Err(Decline);
                    }
                    if let Some(oneof) = field.oneof {
                        if oneofs_seen & (1 << oneof) != 0 {
                            return Err(Decline);
                        }
                        oneofs_seen |= 1 << oneof;
                    }
                    let value = decode(field.scalar, scratch[i], bytes)?;
                    if field.presence || self.emit_unpopulated || !is_default(&value) {
                        self.value(field.scalar, &value, depth, scratch, out)?;
                        true
                    } else {
                        false
                    }
                }
                Shape::List => self.list(field.scalar, bytes, i..next, depth, scratch, out)? || self.emit_unpopulated,
                Shape::Map { key, value } => {
                    self.map(key, value, bytes, i..next, depth, scratch, out)?;
                    true
                }
            };
            if printed {
                first = false;
                if let Some(capture) = capture.as_deref_mut().filter(|c| c.field == index) {
                    capture.span = Some(value_start..out.len());
                }
            } else {
                out.truncate(before);
            }
            i = next;
        }
        self.unpopulated(&plan[unvisited..], &mut first, depth, scratch, out)?;
        out.push(b'}');
        scratch.truncate(base);
        Ok(())
    }

    /// With `emit_unpopulated`, the defaults of `absent` fields that have no
    /// presence (`0`, `""`, `[]`, `{}`, an enum's zero value); otherwise nothing.
    fn unpopulated(
        &self,
        absent: &[FieldPlan],
        first: &mut bool,
        depth: u32,
        scratch: &mut Vec<Raw>,
        out: &mut Vec<u8>,
    ) -> Printed {
        if !self.emit_unpopulated {
            return Ok(());
        }
        for field in absent.iter().filter(|f| !f.presence) {
            if !*first {
                out.push(b',');
            }
            *first = false;
            out.extend_from_slice(&field.key);
            match field.shape {
                Shape::Single => self.value(field.scalar, &default_of(field.scalar), depth, scratch, out)?,
                Shape::List => out.extend_from_slice(b"[]"),
                Shape::Map { .. } => out.extend_from_slice(b"{}"),
            }
        }
        Ok(())
    }

    /// A repeated field's values, packed or not; `false` (nothing printed
    /// but the opening bracket) when it holds none.
    fn list(
        &self,
        scalar: Scalar,
        bytes: &[u8],
        occurrences: std::ops::Range<usize>,
        depth: u32,
        scratch: &mut Vec<Raw>,
        out: &mut Vec<u8>,
    ) -> Result<bool, Decline> {
        let packable = !matches!(scalar, Scalar::String | Scalar::Bytes | Scalar::Message(_));
        let mut count = 0;
        out.push(b'[');
        for i in occurrences {
            let raw = scratch[i];
            if packable && raw.wire == WIRE_LEN {
                let packed = slice(bytes, raw)?;
                let mut at = 0;
                while at < packed.len() {
                    let element = read_value(packed, &mut at, scalar_wire(scalar), 0)?;
                    if count > 0 {
                        out.push(b',');
                    }
                    self.value(scalar, &decode(scalar, element, packed)?, depth, scratch, out)?;
                    count += 1;
                }
            } else {
                if count > 0 {
                    out.push(b',');
                }
                self.value(scalar, &decode(scalar, raw, bytes)?, depth, scratch, out)?;
                count += 1;
            }
        }
        out.push(b']');
        Ok(count > 0)
    }

    /// A map's entries, sorted by key; of entries with the same key the
    /// last wins, as when decoding.
    #[allow(clippy::too_many_arguments)]
    fn map(
        &self,
        key_scalar: Scalar,
        value_scalar: Scalar,
        bytes: &[u8],
        occurrences: std::ops::Range<usize>,
        depth: u32,
        scratch: &mut Vec<Raw>,
        out: &mut Vec<u8>,
    ) -> Printed {
        let mut entries: Vec<(MapKey<'_>, Option<Raw>, &[u8])> = Vec::with_capacity(occurrences.len());
        for i in occurrences {
            let entry = slice(bytes, scratch[i])?;
            let (mut key, mut value) = (None, None);
            for raw in Fields::new(entry) {
                let raw = raw?;
                let slot = match raw.field {
                    1 => &mut key,
                    2 => &mut value,
                    _ => continue,
                };
                if slot.replace(raw).is_some() {
                    return Err(Decline);
                }
            }
            let key = match key {
                Some(raw) => decode(key_scalar, raw, entry)?,
                None => default_of(key_scalar),
            };
            if let Some(raw) = value {
                // Checked here so a bad value declines even if a later entry replaces it.
                decode(value_scalar, raw, entry)?;
            }
            entries.push((MapKey::of(key)?, value, entry));
        }
        // Stable: of equal keys the last stays last, and is the one kept.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(b'{');
        let mut first = true;
        for (i, (key, value, entry)) in entries.iter().enumerate() {
            if entries.get(i + 1).is_some_and(|next| next.0 == *key) {
                // Replaced by a later entry, but decoding checks it all the
                // same: a message value must be well formed (found by fuzzing).
                if let (Some(raw), Scalar::Message(_)) = (value, value_scalar) {
                    let value = decode(value_scalar, *raw, entry)?;
                    self.value(value_scalar, &value, depth, scratch, &mut Vec::new())?;
                }
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            key.write(out);
            out.push(b':');
            let value = match value {
                Some(raw) => decode(value_scalar, *raw, entry)?,
                None => default_of(value_scalar),
            };
            self.value(value_scalar, &value, depth, scratch, out)?;
        }
        out.push(b'}');
        Ok(())
    }

    fn value(
        &self,
        scalar: Scalar,
        value: &Decoded<'_>,
        depth: u32,
        scratch: &mut Vec<Raw>,
        out: &mut Vec<u8>,
    ) -> Printed {
        let mut f = CompactFormatter;
        // Writing into a Vec cannot fail.
        let _ = match *value {
            Decoded::I32(v) => f.write_i32(out, v),
            Decoded::U32(v) => f.write_u32(out, v),
            Decoded::I64(v) => {
                out.push(b'"');
                let _ = f.write_i64(out, v);
                f.write_raw_fragment(out, "\"")
            }
            Decoded::U64(v) => {
                out.push(b'"');
                let _ = f.write_u64(out, v);
                f.write_raw_fragment(out, "\"")
            }
            Decoded::F32(v) if v.is_finite() => f.write_f32(out, v),
            Decoded::F64(v) if v.is_finite() => f.write_f64(out, v),
            Decoded::F32(v) => write_non_finite(out, f64::from(v)),
            Decoded::F64(v) => write_non_finite(out, v),
            Decoded::Bool(v) => f.write_bool(out, v),
            Decoded::Str(s) => write_str(out, s),
            Decoded::Bytes(b) => {
                out.push(b'"');
                let start = out.len();
                out.resize(start + base64::encoded_len(b.len(), true).ok_or(Decline)?, 0);
                let written = base64::engine::general_purpose::STANDARD
                    .encode_slice(b, &mut out[start..])
                    .map_err(|_| Decline)?;
                out.truncate(start + written);
                f.write_raw_fragment(out, "\"")
            }
            Decoded::Enum(number) => {
                let Scalar::Enum(index) = scalar else {
                    return Err(Decline);
                };
                let plan = &self.enums[index as usize];
                if plan.null {
                    f.write_null(out)
                } else if self.enums_as_ints {
                    f.write_i32(out, number)
                } else if let Ok(at) = plan.names.binary_search_by_key(&number, |(n, _)| *n) {
                    out.extend_from_slice(&plan.names[at].1);
                    Ok(())
                } else {
                    // A number the enum does not name prints as a number.
                    f.write_i32(out, number)
                }
            }
            Decoded::Message(bytes) => {
                let Scalar::Message(index) = scalar else {
                    return Err(Decline);
                };
                return self.message(index, bytes, depth + 1, scratch, out);
            }
        };
        Ok(())
    }
}

/// How a message's fields begin: with `{`, or after an `Any`'s `{"@type":…`.
#[derive(Clone, Copy)]
enum Open {
    Brace,
    AfterType,
}

/// Where one top-level field's value landed in the output: the field
/// (its index in the plan) a `response_body` names, and its bytes.
struct Capture {
    field: usize,
    span: Option<std::ops::Range<usize>>,
}

/// `snake_case` → `lowerCamelCase`, declining names that would not come
/// back the same way (an upper-case letter, or `_` before a non-letter).
fn snake_to_camel(out: &mut String, name: &str) -> Printed {
    let mut upper_next = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            return Err(Decline);
        }
        if upper_next {
            let upper = c.to_ascii_uppercase();
            if upper == c {
                return Err(Decline);
            }
            out.push(upper);
            upper_next = false;
        } else if c == '_' {
            upper_next = true;
        } else {
            out.push(c);
        }
    }
    Ok(())
}

/// Names of messages and enums → their plan indexes, while compiling.
struct Lookup<'a> {
    messages: &'a HashMap<String, u32>,
    enums: &'a HashMap<String, u32>,
}

fn plan_message(message: &MessageDescriptor, lookup: &Lookup<'_>, use_proto_names: bool) -> MessagePlan {
    match message.full_name() {
        "google.protobuf.Timestamp" => return MessagePlan::Timestamp,
        "google.protobuf.Duration" => return MessagePlan::Duration,
        "google.protobuf.DoubleValue" => return MessagePlan::Wrapper(Scalar::Double),
        "google.protobuf.FloatValue" => return MessagePlan::Wrapper(Scalar::Float),
        "google.protobuf.Int64Value" => return MessagePlan::Wrapper(Scalar::Int64),
        "google.protobuf.UInt64Value" => return MessagePlan::Wrapper(Scalar::Uint64),
        "google.protobuf.Int32Value" => return MessagePlan::Wrapper(Scalar::Int32),
        "google.protobuf.UInt32Value" => return MessagePlan::Wrapper(Scalar::Uint32),
        "google.protobuf.BoolValue" => return MessagePlan::Wrapper(Scalar::Bool),
        "google.protobuf.StringValue" => return MessagePlan::Wrapper(Scalar::String),
        "google.protobuf.BytesValue" => return MessagePlan::Wrapper(Scalar::Bytes),
        "google.protobuf.Empty" => return MessagePlan::Empty,
        "google.protobuf.FieldMask" => return MessagePlan::FieldMask,
        "google.protobuf.Any" => return MessagePlan::Any,
        "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue" => {
            let index = |name: &str| lookup.messages.get(name).copied();
            let indexes = (
                index("google.protobuf.Struct"),
                index("google.protobuf.Value"),
                index("google.protobuf.ListValue"),
            );
            let (Some(structure), Some(value), Some(list)) = indexes else {
                return MessagePlan::Unsupported;
            };
            return match message.name() {
                "Struct" => MessagePlan::Struct { value },
                "Value" => MessagePlan::Value { structure, list },
                _ => MessagePlan::ListValue { value },
            };
        }
        // Sent raw, not as JSON: the caller handles it.
        "google.api.HttpBody" => return MessagePlan::Unsupported,
        _ => {}
    }
    if message.extensions().next().is_some() {
        return MessagePlan::Unsupported;
    }
    let oneofs: Vec<String> = message.oneofs().map(|o| o.full_name().to_string()).collect();
    if oneofs.len() > 64 {
        return MessagePlan::Unsupported;
    }
    let mut fields = Vec::new();
    for field in message.fields() {
        let Some(plan) = plan_field(&field, lookup, use_proto_names, &oneofs) else {
            return MessagePlan::Unsupported;
        };
        fields.push(plan);
    }
    fields.sort_by_key(|f| f.number);
    MessagePlan::Fields(fields)
}

fn plan_field(
    field: &FieldDescriptor,
    lookup: &Lookup<'_>,
    use_proto_names: bool,
    oneofs: &[String],
) -> Option<FieldPlan> {
    if field.is_group() {
        return None;
    }
    let name = if use_proto_names {
        field.name()
    } else {
        field.json_name()
    };
    let mut key = quoted(name).into_vec();
    key.push(b':');
    let shape = match field.kind() {
        Kind::Message(entry) if field.is_map() => Shape::Map {
            key: scalar_of(&entry.map_entry_key_field().kind(), lookup)?,
            value: scalar_of(&entry.map_entry_value_field().kind(), lookup)?,
        },
        _ if field.is_list() => Shape::List,
        _ => Shape::Single,
    };
    let oneof = match field.containing_oneof() {
        Some(o) => Some(oneofs.iter().position(|name| name == o.full_name())? as u8),
        None => None,
    };
    Some(FieldPlan {
        number: field.number(),
        key: key.into_boxed_slice(),
        scalar: scalar_of(&field.kind(), lookup)?,
        shape,
        presence: field.supports_presence(),
        oneof,
    })
}

fn scalar_of(kind: &Kind, lookup: &Lookup<'_>) -> Option<Scalar> {
    Some(match kind {
        Kind::Double => Scalar::Double,
        Kind::Float => Scalar::Float,
        Kind::Int32 => Scalar::Int32,
        Kind::Int64 => Scalar::Int64,
        Kind::Uint32 => Scalar::Uint32,
        Kind::Uint64 => Scalar::Uint64,
        Kind::Sint32 => Scalar::Sint32,
        Kind::Sint64 => Scalar::Sint64,
        Kind::Fixed32 => Scalar::Fixed32,
        Kind::Fixed64 => Scalar::Fixed64,
        Kind::Sfixed32 => Scalar::Sfixed32,
        Kind::Sfixed64 => Scalar::Sfixed64,
        Kind::Bool => Scalar::Bool,
        Kind::String => Scalar::String,
        Kind::Bytes => Scalar::Bytes,
        Kind::Enum(e) => Scalar::Enum(*lookup.enums.get(e.full_name())?),
        Kind::Message(m) => Scalar::Message(*lookup.messages.get(m.full_name())?),
    })
}

fn quoted(text: &str) -> Box<[u8]> {
    let mut out = Vec::with_capacity(text.len() + 2);
    let _ = write_str(&mut out, text);
    out.into_boxed_slice()
}

fn write_str(out: &mut Vec<u8>, text: &str) -> std::io::Result<()> {
    // serde_json's own escaping, so both paths agree byte for byte.
    (&mut serde_json::Serializer::new(out))
        .serialize_str(text)
        .map_err(std::io::Error::other)
}

fn write_non_finite(out: &mut Vec<u8>, value: f64) -> std::io::Result<()> {
    let text: &[u8] = if value.is_nan() {
        b"\"NaN\""
    } else if value > 0.0 {
        b"\"Infinity\""
    } else {
        b"\"-Infinity\""
    };
    out.extend_from_slice(text);
    Ok(())
}

fn write_display(out: &mut Vec<u8>, value: &dyn std::fmt::Display) {
    out.push(b'"');
    let _ = write!(out, "{value}");
    out.push(b'"');
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

fn scalar_wire(scalar: Scalar) -> u8 {
    match scalar {
        Scalar::Double | Scalar::Fixed64 | Scalar::Sfixed64 => WIRE_FIXED64,
        Scalar::Float | Scalar::Fixed32 | Scalar::Sfixed32 => WIRE_FIXED32,
        Scalar::String | Scalar::Bytes | Scalar::Message(_) => WIRE_LEN,
        _ => WIRE_VARINT,
    }
}

/// The fields of one message, as they come.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }
}

impl Iterator for Fields<'_> {
    type Item = Result<Raw, Decline>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.bytes.len() {
            return None;
        }
        Some(read_field(self.bytes, &mut self.at).inspect_err(|_| self.at = self.bytes.len()))
    }
}

fn read_field(bytes: &[u8], at: &mut usize) -> Result<Raw, Decline> {
    let key = read_varint(bytes, at)?;
    if key > u64::from(u32::MAX) {
        return Err(Decline);
    }
    let field = (key >> 3) as u32;
    let wire = (key & 7) as u8;
    if field == 0 {
        return Err(Decline);
    }
    read_value(bytes, at, wire, field)
}

/// One value of wire type `wire` at `at`; groups (and wire types 6 and 7) decline.
fn read_value(bytes: &[u8], at: &mut usize, wire: u8, field: u32) -> Result<Raw, Decline> {
    let (value, len) = match wire {
        WIRE_VARINT => (read_varint(bytes, at)?, 0),
        WIRE_FIXED64 => (
            u64::from_le_bytes(take(bytes, at, 8)?.try_into().map_err(|_| Decline)?),
            0,
        ),
        WIRE_FIXED32 => (
            u64::from(u32::from_le_bytes(take(bytes, at, 4)?.try_into().map_err(|_| Decline)?)),
            0,
        ),
        WIRE_LEN => {
            let len = read_varint(bytes, at)?;
            let len = u32::try_from(len).map_err(|_| Decline)?;
            let start = *at as u64;
            take(bytes, at, len as usize)?;
            (start, len)
        }
        _ => return Err(Decline),
    };
    Ok(Raw {
        field,
        wire,
        value,
        len,
    })
}

fn take<'a>(bytes: &'a [u8], at: &mut usize, len: usize) -> Result<&'a [u8], Decline> {
    let end = at.checked_add(len).ok_or(Decline)?;
    let taken = bytes.get(*at..end).ok_or(Decline)?;
    *at = end;
    Ok(taken)
}

/// A base-128 varint of at most 10 bytes whose last byte fits, as `prost` reads them.
fn read_varint(bytes: &[u8], at: &mut usize) -> Result<u64, Decline> {
    let mut value = 0u64;
    for i in 0..10 {
        let byte = *bytes.get(*at).ok_or(Decline)?;
        *at += 1;
        if i == 9 && byte > 1 {
            return Err(Decline);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(Decline)
}

fn slice(bytes: &[u8], raw: Raw) -> Result<&[u8], Decline> {
    if raw.wire != WIRE_LEN {
        return Err(Decline);
    }
    let start = usize::try_from(raw.value).map_err(|_| Decline)?;
    bytes.get(start..start + raw.len as usize).ok_or(Decline)
}

/// A value of type `scalar` from `raw`; a wire type that does not fit the
/// type, or a string that is not UTF-8, declines (the other path rejects it).
fn decode<'a>(scalar: Scalar, raw: Raw, bytes: &'a [u8]) -> Result<Decoded<'a>, Decline> {
    if raw.wire != scalar_wire(scalar) {
        return Err(Decline);
    }
    let v = raw.value;
    Ok(match scalar {
        Scalar::Int32 => Decoded::I32(v as i32),
        Scalar::Int64 => Decoded::I64(v as i64),
        Scalar::Uint32 => Decoded::U32(v as u32),
        Scalar::Uint64 => Decoded::U64(v),
        Scalar::Sint32 => {
            let n = v as u32;
            Decoded::I32((n >> 1) as i32 ^ -((n & 1) as i32))
        }
        Scalar::Sint64 => Decoded::I64((v >> 1) as i64 ^ -((v & 1) as i64)),
        Scalar::Bool => Decoded::Bool(v != 0),
        Scalar::Enum(_) => Decoded::Enum(v as i32),
        Scalar::Fixed32 => Decoded::U32(v as u32),
        Scalar::Sfixed32 => Decoded::I32(v as u32 as i32),
        Scalar::Float => Decoded::F32(f32::from_bits(v as u32)),
        Scalar::Fixed64 => Decoded::U64(v),
        Scalar::Sfixed64 => Decoded::I64(v as i64),
        Scalar::Double => Decoded::F64(f64::from_bits(v)),
        Scalar::String => Decoded::Str(std::str::from_utf8(slice(bytes, raw)?).map_err(|_| Decline)?),
        Scalar::Bytes => Decoded::Bytes(slice(bytes, raw)?),
        Scalar::Message(_) => Decoded::Message(slice(bytes, raw)?),
    })
}

fn default_of(scalar: Scalar) -> Decoded<'static> {
    match scalar {
        Scalar::Int32 | Scalar::Sint32 | Scalar::Sfixed32 => Decoded::I32(0),
        Scalar::Int64 | Scalar::Sint64 | Scalar::Sfixed64 => Decoded::I64(0),
        Scalar::Uint32 | Scalar::Fixed32 => Decoded::U32(0),
        Scalar::Uint64 | Scalar::Fixed64 => Decoded::U64(0),
        Scalar::Float => Decoded::F32(0.0),
        Scalar::Double => Decoded::F64(0.0),
        Scalar::Bool => Decoded::Bool(false),
        Scalar::String => Decoded::Str(""),
        Scalar::Bytes => Decoded::Bytes(&[]),
        Scalar::Enum(_) => Decoded::Enum(0),
        Scalar::Message(_) => Decoded::Message(&[]),
    }
}

/// Whether a field without presence holds its default, and is left out.
/// (`-0.0 == 0.0` is left out too, and NaN printed, as the other path does.)
fn is_default(value: &Decoded<'_>) -> bool {
    match *value {
        Decoded::I32(v) | Decoded::Enum(v) => v == 0,
        Decoded::I64(v) => v == 0,
        Decoded::U32(v) => v == 0,
        Decoded::U64(v) => v == 0,
        Decoded::F32(v) => v == 0.0,
        Decoded::F64(v) => v == 0.0,
        Decoded::Bool(v) => !v,
        Decoded::Str(s) => s.is_empty(),
        Decoded::Bytes(b) => b.is_empty(),
        Decoded::Message(_) => false,
    }
}

/// `google.protobuf.Timestamp`/`Duration` fields; of repeats the last wins.
fn seconds_and_nanos(bytes: &[u8]) -> Result<(i64, i32), Decline> {
    let (mut seconds, mut nanos) = (0, 0);
    for raw in Fields::new(bytes) {
        let raw = raw?;
        match raw.field {
            1 if raw.wire == WIRE_VARINT => seconds = raw.value as i64,
            2 if raw.wire == WIRE_VARINT => nanos = raw.value as i32,
            1 | 2 => return Err(Decline),
            _ => {}
        }
    }
    Ok((seconds, nanos))
}

/// A map key, ordered by value; printed as a JSON string.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum MapKey<'a> {
    Bool(bool),
    Signed(i64),
    Unsigned(u64),
    Str(&'a str),
}

impl<'a> MapKey<'a> {
    fn of(key: Decoded<'a>) -> Result<Self, Decline> {
        Ok(match key {
            Decoded::Bool(v) => MapKey::Bool(v),
            Decoded::I32(v) => MapKey::Signed(i64::from(v)),
            Decoded::I64(v) => MapKey::Signed(v),
            Decoded::U32(v) => MapKey::Unsigned(u64::from(v)),
            Decoded::U64(v) => MapKey::Unsigned(v),
            Decoded::Str(v) => MapKey::Str(v),
            _ => return Err(Decline),
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            MapKey::Bool(v) => write_display(out, v),
            MapKey::Signed(v) => write_display(out, v),
            MapKey::Unsigned(v) => write_display(out, v),
            MapKey::Str(v) => {
                let _ = write_str(out, v);
            }
        }
    }
}

#[cfg(test)]
#[path = "wire_json_tests.rs"]
mod tests;
